"""In-process inference with onnxruntime: the encoder, then the head, on one dedicated thread per model."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from contract.metadata import ModelMetadata
from contract.names import FEATURES, IMAGES
from serve.backends.base import Backend
from serve.backends.repository import onnx_file, read_repository
from serve.errors import GatewayError

log = logging.getLogger("serve")


def choose_providers(available: list[str]) -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always as the fallback."""
    wanted = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
    return [*wanted, "CPUExecutionProvider"]


class _Model:
    def __init__(self, spec: ModelMetadata, encoder: Any, head: Any, requested: list[str]) -> None:
        self.spec = spec
        self.encoder = encoder
        self.head = head
        self.requested = requested
        self.head_outputs = [o.name for o in head.get_outputs()]
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{spec.name}")

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        (features,) = self.encoder.run([FEATURES], {IMAGES: images})
        return dict(zip(self.head_outputs, self.head.run(self.head_outputs, {FEATURES: features}), strict=True))


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

        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        providers = choose_providers(ort.get_available_providers())
        models = {}
        for name, spec in read_repository(self.repository).items():
            sessions = []
            for part in (spec.encoder, spec.head):
                path = onnx_file(self.repository, part)
                sessions.append(ort.InferenceSession(str(path), options, providers=providers))
            models[name] = _Model(spec, *sessions, providers)
            log.info("model %s: providers %s", name, sessions[0].get_providers())
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
            # what onnxruntime really runs with (CPU only if CUDA failed to initialise)
            "providers": {"encoder": m.encoder.get_providers(), "head": m.head.get_providers()},
        }

    async def close(self) -> None:
        for m in self._models.values():
            m.executor.shutdown(wait=False, cancel_futures=True)
        self._models = {}
