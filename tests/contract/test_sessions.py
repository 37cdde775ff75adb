"""contract.sessions: the fused encoder+head graph answers as the two exported graphs do; the settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.names import FEATURES, IMAGES
from contract.sessions import CPU, CUDA, choose_providers, fused_model, open_session, settings_of
from export.onnx_export import export_onnx
from train.methods import get_method, make_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["cc", "cohiclust"])
def graphs(request, tmp_path_factory) -> tuple[Path, Path]:
    """A random-weight model of the method exported as encoder.onnx and head.onnx (smallcnn, 1 x 16 x 16)."""
    torch.manual_seed(0)
    cfg = make_config(request.param, dataset="digits", backbone="smallcnn", image_size=16)
    model = get_method(request.param)(cfg, 1, 10).eval()
    encoder, head, _ = export_onnx(model, 1, 16, tmp_path_factory.mktemp(request.param))
    return encoder, head


def test_fused_graph_gives_the_outputs_of_encoder_then_head(graphs):
    encoder, head = graphs
    images = np.random.default_rng(0).integers(0, 256, (17, 1, 16, 16), dtype=np.uint8)
    enc, hd = open_session(encoder, providers=[CPU]), open_session(head, providers=[CPU])
    names = [o.name for o in hd.get_outputs()]
    expected = dict(zip(names, hd.run(names, {FEATURES: enc.run([FEATURES], {IMAGES: images})[0]}), strict=True))

    fused = open_session(fused_model(encoder, head), providers=[CPU])
    assert [i.name for i in fused.get_inputs()] == [IMAGES]
    assert [o.name for o in fused.get_outputs()] == names  # the head's outputs, in its order (CoHiClust: + path)
    got = dict(zip(names, fused.run(names, {IMAGES: images}), strict=True))
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        if np.issubdtype(value.dtype, np.floating):
            np.testing.assert_allclose(got[name], value, atol=1e-6)
        else:
            np.testing.assert_array_equal(got[name], value)
    batch_of_one = fused.run(names, {IMAGES: images[:1]})  # the batch dimension stays dynamic
    np.testing.assert_allclose(batch_of_one[0], expected[names[0]][:1], atol=1e-5)


def test_settings_are_those_of_the_module_and_read_back_from_the_session(graphs):
    session = open_session(graphs[1], threads=2, providers=[CPU])
    assert settings_of(session) == {
        "intra_op_threads": 2, "inter_op_threads": 1, "spinning": False, "graph_optimization": "ORT_ENABLE_ALL",
        "execution_mode": "ORT_SEQUENTIAL", "cpu_memory_arena": True, "providers": [CPU],
    }
    assert settings_of(open_session(graphs[1], providers=[CPU], spinning=True))["spinning"] is True
    with pytest.raises(ValueError, match="threads"):
        open_session(graphs[1], threads=-1)


def test_default_threads_follow_the_affinity_mask_not_the_machine():
    # onnxruntime's own default counts the machine's cores: too many under taskset or a container's cpuset
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from contract.sessions import default_threads, session_options; "
            "print(default_threads(), session_options().intra_op_num_threads)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["1", "1"]


def test_providers_cuda_first_when_built_in_cpu_always():
    assert choose_providers([CPU, "AzureExecutionProvider"]) == [CPU]
    assert choose_providers(["TensorrtExecutionProvider", CUDA, CPU]) == [CUDA, CPU]
