"""In-process inference with onnxruntime: encoder and head fused into one graph (contract/sessions.py), run by
a pool of sessions per model version (two batches at once on a CPU: contract.sessions.SessionPool), each
on a dedicated thread.

Versions (the repository's NAME/<v>/): the newest version of every model that loads is served from the
start; `refresh` (called every few seconds by the gateway) loads a new latest version, warms it up, and
only then switches requests to it, so a re-export never leaves a gap; a removed version is unloaded and
the latest remaining one served (rollback). A version pinned by a request (`?version=`) is loaded on
first use; versions other than the latest are unloaded after a minute without requests.
Loading is total: a version that cannot be read or loaded (any exception: a truncated graph, a missing
model.onnx, a corrupt metadata.json, a directory name that is no number) is unavailable, with the
reason (`unavailable()`, /models, /readyz; 503 when pinned), logged once, and tried again only when its
files change; it never stops another version or model from being served.
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
from contract.names import IMAGES, METADATA_FILE
from contract.sessions import SessionPool, choose_providers, fused_model
from serve.backends.base import Backend
from serve.backends.repository import (
    ModelVersion,
    RepositoryError,
    RepositoryScan,
    check_root,
    describe_failure,
    resolve,
    scan,
)
from serve.errors import GatewayError, not_found, version_unavailable

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
        self._scan = RepositoryScan()  # the repository at the last refresh
        self._failed: dict[tuple[str, int], tuple[tuple, str]] = {}  # version -> (its files' stamp, why it failed)
        self._reported: set[tuple[str, str, str]] = set()  # the scan's problems already logged

    async def start(self) -> None:
        if self._latest:
            return
        check_root(self.repository)
        await self.refresh()
        if not self._latest:
            reasons = "; ".join(f"{m} version {v}: {why}" for m, bad in self.unavailable().items()
                                for v, why in bad.items())
            raise RepositoryError(f"no version of any model in {self.repository} loads: {reasons}")

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

    def _files(self, name: str, version: int) -> ModelVersion:
        """The files of a version to load: from the last scan, else read now (a version newer than the scan);
        not_found when there is no such version, version_unavailable when it cannot be read."""
        found = self._scan.versions.get(name, {}).get(version)
        if found is not None:
            return found
        reason = self._scan.unavailable.get(name, {}).get(str(version))
        if reason is not None:
            raise version_unavailable(f"model {name!r} version {version} is unavailable: {reason}")
        try:
            return resolve(self.repository, name, version)
        except RepositoryError as err:
            raise not_found(str(err)) from err
        except ValueError as err:
            raise version_unavailable(f"model {name!r} version {version} is unavailable: {err}") from err

    async def _ensure(self, name: str, version: int) -> _Model:
        """The loaded version, loading it first (once, however many requests wait for it); a version that does
        not load is version_unavailable, with why, until its files change."""
        key = (name, version)
        if key not in self._loaded:
            files = self._files(name, version)
            failed = self._failure(files)
            if failed is not None:
                raise version_unavailable(f"model {name!r} version {version} is unavailable: {failed}")
            loading = self._loading.get(key)
            if loading is None:
                loading = self._loading[key] = asyncio.ensure_future(asyncio.to_thread(self._load, files))
            try:
                model = await asyncio.shield(loading)
            except Exception as err:  # any failure to load (protobuf's DecodeError, onnxruntime's own types, ...)
                reason = describe_failure(err)
                if key not in self._failed:
                    log.warning("model %s version %d does not load: %s", name, version, reason)
                self._failed[key] = (_stamp(files), reason)
                raise version_unavailable(f"model {name!r} version {version} is unavailable: {reason}") from err
            finally:
                self._loading.pop(key, None)
            self._loaded.setdefault(key, model)
        self._used[key] = time.monotonic()
        return self._loaded[key]

    def _failure(self, files: ModelVersion) -> str | None:
        """Why this version did not load last time, while its files are unchanged (None: try it)."""
        key = (files.name, files.version)
        stamp, reason = self._failed.get(key, ((), None))
        if reason is not None and stamp != _stamp(files):
            del self._failed[key]
            return None
        return reason

    async def refresh(self) -> bool:
        """Look at the repository again: serve each model's newest version that loads (loading and warming it up
        before the switch); unload removed versions and models. One version that fails, however it fails,
        is reported (logged once) and never stops another version or model."""
        async with self._lock:
            self._scan = await asyncio.to_thread(scan, self.repository)
            self._report(self._scan)
            changed = False
            for name, readable in self._scan.versions.items():
                serving = self._latest.get(name)
                chosen = await self._newest_that_loads(name, readable, serving)
                if chosen == serving:
                    continue
                changed = True
                if chosen is None:
                    log.warning("model %s: no version loads (%s)", name, self.unavailable().get(name))
                    del self._latest[name]
                else:
                    log.info("model %s: serving version %d (was %s)", name, chosen, serving)
                    self._latest[name] = chosen
            for name in [n for n in self._latest if n not in self._scan.versions]:
                log.info("model %s: removed from the repository", name)
                del self._latest[name]
                changed = True
            self._unload_unused()
            return changed

    async def _newest_that_loads(self, name: str, readable: dict[int, ModelVersion], serving: int | None) -> int | None:
        for version in sorted(readable, reverse=True):
            if version == serving:
                return version  # the newer ones do not load
            if self._failure(readable[version]) is not None:
                continue
            try:
                await self._ensure(name, version)
            except GatewayError:  # recorded and logged by _ensure
                continue
            return version
        return None

    def _report(self, found: RepositoryScan) -> None:
        """Log each problem of the scan once (again only if it goes away and comes back)."""
        problems = {(m, v, why) for m, bad in found.unavailable.items() for v, why in bad.items()}
        for model, version, why in sorted(problems - self._reported):
            log.warning("model %s version %s is unavailable: %s", model, version, why)
        self._reported = problems

    def _unload_unused(self) -> None:
        """Close versions no longer readable on disk, and versions other than the latest idle for IDLE_UNLOAD_S."""
        idle = time.monotonic() - IDLE_UNLOAD_S
        for key in [k for k in self._loaded if k[1] not in self._scan.versions.get(k[0], {})
                    or (self._latest.get(k[0]) != k[1] and self._used.get(k, 0) < idle)]:
            self._loaded.pop(key).close()
            self._used.pop(key, None)
        for key in [k for k in self._failed if k[1] not in self._scan.versions.get(k[0], {})]:
            del self._failed[key]

    def models(self) -> dict[str, ModelMetadata]:
        return {name: self._loaded[(name, v)].spec for name, v in self._latest.items()}

    def versions(self, model: str) -> list[int]:
        if model not in self._latest:
            return []
        return [v for v in sorted(self._scan.versions.get(model, {})) if (model, v) not in self._failed]

    def unavailable(self) -> dict[str, dict[str, str]]:
        out = {name: dict(bad) for name, bad in self._scan.unavailable.items() if bad}
        for (name, version), (_, reason) in self._failed.items():
            out.setdefault(name, {})[str(version)] = reason
        return {name: dict(sorted(bad.items(), key=lambda kv: _order(kv[0]))) for name, bad in sorted(out.items())}

    async def select(self, model: str, version: int | None) -> ModelMetadata:
        if model not in self._latest:
            bad = self.unavailable().get(model)
            if bad:
                reasons = "; ".join(f"version {v}: {why}" for v, why in bad.items())
                raise version_unavailable(f"model {model!r} has no version that loads ({reasons})")
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


def _stamp(files: ModelVersion) -> tuple:
    """When and how big the files a version loads from are: a failed version is tried again once they change."""
    stamp = []
    for path in (files.directory / METADATA_FILE, files.encoder_onnx, files.head_onnx):
        try:
            status = path.stat()
            stamp.append((status.st_mtime_ns, status.st_size))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


def _order(directory: str) -> tuple[int, str]:
    """Version directories in number order, names that are no number after them."""
    return (int(directory), "") if directory.isascii() and directory.isdigit() else (1 << 62, directory)
