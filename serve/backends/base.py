"""The one small interface every inference backend implements; models are described by contract.metadata."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from contract.metadata import ModelMetadata


class Backend(abc.ABC):
    """Runs exported models on batches of prepared images.

    `infer` takes uint8 (B, C, S, S) and returns the head outputs as numpy arrays with batch size B;
    it raises GatewayError for failures the client should see with a specific status (503 when the
    inference server is unreachable).
    """

    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Load or connect, and discover the models; may be called again after a failure."""

    @abc.abstractmethod
    def models(self) -> dict[str, ModelMetadata]:
        """Servable models by name (empty before a successful `start`)."""

    @abc.abstractmethod
    async def infer(self, model: str, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (B, C, S, S) -> {output name: array with leading dimension B}."""

    async def healthy(self) -> bool:
        """Whether inference can be expected to work right now (cheap; used by /readyz)."""
        return True

    def describe(self, model: str) -> dict[str, Any]:
        """Backend details for /models (execution providers, server URL, ...)."""
        return {"backend": self.name}

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release sessions, connections and threads."""
