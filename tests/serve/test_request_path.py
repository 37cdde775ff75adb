"""Every route that takes images goes the gateway's one way (Gateway.run): /v1/embeddings answers a client that
leaves, and the JSON body limits, as /cluster does. Driven through the ASGI app itself, so a test can send a
body in pieces, hold the rest back, or leave while the request waits in the queue."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest

from serve.app import create_app
from serve.settings import load_settings
from tests.support.serving import FakeBackend, grey_png, metric

ENDPOINTS = ["/cluster", "/v1/embeddings"]
ANSWER_WITHIN_S = 10.0  # a request under test that never answers fails here rather than hanging the suite


def body(endpoint: str, images: list[str], **fields: object) -> dict:
    """The JSON body of `endpoint` carrying `images` (base64)."""
    if endpoint == "/cluster":
        return {"images": images, **fields}
    return {"model": "fake", "input": images, **fields}


def pngs(count: int) -> list[str]:
    return [base64.b64encode(grey_png(10 * i)).decode() for i in range(count)]


class Exchange:
    """One HTTP request sent straight to the ASGI app: the test decides what the client sends, and when."""

    def __init__(self, app, endpoint: str, content_length: int | None = None) -> None:
        headers = [(b"host", b"gateway"), (b"content-type", b"application/json")]
        if content_length is not None:
            headers.append((b"content-length", str(content_length).encode()))
        self.scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                      "scheme": "http", "path": endpoint, "raw_path": endpoint.encode(), "query_string": b"",
                      "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
                      "server": ("gateway", 80)}
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.sent: list[dict] = []
        self.task = asyncio.create_task(app(self.scope, self.incoming.get, self._send))

    async def _send(self, message: dict) -> None:
        self.sent.append(message)

    def send(self, chunk: bytes, more: bool = False) -> None:
        self.incoming.put_nowait({"type": "http.request", "body": chunk, "more_body": more})

    def leave(self) -> None:
        self.incoming.put_nowait({"type": "http.disconnect"})

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        await asyncio.wait_for(self.task, ANSWER_WITHIN_S)
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        content = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return start["status"], headers, content


async def until(condition, timeout_s: float = ANSWER_WITHIN_S) -> None:
    """Wait for `condition()` to hold (the test's assertions then say what went wrong if it never did)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


def run_app(app, steps):
    """Run `steps(app, client)` with the app's lifespan (models warm) and an httpx client on it."""
    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=60) as client:
                return await steps(app, client)

    return asyncio.run(main())


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_client_that_leaves_gets_499_and_its_images_are_never_inferred(endpoint):
    gate = asyncio.Event()
    backend = FakeBackend(gate=gate)
    app = create_app(load_settings({}, max_batch_size=4, max_wait_ms=0, batch_concurrency=1), backend)

    async def steps(app, client):
        gateway = app.state.gateway
        blocker = asyncio.create_task(client.post("/cluster", json={"images": pngs(1)}))
        await until(lambda: metric(gateway.metrics.render().decode(), "gateway_batch_size_count") == 1)
        data = json.dumps(body(endpoint, pngs(3))).encode()  # while the blocker's batch holds the one batch slot
        exchange = Exchange(app, endpoint, len(data))
        exchange.send(data)
        await until(lambda: gateway.batchers["fake", None].queued == 3)  # its images wait in the queue
        queued = gateway.batchers["fake", None].queued
        exchange.leave()
        status, _, _ = await exchange.answer()
        gate.set()
        blocked = await blocker
        return queued, status, blocked.status_code, (await client.get("/metrics")).text

    queued, status, blocked, metrics = run_app(app, steps)
    assert queued == 3
    assert status == 499 and blocked == 200
    assert backend.batches == [1, 1]  # the warm-up and the blocker: none of the three images that were left
    assert metric(metrics, "gateway_requests_total", endpoint=endpoint, status="499") == 1
    assert metric(metrics, "gateway_batch_size_sum") == 1  # images batched: the blocker's


