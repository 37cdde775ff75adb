"""POST /v1/embeddings answers the real `openai` Python client as OpenAI's and infinity's API would."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.support.serving import digit_pngs, files, gateway

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(cc_model):
    with gateway(cc_model.repository) as c:
        yield c


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_the_openai_client_gets_the_same_embeddings_as_embed(client, cc_model):
    pngs = digit_pngs(5)
    expected = np.array([x["embedding"] for x in client.post(
        "/embed", files=files([(f"{i}.png", p) for i, p in enumerate(pngs)])).json()["results"]])
    sdk = openai.OpenAI(base_url="http://127.0.0.1/v1", api_key="not-needed", http_client=client, max_retries=0)
    # the SDK asks for base64 by default and decodes it; also plain floats, and a bare base64 input
    for fmt in (openai.NOT_GIVEN, "float"):
        answer = sdk.embeddings.create(model=cc_model.name, input=[data_uri(p) for p in pngs], encoding_format=fmt)
        got = np.array([d.embedding for d in answer.data])
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert [d.index for d in answer.data] == list(range(5)) and answer.model == cc_model.name
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == 5
    single = sdk.embeddings.create(model=cc_model.name, input=base64.b64encode(pngs[0]).decode())
    np.testing.assert_allclose(single.data[0].embedding, expected[0], atol=1e-6)
    assert [m.id for m in sdk.models.list().data] == [cc_model.name]


def test_openai_errors_are_all_or_nothing_and_name_the_image(client, cc_model):
    sdk = openai.OpenAI(base_url="http://127.0.0.1/v1", api_key="x", http_client=client, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="image 1"):
        sdk.embeddings.create(model=cc_model.name, input=[data_uri(digit_pngs(1)[0]), data_uri(b"not an image")])
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        sdk.embeddings.create(model="nope", input=[data_uri(digit_pngs(1)[0])])
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        sdk.embeddings.create(model=cc_model.name, input=[data_uri(digit_pngs(1)[0])], dimensions=7)
    r = client.post("/v1/embeddings", json={"model": cc_model.name, "input": [], "encoding_format": "float"})
    assert r.status_code == 400


def test_a_request_as_the_openai_client_writes_it(client, cc_model):
    """The body and headers openai 1.x+ sends (captured from its documented shape), without the SDK."""
    body = {"input": [data_uri(digit_pngs(1)[0])], "model": cc_model.name, "encoding_format": "base64"}
    headers = {"Authorization": "Bearer sk-unused", "User-Agent": "OpenAI/Python 1.0", "X-Stainless-Lang": "python"}
    r = client.post("/v1/embeddings", json=body, headers=headers)
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    assert item["object"] == "embedding" and vector.shape == (128,)
    assert np.linalg.norm(vector) == pytest.approx(1, abs=1e-5)
