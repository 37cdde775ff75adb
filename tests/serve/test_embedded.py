"""The gateway on the embedded onnxruntime backend, end to end: results equal PyTorch's, every error case."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from contract.preprocess import prepare_source
from tests.support.images import png_header_only
from tests.support.serving import (
    copy_model,
    digit_pngs,
    encode,
    exported,
    files,
    gateway,
    metric,
    mixed_images,
    torch_predict,
)


@pytest.fixture(scope="module")
def model(tiny_run, tmp_path_factory):
    return exported(tiny_run, tmp_path_factory, "cc")


@pytest.fixture(scope="module")
def client(model):
    with gateway(model.repository) as c:
        yield c


def _prepared(items, size=16, channels=1):
    return np.stack([prepare_source(data, size, channels) for _, data in items])


def test_cluster_ids_probabilities_and_embeddings_equal_pytorch(client, model):
    items = [(f"d{i}.png", data) for i, data in enumerate(digit_pngs(24))] + mixed_images()
    reference = torch_predict(model.run, _prepared(items))
    r = client.post("/cluster", files=files(items), params={"top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model.name
    results = body["results"]
    assert [x["index"] for x in results] == list(range(len(items)))
    assert [x["filename"] for x in results] == [name for name, _ in items]
    assert all("error" not in x for x in results), [x.get("error") for x in results]
    np.testing.assert_array_equal([x["cluster"] for x in results], reference["cluster"])
    probs = reference["probabilities"]
    np.testing.assert_allclose([x["probability"] for x in results],
                               probs[np.arange(len(items)), reference["cluster"]], atol=1e-5)
    for x, p in zip(results, probs, strict=True):
        assert [t["cluster"] for t in x["top_k"]][0] == x["cluster"]
        assert len(x["top_k"]) == 3
        tops = [t["probability"] for t in x["top_k"]]
        assert tops == sorted(tops, reverse=True)
        np.testing.assert_allclose(tops, np.sort(p)[::-1][:3], atol=1e-5)
        assert "path" not in x  # CoHiClust only

    r = client.post("/embed", files=files(items))
    assert r.status_code == 200, r.text
    emb = np.array([x["embedding"] for x in r.json()["results"]])
    assert r.json()["embedding_dim"] == emb.shape[1] == reference["embedding"].shape[1]
    np.testing.assert_allclose(emb, reference["embedding"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_json_base64_gives_the_same_answer_as_multipart(client):
    items = mixed_images()
    multipart = client.post("/cluster", files=files(items)).json()["results"]
    images = [base64.b64encode(data).decode() for _, data in items]
    images[0] = "data:image/png;base64," + images[0]
    named = [{"data": d, "filename": n} for d, (n, _) in zip(images, items, strict=True)]
    r = client.post("/cluster", json={"images": named})
    assert r.status_code == 200, r.text
    assert r.json()["results"] == multipart
    r = client.post("/cluster", json={"images": images[:2]})
    assert [x["filename"] for x in r.json()["results"]] == [None, None]


def test_exif_orientation_grey_palette_and_alpha_are_handled(client):
    base = Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1)), "L")  # left-right ramp
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate 90 CW: store the image rotated 90 CCW
    stored = base.transpose(Image.Transpose.ROTATE_90)
    items = [("upright.png", encode(base)), ("exif.png", encode(stored, exif=exif)),
             ("no-exif.png", encode(stored)), ("palette.png", encode(base.convert("P"))),
             ("rgba.png", encode(base.convert("RGBA"))), ("rgb.png", encode(base.convert("RGB")))]
    r = client.post("/embed", files=files(items))
    assert r.status_code == 200, r.text
    emb = {x["filename"]: np.array(x["embedding"]) for x in r.json()["results"]}
    for name in ("exif.png", "palette.png", "rgba.png", "rgb.png"):
        np.testing.assert_allclose(emb[name], emb["upright.png"], atol=1e-6, err_msg=name)
    assert not np.allclose(emb["no-exif.png"], emb["upright.png"], atol=1e-3)  # the EXIF tag mattered


def test_a_corrupt_image_gets_an_error_entry_and_the_others_are_answered(client):
    good = digit_pngs(3)
    items = [("a.png", good[0]), ("broken.png", b"\x89PNG\r\n\x1a\nnot really"), ("b.png", good[1]),
             ("truncated.png", good[2][: len(good[2]) // 2]), ("empty.png", b"")]
    r = client.post("/cluster", files=files(items))
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [("error" in x) for x in res] == [False, True, False, True, True]
    assert "broken.png" in res[1]["error"] and "image 1" in res[1]["error"]
    assert res[1]["filename"] == "broken.png" and "cluster" not in res[1]
    assert "truncated.png" in res[3]["error"]
    assert isinstance(res[0]["cluster"], int) and isinstance(res[2]["cluster"], int)

    r = client.post("/cluster", json={"images": [base64.b64encode(good[0]).decode(), "%%%not base64%%%",
                                                 base64.b64encode(b"GIF89a-garbage").decode()]})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert "cluster" in res[0]
    assert "image 1" in res[1]["error"] and "base64" in res[1]["error"]
    assert "image 2" in res[2]["error"]

    r = client.post("/embed", files=files([("only-bad.png", b"junk")]))  # nothing to infer: still 200
    assert r.status_code == 200 and "only-bad.png" in r.json()["results"][0]["error"]
    metrics = client.get("/metrics").text
    assert metric(metrics, "gateway_errors_total", kind="image_decode") >= 6


def _error(r, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["kind"] == kind
    return err["message"]


def test_unsupported_content_type_is_415(client):
    _error(client.post("/cluster", content=b"\x89PNG", headers={"content-type": "image/png"}),
           415, "unsupported_media_type")
    _error(client.post("/embed", content=b"hello"), 415, "unsupported_media_type")


def test_bad_bodies_and_parameters_are_4xx(client):
    assert "no images" in _error(client.post("/cluster", files={"other": ("x.png", b"1")}), 400, "bad_request")
    _error(client.post("/cluster", data={"files": "text, not a file"},
                       files={"x": ("x.png", b"1")}), 400, "bad_request")
    _error(client.post("/cluster", content=b"{not json", headers={"content-type": "application/json"}),
           400, "bad_request")
    _error(client.post("/cluster", json={"images": []}), 422, "validation")
    _error(client.post("/cluster", json={"images": [{"filename": "a"}]}), 422, "validation")
    _error(client.post("/cluster", json={"images": ["aGk="], "extra": 1}), 422, "validation")
    _error(client.post("/cluster", json=[1, 2]), 422, "validation")
    _error(client.post("/cluster", files=files([("a.png", digit_pngs(1)[0])]), params={"top_k": 0}),
           422, "validation")
    _error(client.get("/nowhere"), 404, "not_found")


def test_top_k_is_capped_at_the_number_of_clusters(client):
    r = client.post("/cluster", files=files([("a.png", digit_pngs(1)[0])]), params={"top_k": 50})
    top = r.json()["results"][0]["top_k"]
    assert len(top) == 10
    assert abs(sum(t["probability"] for t in top) - 1) < 1e-4


def test_unknown_model_is_404_and_a_missing_choice_is_400(tmp_path_factory, client, model):
    assert "served models" in _error(client.post("/cluster?model=nope", files=files([("a.png", b"x")])),
                                     404, "not_found")
    r = client.post(f"/cluster?model={model.name}", files=files([("a.png", digit_pngs(1)[0])]))
    assert r.status_code == 200
    # two models in one repository: the client must choose
    repo = tmp_path_factory.mktemp("two-models")
    for name in ("first", "second"):
        copy_model(model.repository, model.name, repo, name)
    with gateway(repo) as two:
        assert "choose one" in _error(two.post("/cluster", files=files([("a.png", digit_pngs(1)[0])])),
                                      400, "bad_request")
        assert two.post("/cluster?model=second", files=files([("a.png", digit_pngs(1)[0])])).status_code == 200
        assert {m["name"] for m in two.get("/models").json()["models"]} == {"first", "second"}


def test_size_limits_are_413(model):
    digits = digit_pngs(5)
    with gateway(model.repository, max_images_per_request=4, queue_size=8, max_image_bytes=4000,
                 max_image_pixels=10_000, max_request_bytes=60_000) as c:
        assert "at most 4" in _error(c.post("/cluster", files=files([(f"{i}.png", d) for i, d in enumerate(digits)])),
                                     413, "too_large")
        images = [base64.b64encode(d).decode() for d in digits]
        _error(c.post("/cluster", json={"images": images}), 413, "too_large")
        noisy = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80), dtype=np.uint8)))
        assert len(noisy) > 4000
        msg = _error(c.post("/cluster", files=files([("ok.png", digits[0]), ("noisy.png", noisy)])), 413, "too_large")
        assert "noisy.png" in msg and "bytes" in msg
        _error(c.post("/cluster", json={"images": [base64.b64encode(noisy).decode()]}), 413, "too_large")
        big = encode(Image.new("L", (200, 100)))  # small file, 20 000 pixels
        msg = _error(c.post("/embed", files=files([("big.png", big)])), 413, "too_large")
        assert "big.png" in msg and "pixels" in msg
        _error(c.post("/cluster", content=b"x" * 70_000, headers={"content-type": "application/json"}),
               413, "too_large")
    with gateway(model.repository) as c:  # default limits: a header claiming 2 gigapixels is refused unread
        bomb = files([("ok.png", digits[0]), ("bomb.png", png_header_only(50_000, 40_000))])
        msg = _error(c.post("/cluster", files=bomb), 413, "too_large")
        assert "bomb.png" in msg


def test_api_key_protects_everything_but_liveness_and_the_page_files(model):
    """Issue 24: with a key set, /docs, /openapi.json and /readyz (which names the models) were open."""
    pngs = files([("a.png", digit_pngs(1)[0])])
    with gateway(model.repository, api_key="s3cret") as c:
        for method, path in [("post", "/cluster"), ("post", "/embed"), ("get", "/models"), ("get", "/metrics"),
                             ("get", "/readyz"), ("get", "/openapi.json"), ("get", "/docs")]:
            kwargs = {"files": pngs} if method == "post" else {}
            refused = getattr(c, method)(path, **kwargs)
            _error(refused, 401, "unauthorized")
            assert refused.headers["www-authenticate"].startswith("Bearer")
            _error(getattr(c, method)(path, headers={"X-API-Key": "wrong"}, **kwargs), 401, "unauthorized")
            _error(getattr(c, method)(path, headers={"Authorization": "Bearer wrong"}, **kwargs), 401, "unauthorized")
            assert getattr(c, method)(path, headers={"X-API-Key": "s3cret"}, **kwargs).status_code == 200
            assert getattr(c, method)(path, headers={"Authorization": "Bearer s3cret"}, **kwargs).status_code == 200
        assert c.get("/healthz").status_code == 200  # liveness probes carry no key
        assert c.get("/").status_code == c.get("/static/app.js").status_code == 200  # the page asks for the key
        _error(c.get("/no-such-route"), 401, "unauthorized")  # nothing is learnt of the routes without it
    with gateway(model.repository, api_key="s3cret", open_docs=True) as c:
        assert c.get("/openapi.json").status_code == c.get("/docs").status_code == 200
        _error(c.get("/readyz"), 401, "unauthorized")


def test_models_health_readiness_metrics_and_docs(client, model):
    models = client.get("/models").json()
    assert models["backend"] == "embedded"
    (m,) = models["models"]
    assert m["name"] == model.name and m["method"] == "cc" and m["dataset"] == "digits"
    assert m["num_clusters"] == 10 and m["embedding_dim"] == 128 and m["ready"] is True
    assert m["input"]["channels"] == 1 and m["input"]["height"] == 16
    assert m["runtime"]["providers"][-1] == "CPUExecutionProvider"
    assert m["runtime"]["session"]["spinning"] is False and m["runtime"]["session"]["inter_op_threads"] == 1
    assert m["metadata"]["encoder"] == f"{model.name}_encoder"
    assert m["metadata"]["source_run"] == model.run.name  # the run's name, not where it lies on this host
    assert str(model.run.parent) not in client.get("/models").text
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {model.name: True}
    client.post("/cluster", files=files([("a.png", digit_pngs(1)[0])]))
    text = client.get("/metrics").text
    assert metric(text, "gateway_requests_total", endpoint="/cluster", status="200") >= 1
    assert metric(text, "gateway_request_latency_seconds_count", endpoint="/cluster") >= 1
    assert metric(text, "gateway_batch_size_count", model=model.name) >= 1
    assert "gateway_queue_depth" in text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/cluster", "/embed", "/models", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert set(paths["/cluster"]["post"]["requestBody"]["content"]) == {"multipart/form-data", "application/json"}


@pytest.mark.slow  # trains a second tiny model (about a minute on 2 busy cores); the plumbing is tested fast
def test_cohiclust_results_carry_the_tree_path(tiny_run, tmp_path_factory):
    ex = exported(tiny_run, tmp_path_factory, "cohiclust")
    items = [(f"{i}.png", d) for i, d in enumerate(digit_pngs(6))]
    reference = torch_predict(ex.run, _prepared(items))
    with gateway(ex.repository) as c:
        r = c.post("/cluster", files=files(items))
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    np.testing.assert_array_equal([x["cluster"] for x in res], reference["cluster"])
    np.testing.assert_array_equal([x["path"] for x in res], reference["path"])