LIMITS = dict(max_request_bytes=20_000, max_images_per_request=3, max_image_bytes=2_000)
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_json_bodies_meet_the_same_limits(endpoint):
    app = create_app(load_settings({}, **LIMITS), FakeBackend())
    over_limit = base64.b64encode(b"\x89PNG" + bytes(2_046)).decode()  # 2,050 bytes
    key = "images" if endpoint == "/cluster" else "input"
    twice = json.dumps(body(endpoint, pngs(1)))[:-1] + f', "{key}": []' + "}"

    async def steps(app, client):
        answers = {
            "over the byte limit": await client.post(endpoint, content=b" " * 20_001, headers=JSON),
            "too many images": await client.post(endpoint, json=body(endpoint, pngs(4))),
            "an image over its limit": await client.post(endpoint, json=body(endpoint, [*pngs(1), over_limit])),
            "not JSON": await client.post(endpoint, content=b"{'images': 1}", headers=JSON),
            "a repeated key": await client.post(endpoint, content=twice.encode(), headers=JSON),
            "bad base64": await client.post(endpoint, json=body(endpoint, [*pngs(1), "%%not base64%%"])),
        }
        streamed = Exchange(app, endpoint)  # no Content-Length: refused once the bytes pass the limit
        streamed.send(b" " * 15_000, more=True)
        streamed.send(b" " * 15_000, more=True)
        status, headers, text = await streamed.answer()
        answers["streamed over the byte limit"] = httpx.Response(status, headers=headers, content=text)
        return answers

    answers = run_app(app, steps)
    assert {case: a.status_code for case, a in answers.items()} == {
        "over the byte limit": 413, "too many images": 413, "an image over its limit": 413, "not JSON": 400,
        "a repeated key": 422, "bad base64": 200 if endpoint == "/cluster" else 400,  # /v1: all or nothing
        "streamed over the byte limit": 413}
    for refused_unread in ("over the byte limit", "streamed over the byte limit"):
        assert answers[refused_unread].headers["connection"] == "close"
    assert answers["too many images"].json()["error"]["kind"] == "too_large"
    message = answers["an image over its limit"].json()["error"]["message"]
    assert "2050 bytes, more than the limit of 2000" in message  # the image's exact size, named
    assert "image 1: not valid base64" in answers["bad base64"].text


@pytest.mark.parametrize(("endpoint", "head", "why"), [
    ("/cluster", b'{"images": ["aGk="], "unknown": ', "unknown key 'unknown'"),
    ("/v1/embeddings", b'{"model": "fake", "input": ["aGk="], "options": {"nested": ', "'options' is not used"),
    ("/v1/embeddings", b"{" + b"".join(b'"k%d": 0, ' % i for i in range(17)), "more than 16 keys"),
])
def test_a_body_refused_by_its_first_bytes_is_answered_before_the_rest_arrives(endpoint, head, why):
    app = create_app(load_settings({}), FakeBackend())

    async def steps(app, client):
        exchange = Exchange(app, endpoint, content_length=10_000_000)
        exchange.send(head + b" " * 70_000, more=True)  # and the rest never comes
        return await exchange.answer()

    status, headers, text = run_app(app, steps)
    assert status == 422 and headers["connection"] == "close", text
    assert why in json.loads(text)["error"]["message"]


def test_openai_fields_this_api_does_not_use_are_skipped_while_few_and_scalar():
    app = create_app(load_settings({}), FakeBackend())
    ignored = {"user": "someone", "modality": "image", "priority": 3, "truncate": True, "extra": None}
    too_many = {f"field_{i}": 0 for i in range(15)}

    async def steps(app, client):
        return [await client.post("/v1/embeddings", json=body("/v1/embeddings", pngs(2), **fields))
                for fields in (ignored, too_many, {"options": {"a": 1}}, {"tags": ["a"]})]

    ok, many, nested, listed = run_app(app, steps)
    assert ok.status_code == 200 and len(ok.json()["data"]) == 2, ok.text
    assert many.status_code == 422 and "more than 16 keys" in many.text
    assert nested.status_code == 422 and "'options' is not used by this API" in nested.text
    assert listed.status_code == 422 and "'tags'" in listed.text
