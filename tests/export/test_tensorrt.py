"""The TensorRT repository rewrite, on CPU: config rewrite, engine stamps, metadata merge, up-to-date check.

The plans come from `CPUEngines`, a stand-in for export.trt_build.TensorRTEngines with the same three
methods: its "plan" is the ONNX file itself, its I/O the ONNX graph's, its parity run onnxruntime.
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
        self.rename_output = rename_output
        self.fail_parity = fail_parity

    def _file(self, plan: bytes, name: str) -> Path:
        path = self.tmp / name
        path.write_bytes(plan)
        return path

    def build(self, onnx_path, options, log):
        self.built.append(onnx_path.parent.parent.name)
        return onnx_path.read_bytes(), {"precision": "fp16" if options.fp16 else "fp32", "max_batch": options.max_batch,
                                        "opt_batch": options.opt_batch, "workspace_mb": options.workspace_mb}

    def specs(self, plan):
        inputs, outputs = graph_specs(self._file(plan, "specs.onnx"))
        if self.rename_output:
            outputs = [type(outputs[0])("renamed", outputs[0].dtype, outputs[0].shape), *outputs[1:]]
        return inputs, outputs

    def parity(self, encoder_plan, head_plan, sample, max_batch, precision):
        images, reference = parity.read_sample(sample)
        candidate, _ = parity.onnx_outputs(self._file(encoder_plan, "e.onnx"), self._file(head_plan, "h.onnx"), images)
        if self.fail_parity:
            candidate = {**candidate, "embedding": candidate["embedding"] + 1.0}
        report = parity.compare(reference, candidate)
        report.update(runtime="tensorrt", runtime_version=self.version, precision=precision)
        return report


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
    convert_repository(repo, PlanOptions(fp16=True), engines=again, log=lambda msg: None)
    assert len(again.built) == 2
    forced = CPUEngines(tmp_path)
    convert_repository(repo, PlanOptions(fp16=True, force=True), engines=forced, log=lambda msg: None)
    assert len(forced.built) == 2
    plan = repo / f"{name}_head" / "1" / "model.plan"
    wanted = wanted_stamp(forced, plan.with_name("model.onnx"), PlanOptions(fp16=True, max_batch=64, opt_batch=32))
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
