"""The fp32 and int8 models of one run served side by side: the gateway (embedded onnxruntime, and the real CPU
Triton), the Python client and the bulk job choose the precision, answer with the QDQ graph, and agree with the
fp32 model as the export recorded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from contract.metadata import ModelMetadata
from contract.names import AGREEMENT_SAMPLE_FILE, METADATA_FILE, PRECISIONS
from export import agreement, parity
from serve.bulk.job import BulkError, BulkOptions, resolve_model
from serve.client import Client, GatewayClientError
from serve.schemas import Precision
from tests.support.images import encode
from tests.support.serving import exported, gateway
from tests.support.tritonserver import TritonServer, triton_available

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tiny_run, tmp_path_factory):
    return exported(tiny_run, tmp_path_factory, "cc", precisions=("fp32", "int8"))


@pytest.fixture(scope="module")
def judged(model):
    """The images the export judged the int8 model on (as PNGs), and the agreement it recorded."""
    version = model.repository / model.names["int8"] / "1"
    images, reference, _ = agreement.read_sample(version / AGREEMENT_SAMPLE_FILE)
    recorded = ModelMetadata.read(version / METADATA_FILE).agreement
    return images, [encode(Image.fromarray(image[0], "L")) for image in images], reference, recorded


def answers(client: Client, pngs: list[bytes], **choice) -> dict[str, np.ndarray]:
    """cluster, probabilities (all of them, from top_k) and embedding of every image, through the gateway."""
    results = client.cluster(pngs, top_k=10, **choice)
    probabilities = np.zeros((len(results), 10), np.float32)
    for row, result in zip(probabilities, results, strict=True):
        row[[t.cluster for t in result.top_k]] = [t.probability for t in result.top_k]
    return {"cluster": np.array([r.cluster for r in results]), "probabilities": probabilities,
            "embedding": client.embed(pngs, **choice).embeddings, "models": {r.model for r in results}}


def check_recorded_agreement(client: Client, model, judged) -> None:
    images, pngs, reference, recorded = judged
    fp32 = answers(client, pngs, model=model.names["fp32"])
    int8 = answers(client, pngs, model=model.names["fp32"], precision="int8")
    assert (fp32.pop("models"), int8.pop("models")) == ({model.names["fp32"]}, {model.names["int8"]})
    np.testing.assert_array_equal(fp32["cluster"], reference["cluster"])  # the fp32 model is the export's reference
    served = agreement.measure(fp32, int8)
    assert served["cluster_agreement"] == pytest.approx(recorded["cluster_agreement"], abs=1.01 / len(images))
    assert served["embedding_cosine_mean"] == pytest.approx(recorded["embedding_cosine_mean"], abs=1e-4)
    assert served["embedding_cosine_min"] == pytest.approx(recorded["embedding_cosine_min"], abs=1e-3)
    # and what answered is the QDQ graph itself
    graph, _ = parity.onnx_outputs(model.repository / f"{model.names['int8']}_encoder" / "1" / "model.onnx",
                                   model.repository / f"{model.names['int8']}_head" / "1" / "model.onnx", images)
    assert np.mean(graph["cluster"] == int8["cluster"]) >= 1 - 1.01 / len(images)
    np.testing.assert_allclose(int8["embedding"], graph["embedding"], atol=1e-4)


def test_the_embedded_gateway_serves_both_and_int8_agrees_as_recorded(model, judged):
    with gateway(model.repository) as http, Client(http=http, batch_size=64) as client:
        listed = {m["name"]: m for m in client.models()["models"]}
        assert {n: (m["precision"], m["runtime"]["providers"]) for n, m in listed.items()} == {
            model.names["fp32"]: ("fp32", ["CPUExecutionProvider"]),
            model.names["int8"]: ("int8", ["CPUExecutionProvider"])}
        assert listed[model.names["int8"]]["agreement"]["cluster_agreement"] == judged[3]["cluster_agreement"]
        assert listed[model.names["fp32"]]["agreement"] is None
        card = client.card(model.names["fp32"], precision="int8")
        assert (card["name"], card["precision"], card["agreement"]["num_images"]) == (model.names["int8"], "int8",
                                                                                       512)
        assert card["metadata"]["quantization"]["parts"] == ["encoder"]
        check_recorded_agreement(client, model, judged)


def test_choosing_a_precision_that_is_not_served(model):
    with gateway(model.repository) as http, Client(http=http) as client:
        with pytest.raises(GatewayClientError) as missing:
            client.cluster(judged_png(), model=model.names["fp32"], precision="fp16")
        assert missing.value.status == 404 and "not served at fp16" in missing.value.message
        assert "cc_digits (fp32), cc_digits_int8 (int8)" in missing.value.message
        # the model may be named at any precision: the precision asked for wins
        assert client.cluster(judged_png(), model=model.names["int8"], precision="fp32")[0].model == \
            model.names["fp32"]
        # with no model named, the only int8 model; with neither, two models are one too many
        assert client.cluster(judged_png(), precision="int8")[0].model == model.names["int8"]
        with pytest.raises(GatewayClientError) as ambiguous:
            client.cluster(judged_png())
        assert ambiguous.value.status == 400
        assert http.post("/cluster", params={"precision": "int4"}, files=[("files", ("a.png", judged_png()[0]))]
                         ).status_code == 422


def judged_png() -> list[bytes]:
    return [encode(Image.new("L", (16, 16), 40))]


def test_the_query_parameter_lists_the_precisions_of_the_contract():
    assert Precision.__args__ == PRECISIONS


REASON = triton_available()


@pytest.mark.triton
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_the_cpu_triton_serves_both_and_int8_agrees_as_recorded(model, judged, tmp_path):
    with TritonServer(model.cpu_repository, tmp_path / "triton.log") as server, \
            gateway(model.cpu_repository, backend="triton", triton_url=server.grpc_url, triton_timeout_s=10.0,
                    max_wait_ms=2.0) as http, Client(http=http, batch_size=64) as client:
        listed = {m["name"]: m["precision"] for m in client.models()["models"]}
        assert listed == {model.names["fp32"]: "fp32", model.names["int8"]: "int8"}
        check_recorded_agreement(client, model, judged)
    log = (tmp_path / "triton.log").read_text()
    assert f"{model.names['int8']}_encoder" in log and "CPUExecutionProvider" in log


def test_the_bulk_job_chooses_the_precision(model, judged, tmp_path):
    with pytest.raises(BulkError, match="not served at fp16"):
        resolve_model(BulkOptions(source="x", output="y", model_repository=str(model.repository),
                                  model=model.names["fp32"], precision="fp16"))
    with pytest.raises(BulkError, match="unknown precision"):
        BulkOptions(source="x", output="y", precision="int4")
    images, pngs, _, _ = judged
    folder = tmp_path / "images"
    folder.mkdir()
    for i, data in enumerate(pngs[:64]):
        (folder / f"{i:03d}.png").write_bytes(data)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "serve.bulk", str(folder), "--model-repository",
                           str(model.repository), "--model", model.names["fp32"], "--precision", "int8", "--output",
                           str(out), "--actors", "1", "--num-cpus", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = pads.dataset(out / "shards", format="parquet").to_table().sort_by("index")
    graph, _ = parity.onnx_outputs(model.repository / f"{model.names['int8']}_encoder" / "1" / "model.onnx",
                                   model.repository / f"{model.names['int8']}_head" / "1" / "model.onnx", images[:64])
    np.testing.assert_array_equal(rows.column("cluster").to_numpy(), graph["cluster"])
    summary = (out / "summary.json").read_text()
    assert f'"model": "{model.names["int8"]}"' in summary and '"precision": "int8"' in summary
