"""The method contract (train/methods/base.py), checked for every registered method, and the registry's checks.

Per method: the forward gives per-sample tensors and the loss a finite scalar with gradients; the
head gives the required outputs with their shapes and dtypes; everything inference needs is in the
state_dict; the head traces to ONNX and onnxruntime agrees with PyTorch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contract.names import CLUSTER, EMBEDDING, PROBABILITIES, REQUIRED_OUTPUTS
from export import parity
from export.onnx_export import export_onnx
from tests.support.runs import tiny_config
from train.config import Config
from train.methods import METHODS, check_method, get_method, make_config, register
from train.methods.base import ClusteringMethod, StepContext
from train.methods.cc import CC
from train.trainer import step_outputs

B = 8


def _model(method: str, tmp_path, seed: int = 0) -> ClusteringMethod:
    torch.manual_seed(seed)
    return get_method(method)(tiny_config(method, tmp_path), in_channels=1, num_clusters=10)


def _step(generator: torch.Generator) -> StepContext:
    return StepContext(epoch=0, epochs=2, step=0, steps_per_epoch=4, generator=generator, indices=torch.arange(B))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_forward_gives_per_sample_tensors_and_loss_a_scalar_with_gradients(method, tmp_path):
    model = _model(method, tmp_path).train()
    if hasattr(model, "pseudo_labels"):  # ProPos with PSL on from the first epoch: what its k-means E-step gives
        model.pseudo_labels = torch.arange(B) % model.num_clusters
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.rand(B, 1, 16, 16, generator=g), torch.rand(B, 1, 16, 16, generator=g)
    outputs = model(x1, x2, _step(g))
    assert outputs and all(v.shape[0] in (B, 2 * B) for v in outputs.values())  # gatherable along dim 0
    losses = model.loss(outputs, _step(g))
    assert losses["loss"].dim() == 0 and torch.isfinite(losses["loss"])
    step = _step(g)
    losses = model.loss(step_outputs(model, x1, x2, step), step)  # what the trainer runs
    losses["loss"].backward()
    trained = [p for g_ in model.param_groups() for p in g_["params"]]
    with_grad = [p.grad for p in trained if p.grad is not None]
    assert with_grad and all(torch.isfinite(g_).all() for g_ in with_grad)  # the loss reaches the parameters


@pytest.mark.parametrize("method", sorted(METHODS))
def test_head_outputs_follow_the_inference_contract(method, tmp_path):
    model = _model(method, tmp_path).eval()
    out = model.predict(torch.rand(B, 1, 16, 16))
    assert set(REQUIRED_OUTPUTS) <= set(out)
    assert out[EMBEDDING].dtype == torch.float32 and out[EMBEDDING].dim() == 2 and out[EMBEDDING].shape[0] == B
    torch.testing.assert_close(out[EMBEDDING].norm(dim=1), torch.ones(B))
    assert out[PROBABILITIES].dtype == torch.float32 and out[PROBABILITIES].shape[0] == B
    assert out[PROBABILITIES].shape[1] >= model.num_clusters  # CoHiClust: one per surviving leaf
    torch.testing.assert_close(out[PROBABILITIES].sum(1), torch.ones(B))
    assert out[CLUSTER].dtype == torch.int64 and out[CLUSTER].shape == (B,)
    assert ((0 <= out[CLUSTER]) & (out[CLUSTER] < out[PROBABILITIES].shape[1])).all()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_inference_state_lives_in_the_state_dict(method, tmp_path):
    trained = _model(method, tmp_path, seed=0).eval()
    with torch.no_grad():  # stands in for training: every float tensor moves, one bool flag flips
        for t in [*trained.parameters(), *trained.buffers()]:
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.1)
            elif t.dtype == torch.bool:
                t[-1] = False
    fresh = _model(method, tmp_path, seed=1).eval()
    fresh.load_state_dict(trained.state_dict())
    x = torch.rand(B, 1, 16, 16)
    expected, got = trained.predict(x), fresh.predict(x)
    assert set(expected) == set(got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_model_traces_to_onnx_and_onnxruntime_agrees(method, tmp_path):
    model = _model(method, tmp_path).eval()
    encoder, head, names = export_onnx(model, 1, 16, tmp_path / "onnx")
    assert names[:3] == list(REQUIRED_OUTPUTS) or set(REQUIRED_OUTPUTS) <= set(names)
    images = np.random.default_rng(0).integers(0, 256, (B, 1, 16, 16), dtype=np.uint8)
    report = parity.check_onnx(encoder, head, images, parity.torch_outputs(model, images))
    assert report["passed"], report["problems"]


def test_every_method_keeps_the_registry_contract():
    for name, cls in METHODS.items():
        check_method(name, cls)  # raises on a broken contract
        assert make_config(name).method == name  # the registry key is the one name


def test_registration_refuses_a_broken_method():
    class NoPresets(CC):
        PRESETS = {"paper": CC.PRESETS["paper"]}

    with pytest.raises(ValueError, match=r"lacks the preset\(s\) \['fast'\]"):
        check_method("nopresets", NoPresets)

    class Typo(CC):
        PRESETS = {**CC.PRESETS, "fast": {"*": {"epoch": 3}}}

    with pytest.raises(ValueError, match=r"preset 'fast' for '\*' sets unknown field\(s\) \['epoch'\]"):
        check_method("typo", Typo)

    class Orphan(CC):
        parent = "nothing"

    with pytest.raises(ValueError, match="parent 'nothing' is not a registered method"):
        check_method("orphan", Orphan)
    with pytest.raises(ValueError, match="already registered"):
        register("cc", CC)


def test_a_config_built_by_hand_must_name_its_method():
    with pytest.raises(TypeError, match="method"):
        Config()
    assert Config(method="drc").method == "drc"
