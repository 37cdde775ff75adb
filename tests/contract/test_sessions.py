"""contract.sessions: the fused encoder+head graph answers as the two exported graphs do; the settings."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.names import FEATURES, IMAGES
from contract.sessions import (
    CPU,
    CUDA,
    SessionPool,
    choose_providers,
    default_instances,
    fused_model,
    open_session,
    settings_of,
)
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


def test_instances_two_on_a_multicore_cpu_one_on_cuda_or_one_thread():
    assert default_instances([CPU], threads=2) == 2
    assert default_instances([CPU], threads=1) == 1
    assert default_instances([CUDA, CPU], threads=16) == 1


def test_pool_runs_batches_at_once_on_separate_sessions_with_the_threads_shared(graphs):
    fused = fused_model(*graphs)
    pool = SessionPool(fused, instances=2, threads=4, providers=[CPU])
    assert pool.instances == 2 and len({id(s) for s in pool.sessions}) == 2
    assert pool.settings()["instances"] == 2 and pool.settings()["intra_op_threads"] == 2  # 4 threads / 2
    assert SessionPool(fused, instances=3, threads=2, providers=[CPU]).settings()["intra_op_threads"] == 1
    images = np.random.default_rng(1).integers(0, 256, (9, 1, 16, 16), dtype=np.uint8)
    expected = open_session(fused, providers=[CPU]).run(pool.outputs, {IMAGES: images})

    warmed = []  # warm_up runs every session once (onnxruntime plans on a session's first run)
    for session in pool.sessions:
        original = session.run
        session.run = lambda names, feeds, original=original, session=session: (warmed.append(session),
                                                                                original(names, feeds))[1]
    pool.warm_up({IMAGES: images[:1]})
    assert sorted(map(id, warmed)) == sorted(map(id, pool.sessions))

    # two callers inside run() at the same moment hold different sessions (a barrier in each session's run)
    barrier, used, results = threading.Barrier(2, timeout=10), [], []
    for session in pool.sessions:
        original = session.run

        def run(names, feeds, original=original, session=session):
            used.append(session)
            barrier.wait()  # both callers must be inside a session at once, or this times out
            return original(names, feeds)

        session.run = run
    callers = [threading.Thread(target=lambda: results.append(pool.run({IMAGES: images}))) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(results) == 2 and {id(s) for s in used} == {id(s) for s in pool.sessions}
    for got in results:
        for value, want in zip(got, expected, strict=True):
            np.testing.assert_allclose(value, want, atol=1e-6)
    with pytest.raises(ValueError, match="instances"):
        SessionPool(fused, instances=-1)
