"""Inference on a Triton server through tritonclient's asyncio gRPC client (one client for the app's life).

With the model repository at hand (the directory Triton serves, or a copy), models are versioned:
a version is servable when its NAME/<v>/ is complete on disk and Triton reports NAME_encoder and
NAME_head version v READY; requests run NAME_encoder then NAME_head of that exact version, so
versions never mix while Triton loads a new one. Start Triton with `--model-control-mode=poll`
(`--repository-poll-secs`) and a new export is loaded by Triton and then served here (`refresh`,
every few seconds), without a restart; deleting a version rolls back. Without the repository, models
are discovered from Triton itself and called through their ensemble (unversioned).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np

from contract.metadata import ImageInput, ModelMetadata, TensorSpec
from contract.names import CLUSTER, FEATURES, IMAGES, PROBABILITIES, REQUIRED_OUTPUTS, split_precision
from contract.repository import model_names, version_number
from serve.backends.base import Backend
from serve.backends.repository import RepositoryScan, resolve, scan
from serve.errors import GatewayError, backend_error, backend_unavailable, not_found

log = logging.getLogger("serve")

# Reconnect quickly once Triton is back (gRPC's default backoff grows to two minutes).
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 2**31 - 1),
]
_UNAVAILABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED")


class TritonBackend(Backend):
    """Models served by Triton; their metadata from the repository directory when it exists, else from Triton."""

    name = "triton"

    def __init__(self, url: str, repository: str | Path | None = None, timeout_s: float = 10.0) -> None:
        self.url = url
        self.repository = None if repository is None else Path(repository)
        self.timeout_s = timeout_s
        self._client: Any = None
        self._specs: dict[str, ModelMetadata] = {}  # the latest servable version of each model
        self._versions: dict[str, list[int]] = {}  # servable versions (repository mode)
        self._scan = RepositoryScan()  # the repository at the last refresh
        self._limits: dict[str, int] = {}  # Triton's max_batch_size per model (0: no batching)

    def _connect(self) -> Any:
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
        return self._client

    @property
    def versioned(self) -> bool:
        return self.repository is not None and self.repository.is_dir()

    async def start(self) -> None:
        client = self._connect()
        if self._specs:
            return
        if not self.versioned:
            self._specs = await self._discover(client)
            return
        await self.refresh()
        if not self._specs:
            raise backend_unavailable(f"Triton at {self.url} has no version of {model_names(self.repository)} "
                                      "ready yet")

    async def _ready(self) -> set[tuple[str, int]]:
        """(model, version) pairs Triton reports READY."""
        try:
            index = await self._connect().get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
        except Exception as err:
            raise _map_error(err, "listing models") from err
        return {(e["name"], v) for e in index.get("models", [])
                if e.get("state") == "READY" and (v := version_number(str(e.get("version", "")))) is not None}

    async def refresh(self) -> bool:
        """Servable versions: complete on disk, encoder and head READY in Triton; the latest of each served."""
        if not self.versioned:
            return False
        ready = await self._ready()
        self._scan = await asyncio.to_thread(scan, self.repository)
        found: dict[str, list[int]] = {}
        for name, readable in self._scan.versions.items():
            found[name] = [v for v, files in sorted(readable.items())
                           if (files.metadata.encoder, v) in ready and (files.metadata.head, v) in ready]
        found = {name: vs for name, vs in found.items() if vs}
        if found == self._versions:
            return False
        self._versions = found
        self._specs = {name: self._scan.versions[name][vs[-1]].metadata for name, vs in found.items()}
        return True

    def unavailable(self) -> dict[str, dict[str, str]]:
        out = {name: dict(bad) for name, bad in self._scan.unavailable.items() if bad}
        for name, readable in self._scan.versions.items():
            for version in sorted(set(readable) - set(self._versions.get(name, []))):
                out.setdefault(name, {})[str(version)] = (
                    "not READY in Triton (still loading, outside the model's version_policy, or it failed to load: "
                    "see Triton's log)")
        return out

    def versions(self, model: str) -> list[int]:
        return list(self._versions.get(model, []))

    async def select(self, model: str, version: int | None) -> ModelMetadata:
        spec = await super().select(model, version)
        return spec if version is None or version == spec.version else resolve(self.repository, model, version).metadata

    async def _discover(self, client: Any) -> dict[str, ModelMetadata]:
        """Models whose input is 'images' UINT8 (-1, C, S, S) and whose outputs include 'cluster'."""
        try:
            index = await client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
        except Exception as err:
            raise _map_error(err, "listing models") from err
        specs = {}
        for entry in index.get("models", []):
            if entry.get("state") != "READY":
                continue
            meta = await client.get_model_metadata(entry["name"], as_json=True, client_timeout=self.timeout_s)
            try:
                specs[entry["name"]] = metadata_from_triton(meta)
            except ValueError as err:  # not one of ours (other input, outputs missing): not served here
                log.info("Triton model %s is not a clustering model: %s", entry["name"], err)
        if not specs:
            raise backend_error(f"Triton at {self.url} serves no clustering model")
        return specs


    def models(self) -> dict[str, ModelMetadata]:
        return dict(self._specs)

    async def _limit(self, model: str) -> int:
        """Triton refuses batches above the model's max_batch_size: read it once from the model config."""
        if model not in self._limits:
            try:
                config = await self._connect().get_model_config(model, as_json=True, client_timeout=self.timeout_s)
            except Exception as err:
                raise _map_error(err, f"reading the config of model {model!r}") from err
            self._limits[model] = int(config["config"].get("max_batch_size", 0))
        return self._limits[model]

    async def infer(self, model: str, images: np.ndarray, version: int | None = None) -> dict[str, np.ndarray]:
        limit = await self._limit(model)
        if limit <= 0 or len(images) <= limit:
            return await self._infer(model, images, version)
        parts = await asyncio.gather(*(self._infer(model, images[i:i + limit], version)
                                       for i in range(0, len(images), limit)))
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    async def _call(self, model: str, version: int | None, name: str, array: np.ndarray, datatype: str,
                    outputs: list[str]) -> Any:
        import tritonclient.grpc.aio as grpcclient

        inp = grpcclient.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
        what = f"inference of model {model!r}" + ("" if version is None else f" version {version}")
        try:
            return await self._connect().infer(model, [inp], model_version="" if version is None else str(version),
                                               outputs=requested, client_timeout=self.timeout_s)
        except Exception as err:
            if version is not None and "unavailable model" in str(err).lower():
                raise not_found(f"Triton has not loaded {what.removeprefix('inference of ')} "
                                "(see its version_policy)") from err
            raise _map_error(err, what) from err

    async def _infer(self, model: str, images: np.ndarray, version: int | None) -> dict[str, np.ndarray]:
        if version is None:  # discovered from Triton: its ensemble
            spec = self._specs[model]
            result = await self._call(model, None, IMAGES, images, "UINT8", list(spec.outputs))
        else:  # this exact version of encoder and head
            spec = resolve(self.repository, model, version).metadata if self._specs[model].version != version \
                else self._specs[model]
            encoded = await self._call(spec.encoder, version, IMAGES, images, "UINT8", [FEATURES])
            features = np.ascontiguousarray(encoded.as_numpy(FEATURES), dtype=np.float32)
            result = await self._call(spec.head, version, FEATURES, features, "FP32", list(spec.outputs))
        return {name: _as_graph_shape(spec, name, result.as_numpy(name)) for name in spec.outputs}

    async def healthy(self) -> bool:
        try:
            return bool(await self._connect().is_server_ready(client_timeout=min(2.0, self.timeout_s)))
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False

    def describe(self, model: str) -> dict[str, Any]:
        return {"backend": self.name, "url": self.url, "version": self._specs[model].version,
                "triton_max_batch_size": self._limits.get(model)}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def metadata_from_triton(meta: dict[str, Any]) -> ModelMetadata:
    """A model's Triton metadata (inputs/outputs) as a ModelMetadata; ValueError when it is not a clustering model."""
    inputs = {i["name"]: i for i in meta.get("inputs", [])}
    outputs = {o["name"]: o for o in meta.get("outputs", [])}
    image = inputs.get(IMAGES)
    if image is None or image["datatype"] != "UINT8" or len(image["shape"]) != 4:
        raise ValueError(f"input {IMAGES!r} UINT8 (-1, C, S, S) missing, inputs are {list(inputs)}")
    _, c, h, w = (int(d) for d in image["shape"])
    dtypes = {"FP32": "float32", "FP16": "float16", "INT64": "int64", "INT32": "int32", "UINT8": "uint8"}
    specs = {}
    for name, o in outputs.items():
        shape = [int(d) for d in o["shape"]]
        if name == CLUSTER and shape[1:] == [1]:
            shape = shape[:1]  # declared dims [1] for a (B,) graph tensor
        specs[name] = TensorSpec(name, dtypes.get(o["datatype"], "float32"), tuple(shape))
    missing = [n for n in REQUIRED_OUTPUTS if n not in specs]
    if missing:
        raise ValueError(f"outputs {missing} missing, outputs are {list(outputs)}")
    return ModelMetadata(name=meta["name"], num_clusters=specs[PROBABILITIES].shape[1],
                         input=ImageInput(channels=c, height=h, width=w), outputs=specs,
                         precision=split_precision(meta["name"])[1])  # without the repository, its name says it


def _as_graph_shape(spec: ModelMetadata, name: str, array: np.ndarray) -> np.ndarray:
    """Triton gives a (B,) graph output declared with dims [1] as (B, 1): back to the graph's rank."""
    rank = len(spec.outputs[name].shape) if name in spec.outputs else array.ndim
    while array.ndim > rank and array.shape[-1] == 1:
        array = array.reshape(array.shape[:-1])
    return array


def _map_error(err: Exception, what: str) -> GatewayError:
    status = getattr(err, "status", lambda: None)()
    if status in _UNAVAILABLE:
        return backend_unavailable(f"Triton is unreachable ({what}): {status}")
    return backend_error(f"Triton failed ({what}): {err}")
