"""Export: ONNX graphs per method pass parity, batch dynamically, and land in a valid Triton repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from contract.metadata import ExtraOutput
from contract.names import REQUIRED_OUTPUTS
from export import parity, tensorrt
from export.__main__ import main as export_main
from export.naming import check_name, model_name
from export.onnx_export import graph_specs
from export.pipeline import check_head_outputs, export_run
from export.triton import read_config, triton_type
from tests.support.runs import digit_images
from train.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]
METHOD_NAMES = sorted(METHODS)
METADATA_KEYS = {"name", "method", "dataset", "num_clusters", "input", "outputs", "embedding_dim", "class_names",
                 "encoder", "head", "parity", "source_run", "exported_at", "finished", "epoch", "schema_version",
                 "version"}


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """exported(method) -> ExportResult of the tiny run, written to a GPU and a CPU repository."""
    root = tmp_path_factory.mktemp("export")
    cache = {}

    def make(method: str):
        if method not in cache:
            cache[method] = export_run(tiny_run(method), root / "gpu", root / "cpu", log=lambda msg: None)
        return cache[method]

    return make


@pytest.fixture(scope="module")
def digits():
    return digit_images(64, 16)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_export_passes_parity(method, exported):
    result = exported(method)
    report = result.parity
    assert report["passed"], report["problems"]
    assert report["num_images"] == 64 and report["batch_sizes"] == [1, 17, 64]
    assert report["outputs"]["embedding"]["max_abs_diff"] <= 1e-4
    assert report["outputs"]["cluster"]["mismatches"] == 0
    assert "CPUExecutionProvider" in report["providers"]
    for flavour, ensemble in result.repositories.items():
        assert json.loads((ensemble / "parity.json").read_text()) == json.loads(json.dumps(report)), flavour


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_onnx_files_are_checked_self_contained_and_batch_dynamically(method, exported, tiny_run, digits):
    from train.checkpoint import load_run

    result = exported(method)
    repo = result.repositories["onnxruntime"].parent.parent
    encoder, head = repo / f"{result.name}_encoder/1/model.onnx", repo / f"{result.name}_head/1/model.onnx"
    for path in (encoder, head):
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == 17
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        assert sorted(os.listdir(path.parent)) == ["model.onnx"]  # no external-data side files
    model = load_run(tiny_run(method)).model
    for batch in (1, 17):
        reference = parity.torch_outputs(model, digits[:batch])
        got, _ = parity.onnx_outputs(encoder, head, digits[:batch])
        assert set(got) == set(reference)
        for name, value in reference.items():
            assert got[name].shape == value.shape, name
            if np.issubdtype(value.dtype, np.floating):
                np.testing.assert_allclose(got[name], value, atol=1e-4, err_msg=name)
            else:
                assert got[name].dtype == np.int64 and (got[name] == value).all(), name
        assert np.allclose(np.linalg.norm(got["embedding"], axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_configs_parse_and_match_the_graphs(method, exported):
    result = exported(method)
    name = result.name
    for flavour, version_dir in result.repositories.items():
        repo, ensemble = version_dir.parent.parent, version_dir.parent
        for model in (name, f"{name}_encoder", f"{name}_head"):
            config = text_format.Parse((repo / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
            assert config.name == model and config.max_batch_size == 64
            assert (repo / model / "1").is_dir()
        for part in ("encoder", "head"):
            config = read_config(repo / f"{name}_{part}")
            inputs, outputs = graph_specs(repo / f"{name}_{part}/1/model.onnx")
            for declared, graph in ((config.input, inputs), (config.output, outputs)):
                assert [t.name for t in declared] == [s.name for s in graph]
                for tensor, spec in zip(declared, graph, strict=True):
                    assert model_config_pb2.DataType.Name(tensor.data_type) == triton_type(spec)
                    assert list(tensor.dims) == (list(spec.shape[1:]) or [1])  # no batch dimension
                    assert tensor.HasField("reshape") == (len(spec.shape) == 1)
            # NVIDIA's starting point: dynamic_batching {} without preferred sizes or a queue delay
            assert config.HasField("dynamic_batching") and not config.dynamic_batching.preferred_batch_size
            assert config.dynamic_batching.max_queue_delay_microseconds == 0
            assert [w.batch_size for w in config.model_warmup] == [1, 64]  # warm-up at 1 and at the maximum
            assert all(w.inputs[config.input[0].name].zero_data for w in config.model_warmup)
            assert config.version_policy.latest.num_versions == 2
            kind = model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)
            if flavour == "python":
                assert (config.backend, kind) == ("python", "KIND_CPU")
                assert (repo / f"{name}_{part}/1/model.py").is_file()
            else:
                assert (config.platform, kind) == ("onnxruntime_onnx", "KIND_GPU")
        ensemble_config = read_config(ensemble)
        assert ensemble_config.platform == "ensemble"
        assert [i.name for i in ensemble_config.input] == ["images"]
        assert model_config_pb2.DataType.Name(ensemble_config.input[0].data_type) == "TYPE_UINT8"
        first, second = ensemble_config.ensemble_scheduling.step
        assert (first.model_name, dict(first.input_map), dict(first.output_map)) == \
            (f"{name}_encoder", {"images": "images"}, {"features": "features"})
        assert second.model_name == f"{name}_head" and dict(second.input_map) == {"features": "features"}
        outputs = [o.name for o in ensemble_config.output]
        assert outputs[:3] == ["embedding", "probabilities", "cluster"]
        assert dict(second.output_map) == {o: o for o in outputs}


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_metadata_describes_the_model(method, exported, tiny_run):
    result = exported(method)
    meta = json.loads((result.repositories["onnxruntime"] / "metadata.json").read_text())
    assert METADATA_KEYS <= set(meta)
    assert meta["name"] == result.name == model_name(method, "digits")
    assert (meta["method"], meta["dataset"], meta["num_clusters"]) == (method, "digits", 10)
    assert meta["input"] == {"name": "images", "dtype": "uint8", "channels": 1, "height": 16, "width": 16,
                             "layout": "NCHW", "crop": 1.0}
    assert meta["outputs"]["embedding"]["shape"] == [-1, meta["embedding_dim"]]
    assert set(meta["outputs"]) == set(result.parity["outputs"])  # every head output, extras included
    extras = [name for name in meta["outputs"] if name not in REQUIRED_OUTPUTS]  # CoHiClust: path
    assert [e["name"] for e in meta["extra_outputs"]] == extras and all(e["description"] for e in meta["extra_outputs"])
    width = meta["outputs"]["probabilities"]["shape"][1]  # CoHiClust: one per tree leaf
    assert width >= 10
    assert meta["outputs"]["probabilities"] == {"dtype": "float32", "shape": [-1, width], "triton_dims": [width]}
    assert meta["outputs"]["cluster"] == {"dtype": "int64", "shape": [-1], "triton_dims": [1]}
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert (meta["encoder"], meta["head"]) == (f"{result.name}_encoder", f"{result.name}_head")
    assert meta["parity"]["passed"] and Path(meta["source_run"]) == tiny_run(method).resolve()
    assert meta["finished"] is True and meta["epoch"] == 2
    cpu_meta = json.loads((result.repositories["python"] / "metadata.json").read_text())
    assert cpu_meta["flavour"] == "python" and meta["flavour"] == "onnxruntime"


def test_tampered_head_fails_parity(exported, tiny_run, digits, tmp_path):
    from train.checkpoint import load_run

    result = exported("cc")
    repo = result.repositories["onnxruntime"].parent.parent
    encoder, head = repo / f"{result.name}_encoder/1/model.onnx", tmp_path / "head.onnx"
    model = onnx.load(str(repo / f"{result.name}_head/1/model.onnx"))
    weight = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2)
    values = onnx.numpy_helper.to_array(weight)
    weight.CopyFrom(onnx.numpy_helper.from_array(values + 0.05 * np.abs(values).max(), weight.name))
    onnx.save(model, str(head))
    reference = parity.torch_outputs(load_run(tiny_run("cc")).model, digits)
    assert parity.check_onnx(encoder, repo / f"{result.name}_head/1/model.onnx", digits, reference)["passed"]
    report = parity.check_onnx(encoder, head, digits, reference)
    assert not report["passed"]
    assert report["outputs"]["embedding"]["max_abs_diff"] > 1e-4
    with pytest.raises(parity.ParityError, match="embedding: max"):
        parity.check(report, "tampered")


def test_cli_exports_latest_finished_run_and_refuses_failed_parity(tiny_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run("cc"), runs / "cc-digits", ignore=shutil.ignore_patterns("tensorboard"))
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / "last.pt").write_bytes(b"")
    out, cpu = tmp_path / "repo", tmp_path / "repo_cpu"
    code = export_main(["--runs-root", str(runs), "--output", str(out), "--cpu-output", str(cpu),
                        "--name", "digits_cc", "--max-batch", "32"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"using the latest finished run: {runs / 'cc-digits'}" in printed
    assert "parity PASSED" in printed
    assert read_config(out / "digits_cc").max_batch_size == 32
    assert (cpu / "digits_cc_head/1/model.py").is_file()
    # a tolerance nothing can meet: non-zero exit, the numbers printed, nothing written
    code = export_main(["--run", str(runs / "cc-digits"), "--output", str(tmp_path / "bad"),
                        "--cpu-output", "none", "--tolerance", "-1", "--name", "cc_digits"])
    captured = capsys.readouterr()
    assert code == 1 and "parity FAILED" in captured.out and "parity check failed" in captured.err
    assert not (tmp_path / "bad" / "cc_digits").exists()


def test_queue_delay_instances_versions_and_a_cpu_kind_are_options(tiny_run, tmp_path, capsys):
    out = tmp_path / "repo"
    code = export_main(["--run", str(tiny_run("cc")), "--output", str(out), "--cpu-output", "none",
                        "--output-kind", "cpu", "--queue-delay-us", "250", "--instances", "3",
                        "--serve-versions", "0"])
    assert code == 0, capsys.readouterr().err
    for part in ("encoder", "head"):
        config = read_config(out / f"cc_digits_{part}")
        assert (config.platform, model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)) == \
            ("onnxruntime_onnx", "KIND_CPU")
        assert config.instance_group[0].count == 3
        assert config.dynamic_batching.max_queue_delay_microseconds == 250
        assert config.version_policy.HasField("all")
    assert json.loads((out / "cc_digits" / "1" / "metadata.json").read_text())["flavour"] == "onnxruntime_cpu"


def test_export_needs_no_data_set(tmp_path, capsys):
    from tests.support.runs import digit_folder, tiny_config
    from train.trainer import train

    data = digit_folder(tmp_path / "photos")
    run = tmp_path / "runs" / "cc-folder"
    train(tiny_config("cc", run, dataset="folder", data_dir=str(data), image_size=16, batch_size=32))
    shutil.rmtree(data)  # the parity check uses the run's own sample
    code = export_main(["--run", str(run), "--output", str(tmp_path / "repo"), "--cpu-output", "none"])
    assert code == 0, capsys.readouterr().err
    assert "parity PASSED" in capsys.readouterr().out
    meta = json.loads((tmp_path / "repo" / "cc_folder" / "1" / "metadata.json").read_text())
    assert meta["parity"]["images"] == "parity_sample.npz: 64 training images" and meta["finished"] is True


def test_an_unfinished_run_is_refused_unless_allowed(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run("cc"), tmp_path / "run")
    (run / "results.json").unlink()  # as a run killed mid-training leaves it
    args = ["--run", str(run), "--output", str(tmp_path / "repo"), "--cpu-output", "none"]
    assert export_main(args) == 2
    assert "--allow-unfinished" in capsys.readouterr().err and not (tmp_path / "repo").exists()
    assert export_main([*args, "--allow-unfinished"]) == 0
    meta = json.loads((tmp_path / "repo" / "cc_digits" / "1" / "metadata.json").read_text())
    assert meta["finished"] is False and meta["epoch"] == 2
    card = json.loads((tmp_path / "repo" / "cc_digits" / "1" / "card.json").read_text())
    assert card["finished"] is False and "UNFINISHED" in (tmp_path / "repo" / "cc_digits" / "1" / "card.md").read_text()


def test_a_model_of_another_run_becomes_its_next_version(tiny_run, tmp_path, capsys):
    first, second = (shutil.copytree(tiny_run("cc"), tmp_path / name) for name in ("first", "second"))
    repo = tmp_path / "repo"
    assert export_main(["--run", str(first), "--output", str(repo), "--cpu-output", "none"]) == 0
    assert export_main(["--run", str(second), "--output", str(repo), "--cpu-output", "none"]) == 0
    assert "cc_digits version 2" in capsys.readouterr().out
    sources = [json.loads((repo / "cc_digits" / v / "metadata.json").read_text())["source_run"] for v in "12"]
    assert sources == [str(first.resolve()), str(second.resolve())]
    assert [json.loads((repo / "cc_digits" / v / "card.json").read_text())["version"] for v in "12"] == [1, 2]


def test_a_checkpoint_whose_weights_are_not_its_methods_is_a_clear_error(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run("cc"), tmp_path / "run")
    state = torch.load(run / "last.pt", weights_only=True)
    state["method"] = "drc"  # CC's weights under DRC's name
    torch.save(state, run / "last.pt")
    assert export_main(["--run", str(run), "--output", str(tmp_path / "repo"), "--cpu-output", "none"]) == 2
    err = capsys.readouterr().err
    assert "weights do not fit a drc model" in err and "Traceback" not in err


def test_model_names_are_triton_names():
    assert model_name("cc", "cifar10") == "cc_cifar10"
    assert model_name("CoHiClust", "imagenet-dogs") == "cohiclust_imagenet_dogs"
    assert model_name("propos", "tiny-imagenet") == "propos_tiny_imagenet"
    assert check_name("cc_digits") == "cc_digits"
    with pytest.raises(ValueError, match=r"\[a-z0-9_\]"):
        check_name("cc-digits")


@pytest.mark.skipif(tensorrt.missing_requirements() is None, reason="TensorRT and a GPU are here")
def test_engine_trt_without_tensorrt_fails_with_instructions(tiny_run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "export", "--engine", "trt", "--run", str(tiny_run("cc")),
                           "--output", str(tmp_path / "repo"), "--cpu-output", "none"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "cannot build TensorRT engines" in proc.stderr and "tensorrt" in proc.stderr
    assert "python -m export.tensorrt --repository /models" in proc.stderr
    assert not (tmp_path / "repo").exists()  # nothing exported, nothing faked


@pytest.mark.skipif(tensorrt.missing_requirements() is None, reason="TensorRT and a GPU are here")
def test_in_container_builder_without_tensorrt_fails_and_leaves_repository(exported, capsys):
    repo = exported("cc").repositories["onnxruntime"].parent.parent
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    assert tensorrt.main(["--repository", str(repo)]) == 2
    assert "cannot build TensorRT engines" in capsys.readouterr().err
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before
    assert not list(repo.rglob("model.plan"))


def test_parity_compare_flags_integer_and_float_differences():
    ref = {"embedding": np.zeros((4, 2), np.float32), "probabilities": np.array([[0.9, 0.1]] * 4, np.float32),
           "cluster": np.zeros(4, np.int64)}
    assert parity.compare(ref, {k: v.copy() for k, v in ref.items()})["passed"]
    moved = {**ref, "cluster": np.array([0, 1, 0, 0])}
    report = parity.compare(ref, moved)
    assert not report["passed"] and report["outputs"]["cluster"]["mismatches"] == 1
    assert not parity.compare(ref, {**ref, "embedding": ref["embedding"] + np.nan})["passed"]
    assert not parity.compare(ref, {"embedding": ref["embedding"]})["passed"]  # missing outputs
    assert torch.__version__  # torch is the reference side of every other test


def test_a_head_must_give_exactly_the_extra_outputs_its_method_declares():
    head = ["embedding", "probabilities", "cluster", "path"]
    check_head_outputs("cohiclust", head, (ExtraOutput("path", "int64", (4,)),))
    with pytest.raises(ValueError, match=r"gives \['path'\] .* declares \[\]"):
        check_head_outputs("undeclared", head, ())
    with pytest.raises(ValueError, match=r"gives \[\] .* declares \['path'\]"):
        check_head_outputs("missing", head[:3], (ExtraOutput("path", "int64", (4,)),))
