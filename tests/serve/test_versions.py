"""Model versions on the embedded backend: a new export is served without a restart, removing it rolls back."""

from __future__ import annotations

import shutil
import threading
import time

from export.pipeline import export_run
from export.triton import FLAVOURS, write_repository
from export.versions import remove_version
from tests.support.repository import assert_valid, model_set
from tests.support.serving import digit_pngs, files, gateway


def served_version(client, **params) -> int:
    r = client.post("/cluster", files=files([("a.png", digit_pngs(1)[0])]), params=params)
    assert r.status_code == 200, r.text
    return r.json()["version"]


def wait_for(fn, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (result := fn()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return result


def test_a_new_version_is_served_without_restart_and_removing_it_rolls_back(cc_model, tmp_path):
    repo = shutil.copytree(cc_model.repository, tmp_path / "repo")
    with gateway(repo, repository_poll_s=0.1) as client:
        assert served_version(client) == 1
        export_run(cc_model.run, repo, None, log=lambda msg: None)  # the second export: version 2
        assert wait_for(lambda: served_version(client) == 2), "version 2 was not picked up"
        assert served_version(client, version=1) == 1  # a pinned version is still served
        (listed,) = client.get("/models").json()["models"]
        assert (listed["version"], listed["versions"]) == (2, [1, 2])
        assert client.get(f"/models/{cc_model.name}", params={"version": 1}).json()["version"] == 1
        remove_version(repo, cc_model.name, 2)
        assert wait_for(lambda: served_version(client) == 1), "removing version 2 did not roll back to 1"
        r = client.post("/cluster", files=files([("a.png", digit_pngs(1)[0])]), params={"version": 2})
        assert r.status_code == 404 and "no version 2" in r.json()["error"]["message"]
        assert "gateway_model_version" in client.get("/metrics").text


def test_forty_re_exports_while_the_gateway_answers_never_show_a_missing_model(cc_model, tmp_path):
    repo = shutil.copytree(cc_model.repository, tmp_path / "repo")
    models = model_set(repo, cc_model.name)
    answers: list[tuple[int, int | None]] = []
    stop = threading.Event()
    with gateway(repo, repository_poll_s=0.05) as client:
        one = files([("a.png", digit_pngs(1)[0])])

        def poll() -> None:
            while not stop.is_set():
                r = client.post("/cluster", files=one)
                answers.append((r.status_code, r.json().get("version")))
                m = client.get("/models")
                answers.append((m.status_code, len(m.json()["models"])))

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            for _ in range(40):
                write_repository(repo, models, FLAVOURS["onnxruntime"])
                time.sleep(0.02)
            assert wait_for(lambda: answers and answers[-2][1] == 41), answers[-4:]
        finally:
            stop.set()
            poller.join(30)
    assert len(answers) > 40
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:5]
    cluster_versions = [v for v in answers[::2]]
    assert [v for _, v in cluster_versions] == sorted(v for _, v in cluster_versions)  # never back, never missing
    assert all(count == 1 for _, count in answers[1::2])
    assert assert_valid(repo, cc_model.name) == list(range(1, 42))
