"""The TensorRT repository rewrite, on CPU: config rewrite, engine stamps, metadata merge, up-to-date check,
plans built at each model's precision and judged as it needs (parity for fp32, agreement for int8 and fp16).

The plans come from `CPUEngines`, a stand-in for export.trt_build.TensorRTEngines with the same three
methods: its "plan" is the ONNX file itself, its I/O the ONNX graph's, running it is onnxruntime's.
Everything export/tensorrt.py does around the engines is the real code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from export import parity
from export.onnx_export import graph_specs
from export.tensorrt import PlanOptions, convert_repository, up_to_date, wanted_stamp
from export.triton import read_config
from tests.support.serving import exported


class CPUEngines:
    version = "stand-in-10.5"
    gpu = "no GPU (CPU stand-in)"

    def __init__(self, tmp: Path, rename_output: bool = False, fail_parity: bool = False) -> None:
        self.tmp = tmp
        self.built: list[str] = []
        self.sources: dict[str, tuple[str, str]] = {}  # model -> (ONNX file built from, precision)
        self.rename_output = rename_output
        self.fail_parity = fail_parity

    def _file(self, plan: bytes, name: str) -> Path:
        path = self.tmp / name
        path.write_bytes(plan)
        return path

    def build(self, onnx_path, options, log):
        self.built.append(onnx_path.parent.parent.name)
        self.sources[onnx_path.parent.parent.name] = (onnx_path.name, options.precision)
        return onnx_path.read_bytes(), {"precision": options.precision, "max_batch": options.max_batch,
                                        "opt_batch": options.opt_batch, "workspace_mb": options.workspace_mb}

    def specs(self, plan):
        inputs, outputs = graph_specs(self._file(plan, "specs.onnx"))
        if self.rename_output:
            outputs = [type(outputs[0])("renamed", outputs[0].dtype, outputs[0].shape), *outputs[1:]]
        return inputs, outputs

    def run(self, encoder_plan, head_plan, images, max_batch):
        outputs, _ = parity.onnx_outputs(self._file(encoder_plan, "e.onnx"), self._file(head_plan, "h.onnx"), images,
                                         batch=max_batch)
        if self.fail_parity:  # a plan that is wrong: another cluster for every image, embeddings turned around
            outputs = {**outputs, "embedding": -outputs["embedding"], "cluster": (outputs["cluster"] + 1) % 10}
        return outputs


@pytest.fixture
def repository(tiny_run, tmp_path_factory, tmp_path):
    ex = exported(tiny_run, tmp_path_factory, "cc")
    repo = tmp_path / "repo"
    shutil.copytree(ex.repository, repo)
    return repo, ex.name


def test_conversion_rewrites_configs_stamps_plans_and_merges_metadata(repository, tmp_path):
    repo, name = repository
    engines = CPUEngines(tmp_path)
    reports = convert_repository(repo, PlanOptions(max_batch=32), engines=engines, log=lambda msg: None)
    assert reports[name]["passed"] and sorted(engines.built) == [f"{name}_encoder", f"{name}_head"]
    for part in ("encoder", "head"):
        model_dir = repo / f"{name}_{part}"
        config = read_config(model_dir)
        assert (config.platform, config.default_model_filename, config.max_batch_size) == \
            ("tensorrt_plan", "model.plan", 32)
        assert mc.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
        inputs, outputs = graph_specs(model_dir / "1" / "model.onnx")
        assert [t.name for t in config.output] == [s.name for s in outputs]
        assert [t.name for t in config.input] == [s.name for s in inputs]
        stamp = json.loads((model_dir / "1" / "model.plan.json").read_text())
        assert stamp["tensorrt_version"] == "stand-in-10.5" and stamp["max_batch"] == 32 and stamp["opt_batch"] == 16
        assert (model_dir / "1" / "model.plan").read_bytes() == (model_dir / "1" / "model.onnx").read_bytes()
    assert read_config(repo / name).max_batch_size == 32
    meta = json.loads((repo / name / "1" / "metadata.json").read_text())
    assert meta["flavour"] == "tensorrt" and meta["max_batch_size"] == 32
    assert set(meta["tensorrt"]["plans"]) == {f"{name}_encoder", f"{name}_head"}
    assert meta["parity"]["tensorrt"]["passed"] and meta["parity"]["passed"]  # the ONNX parity is kept
    assert json.loads((repo / name / "1" / "parity.json").read_text())["tensorrt"]["passed"]


def _add_version(repo: Path, name: str, version: int) -> None:
    """Version `version` of every part of the model, a copy of version 1 (as a second export would add)."""
    from contract.metadata import ModelMetadata

    for model in (name, f"{name}_encoder", f"{name}_head"):
        shutil.copytree(repo / model / "1", repo / model / str(version))
    meta_file = repo / name / str(version) / "metadata.json"
    ModelMetadata.read(meta_file).replace(version=version).write(meta_file)


def test_every_version_gets_plans_and_keeps_its_serving_settings(repository, tmp_path):
    repo, name = repository
    _add_version(repo, name, 2)
    engines = CPUEngines(tmp_path)
    convert_repository(repo, engines=engines, log=lambda msg: None)
    assert sorted(engines.built) == sorted([f"{name}_encoder", f"{name}_head"] * 2)
    for part in ("encoder", "head"):
        assert all((repo / f"{name}_{part}" / v / "model.plan").is_file() for v in "12")
        config = read_config(repo / f"{name}_{part}")
        assert config.version_policy.latest.num_versions == 2 and config.instance_group[0].count == 1
        assert [w.batch_size for w in config.model_warmup] == [1, 64]
    for version in "12":
        meta = json.loads((repo / name / version / "metadata.json").read_text())
        assert meta["flavour"] == "tensorrt" and meta["tensorrt"]["parity"]["passed"]


def test_up_to_date_plans_are_kept_and_changed_settings_rebuild(repository, tmp_path):
    repo, name = repository
    convert_repository(repo, engines=CPUEngines(tmp_path), log=lambda msg: None)
    again = CPUEngines(tmp_path)
    convert_repository(repo, engines=again, log=lambda msg: None)
    assert again.built == []  # same GPU, TensorRT, ONNX file and settings
    convert_repository(repo, PlanOptions(opt_batch=16), engines=again, log=lambda msg: None)
    assert len(again.built) == 2
    forced = CPUEngines(tmp_path)
    convert_repository(repo, PlanOptions(opt_batch=16, force=True), engines=forced, log=lambda msg: None)
    assert len(forced.built) == 2
    plan = repo / f"{name}_head" / "1" / "model.plan"
    wanted = wanted_stamp(forced, plan.with_name("model.onnx"), PlanOptions(max_batch=64, opt_batch=16))
    assert up_to_date(plan, wanted)
    assert not up_to_date(plan, {**wanted, "gpu": "another GPU"})
    plan.with_name("model.plan.json").unlink()
    assert not up_to_date(plan, wanted)


def test_an_engine_whose_io_differs_from_the_graph_is_refused(repository, tmp_path):
    repo, name = repository
    before = read_config(repo / f"{name}_encoder")
    with pytest.raises(RuntimeError, match="would not connect"):
        convert_repository(repo, engines=CPUEngines(tmp_path, rename_output=True), log=lambda msg: None)
    assert read_config(repo / f"{name}_encoder") == before  # the config was not rewritten


def test_failed_plan_parity_raises_and_is_recorded(repository, tmp_path):
    repo, name = repository
    with pytest.raises(parity.ParityError, match="TensorRT plan vs PyTorch"):
        convert_repository(repo, engines=CPUEngines(tmp_path, fail_parity=True), log=lambda msg: None)
    meta = json.loads((repo / name / "1" / "metadata.json").read_text())
    assert meta["tensorrt"]["parity"]["passed"] is False


def test_plan_options_fill_the_batches_from_the_config_and_refuse_an_opt_above_the_max(repository, tmp_path):
    assert (PlanOptions().for_max_batch(64).max_batch, PlanOptions().for_max_batch(64).opt_batch) == (64, 32)
    assert PlanOptions(max_batch=8).for_max_batch(64).opt_batch == 4 and PlanOptions().for_max_batch(1).opt_batch == 1
    repo, name = repository
    engines = CPUEngines(tmp_path)
    with pytest.raises(ValueError, match=r"opt batch \(16\) <= max batch \(8\)"):
        convert_repository(repo, PlanOptions(max_batch=8, opt_batch=16), engines=engines, log=lambda msg: None)
    assert engines.built == [] and read_config(repo / name).max_batch_size == 64


@pytest.fixture
def precisions(tiny_run, tmp_path_factory, tmp_path):
    """A copy of a repository holding the tiny CC run at fp32 and int8, plus its fp16 model."""
    from export.pipeline import PrecisionOptions, export_run

    ex = exported(tiny_run, tmp_path_factory, "cc", precisions=("fp32", "int8"))
    repo = tmp_path / "repo"
    shutil.copytree(ex.repository, repo)
    export_run(ex.run, repo, None, log=lambda msg: None, precision=PrecisionOptions("fp16"))
    return repo, ex.names["fp32"]


def test_each_model_gets_plans_at_its_precision_judged_by_agreement_below_fp32(precisions, tmp_path):
    repo, name = precisions
    engines = CPUEngines(tmp_path)
    reports = convert_repository(repo, engines=engines, log=lambda msg: None)
    assert engines.sources == {
        f"{name}_encoder": ("model.onnx", "fp32"), f"{name}_head": ("model.onnx", "fp32"),
        f"{name}_int8_encoder": ("model.tensorrt.onnx", "int8"), f"{name}_int8_head": ("model.onnx", "fp32"),
        f"{name}_fp16_encoder": ("model.onnx", "fp16"), f"{name}_fp16_head": ("model.onnx", "fp16")}
    assert "tolerance" in reports[name] and "cluster_agreement" not in reports[name]  # fp32: parity with PyTorch
    for model in (f"{name}_int8", f"{name}_fp16"):
        report = reports[model]
        assert report["passed"] and report["num_images"] == 512 and report["precision"] == model.rsplit("_", 1)[1]
        meta = json.loads((repo / model / "1" / "metadata.json").read_text())
        assert meta["flavour"] == "tensorrt" and meta["tensorrt"]["agreement"]["cluster_agreement"] == \
            report["cluster_agreement"]
        assert json.loads((repo / model / "1" / "parity.json").read_text())["tensorrt"]["passed"]
        stamp = json.loads((repo / f"{model}_encoder" / "1" / "model.plan.json").read_text())
        assert stamp["precision_requested"] == meta["precision"]
    # the stand-in's int8 "plan" is the TensorRT encoding run by onnxruntime: the export's own figures again
    int8 = json.loads((repo / f"{name}_int8" / "1" / "metadata.json").read_text())
    assert int8["tensorrt"]["agreement"]["cluster_agreement"] == pytest.approx(
        int8["quantization"]["tensorrt_encoding"]["cluster_agreement"], abs=1 / 512)


def test_plans_too_far_from_the_fp32_graph_are_refused_with_their_figures(precisions, tmp_path):
    from export.agreement import AgreementTooLow

    repo, name = precisions
    with pytest.raises(AgreementTooLow, match=r"int8 plans\) is too far from the fp32 graph: cluster agreement"):
        convert_repository(repo, names=[f"{name}_int8"], engines=CPUEngines(tmp_path, fail_parity=True),
                           log=lambda msg: None)
    meta = json.loads((repo / f"{name}_int8" / "1" / "metadata.json").read_text())
    assert meta["tensorrt"]["agreement"]["passed"] is False and meta["tensorrt"]["agreement"]["cluster_agreement"] < 0.5


def test_an_int8_encoder_without_its_tensorrt_encoding_is_not_built(precisions, tmp_path):
    repo, name = precisions
    (repo / f"{name}_int8_encoder" / "1" / "model.tensorrt.onnx").unlink()
    engines = CPUEngines(tmp_path)
    with pytest.raises(FileNotFoundError, match="export the model again"):
        convert_repository(repo, names=[f"{name}_int8"], engines=engines, log=lambda msg: None)
    assert engines.built == []
