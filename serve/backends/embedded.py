"""In-process inference with onnxruntime: encoder and head fused into one graph, on one dedicated thread per model."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from contract.metadata import ModelMetadata
from contract.names import IMAGES
from contract.sessions import choose_providers, fused_model, open_session, settings_of
from serve.backends.base import Backend
from serve.backends.repository import onnx_file, read_repository
from serve.errors import GatewayError

log = logging.getLogger("serve")


class _Model:
    def __init__(self, spec: ModelMetadata, session: Any, requested: list[str]) -> None:
        self.spec = spec
        self.session = session  # encoder + head, one graph (contract.sessions.fused_model)
        self.requested = requested
        self.outputs = [o.name for o in session.get_outputs()]
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{spec.name}")

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, {IMAGES: images}), strict=True))


class EmbeddedBackend(Backend):
    """Every model of an exported repository, run with onnxruntime in this process."""

    name = "embedded"

    def __init__(self, repository: str | Path, threads: int = 0) -> None:
        self.repository = Path(repository)
        self.threads = threads
        self._models: dict[str, _Model] = {}

    async def start(self) -> None:
        if self._models:
            return
        self._models = await asyncio.to_thread(self._load)

    def _load(self) -> dict[str, _Model]:
        import onnxruntime as ort

        providers = choose_providers(ort.get_available_providers())
        models = {}
        for name, spec in read_repository(self.repository).items():
            graph = fused_model(onnx_file(self.repository, spec.encoder), onnx_file(self.repository, spec.head))
            session = open_session(graph, self.threads, providers)
            models[name] = _Model(spec, session, providers)
            log.info("model %s: onnxruntime %s", name, settings_of(session))
        return models

    def models(self) -> dict[str, ModelMetadata]:
        return {name: m.spec for name, m in self._models.items()}

    async def infer(self, model: str, images: np.ndarray) -> dict[str, np.ndarray]:
        m = self._models[model]
        try:
            return await asyncio.get_running_loop().run_in_executor(m.executor, m.run, images)
        except Exception as err:  # onnxruntime raises its own exception types
            raise GatewayError(500, f"inference of model {model!r} failed: {err}", "inference_error") from err

    def describe(self, model: str) -> dict[str, Any]:
        m = self._models[model]
        return {
            "backend": self.name,
            "requested_providers": m.requested,
            # what onnxruntime really runs with (CPU only if CUDA failed to initialise), threads, ...
            "providers": m.session.get_providers(),
            "session": settings_of(m.session),
        }

    async def close(self) -> None:
        for m in self._models.values():
            m.executor.shutdown(wait=False, cancel_futures=True)
        self._models = {}
