"""In-process inference with onnxruntime: encoder and head fused into one graph (contract/sessions.py), run by
a pool of sessions per model version (two batches at once on a CPU: contract.sessions.SessionPool), each
on a dedicated thread.

Versions (the repository's NAME/<v>/): the latest version of every model is loaded at start;
`refresh` (called every few seconds by the gateway) loads a new latest version, warms it up, and only
then switches requests to it, so a re-export never leaves a gap; a removed version is unloaded and
the latest remaining one served (rollback). A version pinned by a request (`?version=`) is loaded on
first use; versions other than the latest are unloaded after a minute without requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from contract.metadata import ModelMetadata
from contract.names import IMAGES
from contract.repository import model_names
from contract.sessions import SessionPool, choose_providers, fused_model
from serve.backends.base import Backend
from serve.backends.repository import ModelVersion, RepositoryError, check_root, resolve, versions
from serve.errors import GatewayError, not_found

log = logging.getLogger("serve")
IDLE_UNLOAD_S = 60.0
"""A version that is no longer the latest is unloaded once no request has used it for this long."""


class _Model:
    def __init__(self, spec: ModelMetadata, pool: SessionPool, requested: list[str]) -> None:
        self.spec = spec
        self.pool = pool  # encoder + head, one graph (contract.sessions.fused_model), pool.instances sessions
        self.requested = requested
        self.executor = ThreadPoolExecutor(max_workers=pool.instances,
                                           thread_name_prefix=f"ort-{spec.name}-v{spec.version}")

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.pool.outputs, self.pool.run({IMAGES: images}), strict=True))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class EmbeddedBackend(Backend):
    """Every model of an exported repository, run with onnxruntime in this process."""

    name = "embedded"

    def __init__(self, repository: str | Path, threads: int = 0, instances: int = 0) -> None:
        self.repository = Path(repository)
        self.threads = threads  # intra-op threads of all instances together (0: the CPUs this process may use)
        self.instances = instances  # sessions per version (0: contract.sessions.default_instances)
        self._loaded: dict[tuple[str, int], _Model] = {}
        self._latest: dict[str, int] = {}  # model -> the version unpinned requests get
        self._used: dict[tuple[str, int], float] = {}  # monotonic time of the last request per loaded version
        self._loading: dict[tuple[str, int], asyncio.Future] = {}
        self._lock = asyncio.Lock()
        self.problems: list[str] = []  # versions that failed to load at the last refresh

    async def start(self) -> None:
        if self._latest:
            return
        check_root(self.repository)
        await self.refresh()
        if not self._latest:
            raise RepositoryError(f"no model of {self.repository} could be loaded: {'; '.join(self.problems)}")

    def _load(self, version: ModelVersion) -> _Model:
        """Sessions for one version, each warmed up with one zero image (runs on a worker thread)."""
        import onnxruntime as ort

        providers = choose_providers(ort.get_available_providers())
        pool = SessionPool(fused_model(version.encoder_onnx, version.head_onnx), self.instances, self.threads,
                           providers)
        model = _Model(version.metadata, pool, providers)
        spec = version.metadata.input
        pool.warm_up({IMAGES: np.zeros((1, spec.channels, spec.size, spec.size), np.uint8)})
        used = pool.sessions[0].get_providers()
        if used[0] != providers[0]:  # onnxruntime falls back to the CPU without an error (CUDA libraries missing)
            log.warning("model %s version %d: asked onnxruntime for %s, it runs on %s", version.name, version.version,
                        providers, used)
        log.info("model %s version %d (%s): onnxruntime %s", version.name, version.version,
                 version.metadata.precision, pool.settings())
        return model

    async def _ensure(self, name: str, version: int) -> _Model:
        """The loaded version, loading it first (once, however many requests wait for it)."""
        key = (name, version)
        if key not in self._loaded:
            loading = self._loading.get(key)
            if loading is None:
                try:
                    files = resolve(self.repository, name, version)
                except RepositoryError as err:
                    raise not_found(str(err)) from err
                loading = self._loading[key] = asyncio.ensure_future(asyncio.to_thread(self._load, files))
            try:
                model = await asyncio.shield(loading)
            finally:
                self._loading.pop(key, None)
            self._loaded.setdefault(key, model)
        self._used[key] = time.monotonic()
        return self._loaded[key]

    async def refresh(self) -> bool:
        """Load new latest versions before serving them; unload removed versions and models."""
        async with self._lock:
            on_disk = {name: versions(self.repository, name) for name in model_names(self.repository)}
            changed, self.problems = False, []
            for name, available in on_disk.items():
                if self._latest.get(name) != available[-1]:
                    try:
                        await self._ensure(name, available[-1])
                    except (GatewayError, ValueError, OSError) as err:  # half-deleted, or not loadable
                        log.warning("model %s version %d not loaded: %s", name, available[-1], err)
                        self.problems.append(f"{name} version {available[-1]}: {err}")
                        continue
                    log.info("model %s: serving version %d (was %s)", name, available[-1], self._latest.get(name))
                    self._latest[name] = available[-1]
                    changed = True
            for name in [n for n in self._latest if n not in on_disk]:
                log.info("model %s: removed from the repository", name)
                del self._latest[name]
                changed = True
            idle = time.monotonic() - IDLE_UNLOAD_S
            for key in [k for k in self._loaded if k[1] not in on_disk.get(k[0], [])
                        or (self._latest.get(k[0]) != k[1] and self._used.get(k, 0) < idle)]:
                self._loaded.pop(key).close()
                self._used.pop(key, None)
            return changed

    def models(self) -> dict[str, ModelMetadata]:
        return {name: self._loaded[(name, v)].spec for name, v in self._latest.items()}

    def versions(self, model: str) -> list[int]:
        return versions(self.repository, model) if model in self._latest else []

    async def select(self, model: str, version: int | None) -> ModelMetadata:
        if model not in self._latest:
            raise not_found(f"unknown model {model!r}; served models: {sorted(self._latest)}")
        return (await self._ensure(model, self._latest[model] if version is None else version)).spec

    async def infer(self, model: str, images: np.ndarray, version: int | None = None) -> dict[str, np.ndarray]:
        m = await self._ensure(model, self._latest[model] if version is None else version)
        try:
            return await asyncio.get_running_loop().run_in_executor(m.executor, m.run, images)
        except Exception as err:  # onnxruntime raises its own exception types
            raise GatewayError(500, f"inference of model {model!r} failed: {err}", "inference_error") from err

    def describe(self, model: str) -> dict[str, Any]:
        m = self._loaded[(model, self._latest[model])]
        return {
            "backend": self.name,
            "version": self._latest[model],
            "loaded_versions": sorted(v for n, v in self._loaded if n == model),
            "requested_providers": m.requested,
            # what onnxruntime really runs with (CPU only if CUDA failed to initialise), threads, ...
            "providers": m.pool.sessions[0].get_providers(),
            "session": m.pool.settings(),
        }

    async def close(self) -> None:
        for m in self._loaded.values():
            m.close()
        self._loaded, self._latest = {}, {}
