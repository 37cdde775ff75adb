"""The gateway service, outside the HTTP layer: models, batching queues, cards, the decode pool, metrics.

    gateway = Gateway(settings, backend)
    await gateway.start()                                    # backend up, every model warmed up (or `detail`)
    done = await gateway.run(request, "/cluster", model, version)   # the one path of every route with images
    done.spec, done.uploads, done.ok, done.decode_errors, done.outputs
    await gateway.close()

`run` reads the request's images within the limits (serve/images.py), chooses the model version,
decodes them on the shared pool and infers them through that version's batching queue
(serve/batching.py); a client that goes away stops all of it (499). Routes (serve/app.py,
serve/openai_api.py, serve/page.py) shape the result into answers (serve/answers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request

from contract.levels import LevelError
from contract.metadata import ModelMetadata
from contract.names import CLUSTER
from serve.backends import Backend
from serve.backends.base import choose_model
from serve.batching import Batcher
from serve.cards import LOW_CONFIDENCE, OOD, VersionCard, answer_level, answers_at
from serve.errors import (
    CLIENT_CLOSED,
    GatewayError,
    backend_unavailable,
    bad_request,
    client_gone,
    public_text,
    unprocessable,
)
from serve.images import IMAGES_FORM, RequestBody, RequestForm, Upload, prepare_uploads, read_body
from serve.metrics import Metrics
from serve.settings import Settings

log = logging.getLogger("serve")
WARMUP_TIMEOUT_S = 60.0


@dataclass
class Inference:
    """One request's images through one model version."""

    spec: ModelMetadata  # the model version that answered
    uploads: list[Upload]  # every image of the request, in order
    ok: list[int]  # indices of the images that decoded, in order: the rows of `outputs`
    decode_errors: dict[int, str]  # index -> why that image could not be decoded
    outputs: dict[str, np.ndarray] | None  # head outputs of the `ok` images; None when none decoded
    fields: dict[str, Any] = field(default_factory=dict)  # the body's other fields (OpenAI's encoding_format)


