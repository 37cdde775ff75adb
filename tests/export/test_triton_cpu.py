"""A real tritonserver (CPU, python backend) serves the exported CPU repository like PyTorch predicts."""

from __future__ import annotations

import numpy as np
import pytest

from export import parity
from export.pipeline import export_run
from tests.support.runs import digit_images
from tests.support.tritonserver import TritonServer, triton_available
from train.methods import METHODS

REASON = triton_available()
pytestmark = [pytest.mark.triton, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def _infer_grpc(client, name: str, images: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    result = client.infer(name, [tensor], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


def _infer_http(url: str, name: str, images: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=True)
    result = client.infer(name, [tensor], outputs=[httpclient.InferRequestedOutput(o) for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


def _assert_like_pytorch(got: dict[str, np.ndarray], reference: dict[str, np.ndarray], rows: slice) -> None:
    for name, ref in reference.items():
        value = got[name].reshape(ref[rows].shape)  # Triton returns (B,) tensors as (B, 1)
        if np.issubdtype(ref.dtype, np.floating):
            np.testing.assert_allclose(value, ref[rows], atol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(value, ref[rows], err_msg=name)


def test_tritonserver_serves_every_method_like_pytorch(tiny_run, tmp_path):
    import tritonclient.grpc as grpcclient

    from train.checkpoint import load_run

    repo = tmp_path / "model_repository_cpu"
    images = digit_images(64, 16)
    expected = {}
    for method in sorted(METHODS):
        run = tiny_run(method)
        result = export_run(run, tmp_path / "gpu", repo, log=lambda msg: None)
        expected[result.name] = parity.torch_outputs(load_run(run).model, images)
    with TritonServer(repo, tmp_path / "triton.log") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for name, reference in expected.items():
            assert client.is_model_ready(name), server.log()[-3000:]
            outputs = list(reference)
            for rows in (slice(0, 1), slice(1, 18), slice(18, 64)):  # batch 1, 17, 46
                _assert_like_pytorch(_infer_grpc(client, name, images[rows], outputs), reference, rows)
            got = _infer_http(server.http_url, name, images, outputs)
            assert got["cluster"].shape == (64, 1) and got["cluster"].dtype == np.int64
            _assert_like_pytorch(got, reference, slice(0, 64))
        # killed and brought back (the gateway's tests do this): serves again on the same ports
        server.stop()
        assert not server.is_ready()
        server.start()
        name, reference = next(iter(expected.items()))
        _assert_like_pytorch(_infer_grpc(client, name, images[:5], list(reference)), reference, slice(0, 5))
