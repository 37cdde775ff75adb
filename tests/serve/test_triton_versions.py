"""Model versions on the Triton backend, against a real CPU tritonserver polling its repository."""

from __future__ import annotations

import shutil
import time

import pytest

from export.pipeline import export_run
from export.versions import remove_version
from tests.support.serving import digit_pngs, exported, files, gateway
from tests.support.tritonserver import TritonServer, triton_available

REASON = triton_available()
pytestmark = [pytest.mark.triton, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def wait_for(fn, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (result := fn()) and time.monotonic() < deadline:
        time.sleep(0.25)
    return result


def test_triton_picks_up_a_new_version_and_a_removed_one_rolls_back(tiny_run, tmp_path_factory, tmp_path):
    model = exported(tiny_run, tmp_path_factory, "cc")
    repo = shutil.copytree(model.cpu_repository, tmp_path / "repo")
    one = files([("a.png", digit_pngs(1)[0])])
    polling = ["--model-control-mode=poll", "--repository-poll-secs=1"]
    with TritonServer(repo, tmp_path / "triton.log", extra_args=polling) as server, \
            gateway(repo, backend="triton", triton_url=server.grpc_url, triton_timeout_s=10.0,
                    repository_poll_s=0.2) as client:

        def version(**params):
            r = client.post("/cluster", files=one, params=params)
            return r.json().get("version") if r.status_code == 200 else r.status_code

        first = client.post("/cluster", files=one).json()
        assert first["version"] == 1 and first["results"][0]["name"]
        export_run(model.run, tmp_path / "gpu", repo, log=lambda msg: None)  # the second export: version 2
        assert wait_for(lambda: version() == 2), server.log()[-3000:]
        assert version(version=1) == 1  # version_policy latest 2: the previous one stays loaded
        assert client.get("/models").json()["models"][0]["versions"] == [1, 2]
        reference = client.post("/cluster", files=one, params={"version": 1}).json()["results"][0]
        assert client.post("/cluster", files=one).json()["results"][0]["cluster"] == reference["cluster"]
        remove_version(repo, model.name, 2)
        assert wait_for(lambda: version() == 1), server.log()[-3000:]
        assert wait_for(lambda: version(version=2) == 404)