class Gateway:
    """What the endpoints share: settings, backend, one batcher per model, the decode pool, metrics."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = Metrics()
        self.batchers: dict[tuple[str, int | None], Batcher] = {}  # per (model, version)
        self.cards: dict[tuple[str, int], VersionCard] = {}
        self.warm: dict[str, bool] = {}
        self.detail: str | None = "not started"
        self.pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="decode")
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None
        self._summarised = False

    @property
    def ready(self) -> bool:
        return bool(self.warm) and all(self.warm.values())

    async def start(self) -> None:
        """Start the backend, make the batchers and warm every model up; retried by /readyz until it works.

        An unreachable inference server leaves the gateway running but not ready; anything else
        (no repository, a broken model) is raised.
        """
        async with self._lock:
            if self.ready:
                return
            try:
                await self.backend.start()
            except GatewayError as err:
                self.detail = err.message
                log.warning("backend not available yet: %s", err.message)
                return
            problems = []
            for name, spec in self.backend.models().items():
                if self.warm.get(name):
                    continue
                try:
                    zeros = np.zeros((1, spec.input.channels, spec.input.size, spec.input.size), np.uint8)
                    await asyncio.wait_for(self.backend.infer(name, zeros), WARMUP_TIMEOUT_S)
                    self.warm[name] = True
                except (GatewayError, TimeoutError) as err:
                    self.warm[name] = False
                    problems.append(f"{name}: warm-up failed: {getattr(err, 'message', None) or 'timeout'}")
            self.detail = "; ".join(problems) or None
            if self.ready and not self._summarised:
                self._summarised = True
                log.info("%s", self.summary())

    def summary(self, headline: str = "gateway ready") -> str:
        """The start-up line: backend, per model its versions and the providers really used, and the versions
        not served."""
        parts = []
        for name, spec in sorted(self.backend.models().items()):
            runtime = self.backend.describe(name)
            providers = runtime.get("providers") or runtime.get("url", "")
            parts.append(f"{name} (version {spec.version}, versions {self.backend.versions(name) or '-'}, "
                         f"{spec.method} on {spec.dataset}, {providers})")
        unavailable = [f"{u['model']} {u['version']}" for u in self.unavailable()]
        return (f"{headline}: backend {self.backend.name}, {len(parts)} model(s): " + "; ".join(parts)
                + (f"; not served (see /models): {', '.join(unavailable)}" if unavailable else ""))

    def unavailable(self) -> list[dict[str, str]]:
        """Versions on disk that are not served, with why, as clients see it (/models, /readyz: no host paths)."""
        return [{"model": model, "version": version, "reason": public_text(reason)}
                for model, bad in self.backend.unavailable().items() for version, reason in bad.items()]

    def watch(self) -> None:
        """Start polling the backend for new and removed versions every settings.repository_poll_s seconds."""
        if self.settings.repository_poll_s > 0 and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="repository-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_s)
            try:
                if await self.backend.refresh():
                    served = self.backend.models()
                    # a backend switches only to versions that loaded (and warmed up)
                    self.warm = {name: True for name in served}
                    for name, spec in served.items():
                        self.metrics.served_version.labels(name).set(spec.version or 0)
                    await self._forget_removed_versions()
                    log.info("%s", self.summary("models changed"))
            except Exception:  # noqa: BLE001 - the poller must survive a half-written repository
                log.exception("looking for new model versions failed")

    async def _forget_removed_versions(self) -> None:
        """Batchers and cards of versions that are no longer servable (removed: rollback)."""
        for key in list(self.batchers):
            name, version = key
            if version is not None and version not in self.backend.versions(name):
                await self.batchers.pop(key).close()
        for name, version in list(self.cards):
            if version not in self.backend.versions(name):
                del self.cards[(name, version)]

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for batcher in self.batchers.values():
            await batcher.close()
        await self.backend.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def spec(self, name: str | None, version: int | None = None, precision: str | None = None) -> ModelMetadata:
        """The metadata of the model version a request asks for (None: the only model, its latest version), at
        `precision` when given (serve/backends/base.py choose_model: cc_digits at int8 is cc_digits_int8)."""
        models = self.backend.models()
        if not models:
            await self.start()
            models = self.backend.models()
            if not models:
                raise backend_unavailable(f"no model loaded yet: {self.detail}")
        return await self.backend.select(choose_model(models, name, precision), version)

    def batcher(self, spec: ModelMetadata) -> Batcher:
        key = (spec.name, spec.version)
        if key not in self.batchers:
            s = self.settings
            self.batchers[key] = Batcher(
                spec.name,  # one label per model in /metrics (a version switch is short-lived)
                lambda images: self.backend.infer(spec.name, images, spec.version), self.metrics,
                max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms, queue_size=s.queue_size,
                concurrency=s.concurrency, retry_after_s=s.retry_after_s)
        return self.batchers[key]

    def card(self, spec: ModelMetadata) -> VersionCard | None:
        """The card and names of a model version, when the repository holds them (None otherwise)."""
        key = (spec.name, spec.version)
        if key not in self.cards:
            card = VersionCard.find(self.settings.repository_path, spec)
            if card is None:
                return None
            self.cards[key] = card
        return self.cards[key]

    async def run(self, request: Request, endpoint: str, model: str | None = None, version: int | None = None,
                  form: RequestForm = IMAGES_FORM, precision: str | None = None, chosen: ModelMetadata | None = None
                  ) -> Inference:
        """Read, prepare and infer the images of one request; stops (499) as soon as its client goes away.

        `model`, `version` and `precision` choose the model version (a body of OpenAI's form names the model
        itself), or `chosen` is the version the route chose already from them (`version`: what the client
        asked for); `form` says how the route takes its images (serve/images.py RequestForm). A request
        that named no version and whose version was removed while it waited (a rollback) is answered by the
        version served then: the returned `spec` says which."""
        spec = chosen or (None if form.shape.names_model else await self.spec(model, version, precision))
        body = await read_body(request, self.settings, self.pool, form)
        if spec is None:
            spec = await self.spec(body.fields["model"], version)
        try:
            return await self._answer(request, spec, endpoint, body, form)
        except GatewayError as err:
            if version is not None or err.status == CLIENT_CLOSED or not self._removed(spec):
                raise
        # the version an unpinned request went to was removed (a rollback) while it waited: once more, on the one
        # served now, rather than a 503 for a request that never named a version
        return await self._answer(request, await self.spec(spec.name), endpoint, body, form)

    def _removed(self, spec: ModelMetadata) -> bool:
        return spec.version is not None and spec.version not in self.backend.versions(spec.name)

    async def _answer(self, request: Request, spec: ModelMetadata, endpoint: str, body: RequestBody,
                      form: RequestForm) -> Inference:
        if form.check is not None:
            form.check(spec, body)
        work = asyncio.ensure_future(self._prepare_and_infer(spec, endpoint, body, form.all_or_nothing))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():  # the client left (or the server is stopping): drop its decoding and queued images
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if work.cancelled():
            raise client_gone(f"client disconnected before the answer to its {len(body.uploads)} image(s) "
                              f"on {endpoint}")
        ok, decode_errors, outputs = work.result()
        return Inference(spec, body.uploads, ok, decode_errors, outputs, body.fields)

    async def _prepare_and_infer(self, spec: ModelMetadata, endpoint: str, body: RequestBody, all_or_nothing: bool
                                 ) -> tuple[list[int], dict[int, str], dict[str, np.ndarray] | None]:
        images, ok, decode_errors = await prepare_uploads(body.uploads, spec.input.size, spec.input.channels,
                                                          self.settings, self.pool, spec.input.crop)
        if decode_errors:
            self.metrics.errors.labels("image_decode").inc(len(decode_errors))
            self.metrics.images.labels(endpoint, "error").inc(len(decode_errors))
            if all_or_nothing:
                first = min(decode_errors)
                more = f" (and {len(decode_errors) - 1} more)" if len(decode_errors) > 1 else ""
                raise bad_request(f"input {decode_errors[first]}{more}")
        outputs = None
        if images is not None:
            outputs = await self.infer(spec, images)
            self.metrics.images.labels(endpoint, "ok").inc(len(ok))
        return ok, decode_errors, outputs

    async def infer(self, spec: ModelMetadata, images: np.ndarray) -> dict[str, np.ndarray]:
        """Prepared uint8 (B, C, S, S) -> the head outputs of that model version, through its batching queue."""
        return await self.batcher(spec).submit(images)

    def level(self, spec: ModelMetadata, requested: str | None) -> int:
        """The level (number of clusters) a request answers at: ?clusters=, by default the trained one; 422 naming
        the valid range (a version without a merge hierarchy answers at its own clusters only)."""
        try:
            return answer_level(self.card(spec), spec.num_clusters, requested)
        except LevelError as err:
            raise unprocessable(str(err)) from err

    def answer(self, spec: ModelMetadata, outputs: dict[str, np.ndarray], level: int
               ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        """B images' head outputs at `level` and their names and flags (serve/cards.py answers_at); /metrics
        counts the assignments at the trained level, so its series do not depend on what clients ask for."""
        at_level, notes = answers_at(self.card(spec), outputs, level)
        if notes is None:
            return at_level, None
        model, version = spec.name, str(spec.version)
        for cluster, count in zip(*np.unique(outputs[CLUSTER], return_counts=True), strict=True):
            self.metrics.assignments.labels(model, version, str(int(cluster))).inc(int(count))
        if OOD in notes:
            self.metrics.low_confidence.labels(model, version).inc(int(notes[LOW_CONFIDENCE].sum()))
            self.metrics.ood.labels(model, version).inc(int(notes[OOD].sum()))
        return at_level, notes


async def _disconnected(request: Request) -> None:
    """Returns when the client has closed its connection (the body is read by then: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
