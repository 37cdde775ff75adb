"""The batching queue: concurrent requests share batches, big requests are split, a full queue answers 429."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from serve.app import create_app
from serve.batching import Batcher
from serve.errors import GatewayError
from serve.metrics import Metrics
from serve.settings import load_settings
from tests.support.serving import FakeBackend, digit_pngs, exported, files, grey_png, metric


def _images(n: int, start: int = 0) -> np.ndarray:
    return (np.arange(start, start + n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 1, 2, 2), np.uint8))


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail_on = fail_on

    async def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(images[:, 0, 0, 0].tolist())
        await asyncio.sleep(self.delay)
        if self.fail_on is not None and len(self.batches) == self.fail_on:
            raise GatewayError(503, "backend down", "backend_unavailable")
        return {"value": images[:, 0, 0, 0].astype(np.int64) * 10}


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_concurrent_requests_share_batches_and_get_their_own_results():
    async def main():
        rec = Recorder(delay=0.01)
        b = Batcher("m", rec, Metrics(), max_batch_size=16, max_wait_ms=50, queue_size=100)
        results = await asyncio.gather(*(b.submit(_images(2, 2 * i)) for i in range(8)))
        await b.close()
        return rec, results

    rec, results = _run(main())
    assert len(rec.batches) == 1 and len(rec.batches[0]) == 16
    for i, out in enumerate(results):
        assert out["value"].tolist() == [20 * i, 20 * i + 10]


def test_a_large_request_is_split_across_batches_and_reassembled_in_order():
    async def main():
        rec = Recorder()
        b = Batcher("m", rec, Metrics(), max_batch_size=4, max_wait_ms=1, queue_size=100, concurrency=2)
        small = asyncio.create_task(b.submit(_images(1, 100)))
        big = await b.submit(_images(10))
        out = await small, big
        await b.close()
        return rec, out

    rec, (small, big) = _run(main())
    assert small["value"].tolist() == [1000]
    assert big["value"].tolist() == [10 * i for i in range(10)]
    assert max(len(x) for x in rec.batches) <= 4 and sum(len(x) for x in rec.batches) == 11
    assert len(rec.batches) >= 3


def test_a_failed_batch_fails_only_its_requests():
    async def main():
        rec = Recorder(fail_on=1)
        b = Batcher("m", rec, Metrics(), max_batch_size=2, max_wait_ms=0, queue_size=100)
        first = await asyncio.gather(b.submit(_images(2)), return_exceptions=True)
        second = await b.submit(_images(1, 7))
        await b.close()
        return first, second

    first, second = _run(main())
    assert isinstance(first[0], GatewayError) and first[0].status == 503
    assert second["value"].tolist() == [70]


def test_a_full_queue_refuses_at_once_with_429():
    async def main():
        gate = asyncio.Event()

        async def infer(images):
            await gate.wait()
            return {"value": np.zeros(len(images))}

        b = Batcher("m", infer, Metrics(), max_batch_size=4, max_wait_ms=0, queue_size=6, retry_after_s=3)
        running = asyncio.create_task(b.submit(_images(4)))  # taken into the (blocked) batch
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(b.submit(_images(5)))  # queued
        await asyncio.sleep(0.05)
        assert b.queued == 5
        with pytest.raises(GatewayError) as err:
            await b.submit(_images(2))
        gate.set()
        await asyncio.gather(running, waiting)
        await b.close()
        return err.value

    err = _run(main())
    assert err.status == 429 and err.headers() == {"Retry-After": "3"}


def test_an_abandoned_request_leaves_the_queue_at_once_and_is_never_inferred():
    async def main():
        gate = asyncio.Event()
        seen: list[list[int]] = []

        async def infer(images):
            seen.append(images[:, 0, 0, 0].tolist())
            await gate.wait()
            return {"value": images[:, 0, 0, 0].astype(np.int64)}

        b = Batcher("m", infer, Metrics(), max_batch_size=4, max_wait_ms=0, queue_size=20)
        running = asyncio.create_task(b.submit(_images(4)))  # in the blocked batch
        await asyncio.sleep(0.05)
        abandoned = asyncio.create_task(b.submit(_images(10, 100)))  # queued behind it
        await asyncio.sleep(0.05)
        queued_before = b.queued
        abandoned.cancel()  # its client went away
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        queued_after = b.queued
        later = asyncio.create_task(b.submit(_images(2, 50)))
        gate.set()
        out = await later
        await running
        await b.close()
        return queued_before, queued_after, seen, out

    queued_before, queued_after, seen, out = _run(main())
    assert (queued_before, queued_after) == (10, 0)
    assert [v for batch in seen for v in batch] == [0, 1, 2, 3, 50, 51]  # none of the abandoned images
    assert out["value"].tolist() == [50, 51]


async def _with_app(app, body):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=60) as client:
            return await body(client)


def test_queue_full_is_429_with_retry_after_through_the_api_and_others_still_answered():
    gate = asyncio.Event()
    backend = FakeBackend(gate=gate)
    app = create_app(load_settings({}, queue_size=4, max_images_per_request=4, max_batch_size=4, max_wait_ms=0,
                                   retry_after_s=2, batch_concurrency=1), backend)  # one batch in flight

    async def body(client):
        four = files([(f"{i}.png", grey_png(10 * i)) for i in range(4)])
        first = asyncio.create_task(client.post("/cluster", files=four))  # in the blocked batch
        await asyncio.sleep(0.2)
        second = asyncio.create_task(client.post("/cluster", files=four))  # fills the queue
        await asyncio.sleep(0.2)
        refused = await client.post("/cluster", files=files([("x.png", grey_png(200))]))
        gate.set()
        done = await asyncio.gather(first, second)
        metrics = (await client.get("/metrics")).text
        return refused, done, metrics

    refused, done, metrics = asyncio.run(_with_app(app, body))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["kind"] == "queue_full"
    assert [r.status_code for r in done] == [200, 200]
    assert metric(metrics, "gateway_errors_total", kind="queue_full") == 1
    assert metric(metrics, "gateway_requests_total", endpoint="/cluster", status="429") == 1


def test_backend_errors_map_to_their_status_and_the_path_output_is_passed_on():
    backend = FakeBackend(error=GatewayError(503, "Triton is unreachable", "backend_unavailable"))
    app = create_app(load_settings({}), backend)

    async def body(client):
        return await client.post("/embed", files=files([("a.png", grey_png(1))]))

    r = asyncio.run(_with_app(app, body))
    assert r.status_code == 503 and "unreachable" in r.json()["error"]["message"]

    class TreeBackend(FakeBackend):
        async def infer(self, model, images, version=None):
            out = await super().infer(model, images)
            return {**out, "path": np.stack([np.full(len(images), 1), out["cluster"] + 2], 1)}

    app = create_app(load_settings({}), TreeBackend())

    async def tree(client):
        return await client.post("/cluster", files=files([("a.png", grey_png(0)), ("b.png", grey_png(255))]))

    res = asyncio.run(_with_app(app, tree)).json()["results"]
    assert [x["cluster"] for x in res] == [0, 3] and [x["path"] for x in res] == [[1, 2], [1, 5]]


def test_metrics_show_concurrent_requests_ran_in_fewer_larger_batches(tiny_run, tmp_path_factory):
    model = exported(tiny_run, tmp_path_factory, "cc")
    n = 16
    app = create_app(load_settings({}, model_repository=str(model.repository), max_batch_size=64, max_wait_ms=100))
    pngs = digit_pngs(2 * n)

    async def body(client):
        before = (await client.get("/metrics")).text
        responses = await asyncio.gather(*(
            client.post("/cluster", files=files([(f"{i}a.png", pngs[2 * i]), (f"{i}b.png", pngs[2 * i + 1])]))
            for i in range(n)))
        return before, responses, (await client.get("/metrics")).text

    before, responses, after = asyncio.run(_with_app(app, body))
    assert all(r.status_code == 200 for r in responses)
    batches = (metric(after, "gateway_batch_size_count", model=model.name)
               - metric(before, "gateway_batch_size_count", model=model.name))
    images = (metric(after, "gateway_batch_size_sum", model=model.name)
              - metric(before, "gateway_batch_size_sum", model=model.name))
    assert images == 2 * n
    assert batches < n / 2, f"{n} concurrent requests ran as {batches} batches"
    assert metric(after, "gateway_requests_total", endpoint="/cluster", status="200") == n
