"""The one small interface every inference backend implements; models are described by contract.metadata."""

from __future__ import annotations

import abc
from collections.abc import Collection
from typing import Any

import numpy as np

from contract.metadata import ModelMetadata
from contract.names import precision_model, split_precision
from serve.errors import bad_request, not_found


class Backend(abc.ABC):
    """Runs exported models on batches of prepared images.

    `infer` takes uint8 (B, C, S, S) and returns the head outputs as numpy arrays with batch size B;
    it raises GatewayError for failures the client should see with a specific status (503 when the
    inference server is unreachable). Models may have versions (the repository's NAME/<v>/): `select`
    resolves a request's (model, version or None for the latest) to the metadata of one version, and
    `refresh`, called periodically, picks up added and removed versions without a restart.
    """

    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Load or connect, and discover the models; may be called again after a failure."""

    @abc.abstractmethod
    def models(self) -> dict[str, ModelMetadata]:
        """Servable models by name (empty before a successful `start`)."""

    @abc.abstractmethod
    async def infer(self, model: str, images: np.ndarray, version: int | None = None) -> dict[str, np.ndarray]:
        """uint8 (B, C, S, S) -> {output name: array with leading dimension B}, of `version` (None: the latest)."""

    def versions(self, model: str) -> list[int]:
        """Servable versions of `model`, ascending ([] for a backend without versions)."""
        return []

    def unavailable(self) -> dict[str, dict[str, str]]:
        """Versions on disk that are not served, with why: {model: {version directory: reason}}; a model whose
        every version is here is not among `models()`."""
        return {}

    async def select(self, model: str, version: int | None) -> ModelMetadata:
        """The metadata of the version a request asks for (None: the latest); GatewayError 404 if absent."""
        models = self.models()
        if model not in models:
            raise not_found(f"unknown model {model!r}; served models: {sorted(models)}")
        if version is not None and version not in self.versions(model):
            raise not_found(f"model {model!r} has no version {version} (versions: {self.versions(model)})")
        return models[model]

    async def refresh(self) -> bool:
        """Look for added or removed model versions; True when what is served changed."""
        return False

    async def healthy(self) -> bool:
        """Whether inference can be expected to work right now (cheap; used by /readyz)."""
        return True

    def describe(self, model: str) -> dict[str, Any]:
        """Backend details for /models (execution providers, server URL, ...)."""
        return {"backend": self.name}

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release sessions, connections and threads."""


def choose_model(served: Collection[str], model: str | None, precision: str | None, option: str = "?model=") -> str:
    """The served model a request means by `model` and `precision` (contract.names.PRECISIONS; None: `model` as
    named): the model exported under the same name at that precision (cc_digits or cc_digits_int8, with int8:
    cc_digits_int8, as export names them), or with no model named, the only served model (of that precision).
    GatewayError 404 when that precision of the model is not served, 400 when a model must be named (with
    `option`, the way the caller names one)."""
    if model is not None and precision is not None:
        base = split_precision(model)[0]
        wanted = precision_model(base, precision)
        if wanted not in served:
            have = sorted(f"{n} ({split_precision(n)[1]})" for n in served if split_precision(n)[0] == base)
            raise not_found(f"model {base!r} is not served at {precision} (served: {', '.join(have) or 'none'}); "
                            f"export it with `python -m export --precision {precision}`")
        return wanted
    if model is not None:
        return model
    candidates = sorted(n for n in served if precision is None or split_precision(n)[1] == precision)
    if len(candidates) != 1:
        what = "models are served" if precision is None else f"served models are {precision} ({candidates})"
        raise (not_found if not candidates else bad_request)(
            f"{len(candidates)} {what}; choose one with {option} from {sorted(served)}")
    return candidates[0]
