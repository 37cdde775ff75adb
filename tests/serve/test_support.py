"""Checks of the test helpers in tests/support (the export fixture, the metrics reader)."""

from __future__ import annotations

import pytest

from tests.support.serving import exported, metric


def test_export_fixture_follows_the_repository_spec(tiny_run, tmp_path_factory):
    import json

    import onnxruntime as ort

    ex = exported(tiny_run, tmp_path_factory)
    meta = json.loads((ex.repository / ex.name / "1" / "metadata.json").read_text())
    assert meta["input"] == {"name": "images", "dtype": "uint8", "channels": 1, "height": 16, "width": 16,
                             "layout": "NCHW", "crop": 1.0}
    encoder = ort.InferenceSession(str(ex.repository / meta["encoder"] / "1" / "model.onnx"))
    head = ort.InferenceSession(str(ex.repository / meta["head"] / "1" / "model.onnx"))
    assert [(i.name, i.type) for i in encoder.get_inputs()] == [("images", "tensor(uint8)")]
    assert [o.name for o in encoder.get_outputs()] == ["features"]
    assert {o.name for o in head.get_outputs()} == set(meta["outputs"]) == {"embedding", "probabilities", "cluster"}
    assert (ex.cpu_repository / ex.name / "1" / "metadata.json").is_file()


def test_metric_reader_sums_matching_samples():
    text = 'x_total{a="1",b="2"} 3.0\nx_total{a="1",b="3"} 4.0\nx_total{a="2",b="3"} 5.0\n'
    assert metric(text, "x_total", a="1") == 7.0
    assert metric(text, "x_total") == 12.0
    with pytest.raises(AssertionError):
        assert metric(text, "x_total", a="9") > 0


def test_a_shifted_version_puts_every_image_one_cluster_further(cc_model, tmp_path):
    import shutil

    from contract.metadata import ModelMetadata
    from tests.support.repository import add_shifted_version
    from tests.support.serving import digit_pngs, files, gateway

    repo = shutil.copytree(cc_model.repository, tmp_path / "repo")
    assert add_shifted_version(repo, cc_model.name) == 2
    images = [(f"{i}.png", data) for i, data in enumerate(digit_pngs(40))]
    with gateway(repo) as client:
        answers = {v: [r["cluster"] for r in client.post("/cluster", files=files(images), params={"version": v})
                       .json()["results"]] for v in (1, 2)}
    count = ModelMetadata.read(repo / cc_model.name / "1" / "metadata.json").num_clusters
    assert len(set(answers[1])) > 1 and answers[2] == [(c + 1) % count for c in answers[1]]
