"""Inference backends behind one interface (`Backend`): embedded onnxruntime, or a Triton server."""

from __future__ import annotations

from contract.metadata import ModelMetadata
from serve.backends.base import Backend
from serve.settings import Settings


def make_backend(settings: Settings) -> Backend:
    """The backend named by settings.backend (heavy client libraries are imported only here)."""
    if settings.backend == "embedded":
        from serve.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(settings.model_repository, settings.ort_threads, settings.ort_instances)
    if settings.backend == "triton":
        from serve.backends.triton import TritonBackend

        return TritonBackend(settings.triton_url, settings.model_repository, settings.triton_timeout_s)
    raise ValueError(f"unknown backend {settings.backend!r}; choose from ['embedded', 'triton']")


__all__ = ["Backend", "ModelMetadata", "make_backend"]
