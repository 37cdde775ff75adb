"""The gateway on the triton backend, against a real (CPU) tritonserver serving the exported CPU repository."""

from __future__ import annotations

import time

import numpy as np
import pytest

from contract.preprocess import prepare_source
from tests.support.serving import digit_pngs, exported, files, gateway, metric, mixed_images, torch_predict
from tests.support.tritonserver import TritonServer, triton_available

REASON = triton_available()
pytestmark = [pytest.mark.triton, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


@pytest.fixture(scope="module")
def model(tiny_run, tmp_path_factory):
    return exported(tiny_run, tmp_path_factory, "cc")


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    with TritonServer(model.cpu_repository, tmp_path_factory.mktemp("triton") / "triton.log") as s:
        yield s


def _settings(server):
    return dict(backend="triton", triton_url=server.grpc_url, triton_timeout_s=5.0, max_wait_ms=2.0)


def test_cluster_ids_equal_pytorch_through_triton(model, server):
    items = [(f"d{i}.png", d) for i, d in enumerate(digit_pngs(20))] + mixed_images()
    prepared = np.stack([prepare_source(data, 16, 1) for _, data in items])
    reference = torch_predict(model.run, prepared)
    with gateway(model.cpu_repository, **_settings(server)) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/cluster", files=files(items), params={"top_k": 2})
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        np.testing.assert_array_equal([x["cluster"] for x in res], reference["cluster"])
        np.testing.assert_allclose([x["top_k"][0]["probability"] for x in res],
                                   reference["probabilities"].max(1), atol=1e-5)
        r = c.post("/embed", files=files(items))
        np.testing.assert_allclose([x["embedding"] for x in r.json()["results"]], reference["embedding"], atol=1e-5)
        models = c.get("/models").json()
        assert models["backend"] == "triton" and models["models"][0]["runtime"]["url"] == server.grpc_url


def test_metadata_can_come_from_triton_itself(model, server, tmp_path):
    settings = _settings(server)
    with gateway(tmp_path / "no-such-repository", **settings) as c:
        (m,) = c.get("/models").json()["models"]
        assert m["name"] == model.name and m["input"]["channels"] == 1 and m["num_clusters"] == 10
        r = c.post("/cluster", files=files([("a.png", digit_pngs(1)[0])]))
        assert r.status_code == 200, r.text


def _poll(fn, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def test_a_killed_triton_gives_503_and_the_gateway_recovers_when_it_returns(model, server):
    one = files([("a.png", digit_pngs(1)[0])])
    settings = _settings(server)
    with gateway(model.cpu_repository, **settings) as c:
        assert c.post("/cluster", files=one).status_code == 200
        server.stop()
        r = c.post("/cluster", files=one)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["kind"] == "backend_unavailable" and "Triton" in r.json()["error"]["message"]
        assert "retry-after" in r.headers
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200  # alive, just not ready
        server.start()
        ok = _poll(lambda: c.post("/cluster", files=one).status_code == 200, timeout=30)
        assert ok, "the gateway did not recover within 30 s of Triton's return"
        assert c.get("/readyz").status_code == 200
        text = c.get("/metrics").text
        assert metric(text, "gateway_requests_total", endpoint="/cluster", status="503") >= 1
        assert metric(text, "gateway_errors_total", kind="backend_unavailable") >= 1


def test_gateway_started_before_triton_becomes_ready_when_it_comes(model, server):
    server.stop()
    settings = _settings(server)
    try:
        with gateway(model.cpu_repository, **settings) as c:
            assert c.get("/readyz").status_code == 503
            assert c.post("/cluster", files=files([("a.png", digit_pngs(1)[0])])).status_code == 503
            server.start()
            assert _poll(lambda: c.get("/readyz").status_code == 200, timeout=30)
            assert c.post("/cluster", files=files([("a.png", digit_pngs(1)[0])])).status_code == 200
    finally:
        server.start()
