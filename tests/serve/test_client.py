"""serve.client: sync and async calls from every image type, in batches; retries honour Retry-After."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from serve.client import AsyncClient, Client, ClusterResult, GatewayClientError, array_to_pil, cluster_results
from tests.support.serving import digit_pngs, files, gateway


@pytest.fixture(scope="module")
def testclient(cc_model):
    with gateway(cc_model.repository) as c:
        yield c


def every_kind(tmp_path: Path) -> list:
    """The same 4 digits as a path, bytes, a PIL image and a numpy array, then 2 more."""
    pngs = digit_pngs(6)
    path = tmp_path / "zero.png"
    path.write_bytes(pngs[0])
    pil = Image.open(io.BytesIO(pngs[2]))
    array = np.asarray(Image.open(io.BytesIO(pngs[3])))
    return [path, pngs[1], pil, array, pngs[4], pngs[5]]


def test_sync_client_clusters_and_embeds_every_image_kind_in_batches(testclient, cc_model, tmp_path):
    images = every_kind(tmp_path)
    direct = testclient.post("/cluster", files=files([(str(i), d) for i, d in enumerate(digit_pngs(6))])).json()
    with Client(http=testclient, batch_size=4) as client:
        results = client.cluster(images)
        assert [r.index for r in results] == list(range(6))
        assert [r.cluster for r in results] == [x["cluster"] for x in direct["results"]]
        assert all(isinstance(r, ClusterResult) and r.ok and r.name and r.version == 1 for r in results)
        assert results[0].filename == "zero.png" and results[0].top_k[0].cluster == results[0].cluster
        embedded = client.embed(images, model=cc_model.name)
        assert embedded.embeddings.shape == (6, 128) and not embedded.errors
        np.testing.assert_allclose(np.linalg.norm(embedded.embeddings, axis=1), 1, atol=1e-5)
        broken = client.embed([images[1], b"not an image"])
        assert np.isnan(broken.embeddings[1]).all() and "image 1" in broken.errors[1]
        assert client.card(cc_model.name)["card"]["name"] == cc_model.name
        with pytest.raises(GatewayClientError) as err:
            client.cluster(images[:1], model="nope")
        assert err.value.status == 404 and err.value.kind == "not_found"


def test_async_client_gives_the_sync_answers(cc_model, testclient, tmp_path):
    from serve.app import create_app
    from serve.settings import load_settings

    images = every_kind(tmp_path)
    with Client(http=testclient, batch_size=4) as client:
        expected = client.cluster(images)
    app = create_app(load_settings({}, model_repository=str(cc_model.repository)))

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient(http=httpx.AsyncClient(transport=transport, base_url="http://gw"), batch_size=2,
                               concurrency=3) as client:
            results = await client.cluster(images)
            embedded = await client.embed(images)
        await app.state.gateway.close()
        return results, embedded

    results, embedded = asyncio.run(run())
    assert [(r.index, r.cluster, r.name) for r in results] == [(r.index, r.cluster, r.name) for r in expected]
    assert embedded.embeddings.shape == (6, 128)


def test_numpy_layouts_become_the_same_picture():
    hw = np.arange(48, dtype=np.uint8).reshape(6, 8)
    rgb = np.stack([hw, hw // 2, hw // 3], axis=2)
    assert np.array_equal(np.asarray(array_to_pil(hw)), hw)
    assert np.array_equal(np.asarray(array_to_pil(hw[None])), hw)  # (1, H, W)
    assert np.array_equal(np.asarray(array_to_pil(rgb.transpose(2, 0, 1))), rgb)  # (3, H, W)
    with pytest.raises(TypeError, match="uint8"):
        array_to_pil(hw.astype(np.float32))


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers POSTs from a script of (status, headers) and records when each request came."""

    script: list[tuple[int, dict[str, str]]] = []
    seen: list[float] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["content-length"]))
        Scripted.seen.append(time.monotonic())
        status, headers = Scripted.script.pop(0) if Scripted.script else (200, {})
        if status == 200:
            body = {"model": "m", "version": 1, "results": [{"index": 0, "filename": "a", "cluster": 3,
                                                             "probability": 0.9, "top_k": []}]}
        else:
            body = {"error": {"status": status, "kind": "queue_full", "message": "busy"}}
        data = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"content-type": "application/json", "content-length": str(len(data)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Scripted.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_client_retries_a_429_after_its_retry_after(scripted):
    Scripted.script = [(429, {"Retry-After": "1"}), (503, {"Retry-After": "1"})]
    with Client(scripted, retries=3) as client:
        (result,) = client.cluster([b"png"])
    assert result.cluster == 3 and len(Scripted.seen) == 3
    gaps = np.diff(Scripted.seen)
    assert (gaps >= 0.95).all() and (gaps < 5).all(), gaps  # waited as told, not much longer


def test_the_async_client_retries_too_and_gives_up_after_its_retries(scripted):
    Scripted.script = [(429, {"Retry-After": "1"})]

    async def run():
        async with AsyncClient(scripted, retries=2) as client:
            return await client.cluster([b"png"])

    assert asyncio.run(run())[0].cluster == 3 and np.diff(Scripted.seen)[0] >= 0.95
    Scripted.seen, Scripted.script = [], [(429, {"Retry-After": "0"})] * 3
    with Client(scripted, retries=2) as client, pytest.raises(GatewayClientError) as err:
        client.cluster([b"png"])
    assert err.value.status == 429 and len(Scripted.seen) == 3  # the first try and two retries
    Scripted.seen, Scripted.script = [], [(400, {})]
    with Client(scripted, retries=5) as client, pytest.raises(GatewayClientError):
        client.cluster([b"png"])
    assert len(Scripted.seen) == 1  # a 400 is not retried


def test_extra_outputs_come_through_by_name_and_as_attributes():
    body = {"model": "tree", "version": 3, "results": [
        {"index": 0, "filename": "a.png", "cluster": 2, "probability": 0.9,
         "top_k": [{"cluster": 2, "probability": 0.9}], "path": [2, 6, 13], "margin": 0.4},
        {"index": 1, "filename": "b.png", "error": "image 1: cannot decode image"}]}
    ok, failed = cluster_results(body, offset=10)
    assert ok.extras == {"path": (2, 6, 13), "margin": 0.4} and ok.path == (2, 6, 13) and ok.margin == 0.4
    assert (ok.index, ok.cluster, ok.top_k[0].cluster, ok.model, ok.version) == (10, 2, 2, "tree", 3)
    assert failed.extras == {} and not failed.ok
    with pytest.raises(AttributeError, match="no field or extra output 'depth'"):
        _ = ok.depth
