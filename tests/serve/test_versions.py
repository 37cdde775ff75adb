"""Model versions on the embedded backend: a new export is served without a restart, removing it rolls back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from export.pipeline import export_run
from export.triton import FLAVOURS, write_repository
from export.versions import remove_version
from tests.support.processes import gateway_process
from tests.support.repository import assert_valid, model_set
from tests.support.serving import copy_model, digit_pngs, files, gateway

ROOT = Path(__file__).resolve().parents[2]


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


def test_a_request_waiting_on_a_removed_version_is_answered_by_the_version_served_after_it(cc_model, tmp_path):
    """An unpinned request queued on version 2 when a rollback removes it: answered by version 1, not a 503
    (the removed version's queue closes under it); a request pinned to version 2 is refused as before."""
    repo = shutil.copytree(cc_model.repository, tmp_path / "repo")
    export_run(cc_model.run, repo, None, log=lambda msg: None)  # version 2
    one = files([("a.png", digit_pngs(1)[0])])
    # a batch waits up to 3 s to fill: a lone request sits in its version's queue that long
    with gateway(repo, repository_poll_s=0.05, max_wait_ms=3000) as client, ThreadPoolExecutor(3) as pool:
        unpinned = pool.submit(client.post, "/cluster", files=one)
        embedded = pool.submit(client.post, "/embed", files=one)
        pinned = pool.submit(client.post, "/cluster", files=one, params={"version": 2})
        time.sleep(1.0)  # all three are in version 2's queue
        remove_version(repo, cc_model.name, 2)
        r, e, refused = unpinned.result(timeout=60), embedded.result(timeout=60), pinned.result(timeout=60)
    assert (r.status_code, e.status_code) == (200, 200), (r.text, e.text)
    assert r.json()["version"] == e.json()["version"] == 1
    assert refused.status_code == 503
    assert refused.json()["error"]["message"] == f"model {cc_model.name!r} is shutting down"


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


def broken_repository(cc_model, root: Path) -> Path:
    """cc_digits: versions 1 and 2 good, 3 with a truncated encoder graph, and a directory named "²" (a copy of
    version 1; "²".isdigit() is true, int("²") fails); other: version 1 good, version 2 without its head graph."""
    repo = shutil.copytree(cc_model.repository, root / "repo")
    name = cc_model.name
    for _ in range(2):
        write_repository(repo, model_set(repo, name), FLAVOURS["onnxruntime"])
    graph = repo / f"{name}_encoder" / "3" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:2000])
    shutil.copytree(repo / name / "1", repo / name / "²")
    copy_model(cc_model.repository, name, repo, "other")
    write_repository(repo, model_set(repo, "other"), FLAVOURS["onnxruntime"])
    (repo / "other_head" / "2" / "model.onnx").unlink()
    return repo


REASONS = {("cc_digits", "3"): "DecodeError", ("cc_digits", "²"): "not a version number",
           ("other", "2"): "No such file or directory"}


def test_broken_versions_are_named_and_never_stop_the_good_ones(cc_model, tmp_path):
    """Issue 24 (acceptance): a truncated newest graph made the gateway exit 3, a missing graph dropped the model
    silently, a version directory "²" made /models 500 and a restart exit 1."""
    repo = broken_repository(cc_model, tmp_path)
    log = tmp_path / "gateway.log"
    with gateway_process(repo, log, repository_poll_s="0.2") as url:
        one = {"files": ("a.png", digit_pngs(1)[0])}
        r = httpx.post(f"{url}/cluster", params={"model": "cc_digits"}, files=one)
        assert r.json()["version"] == 2, r.text  # the newest that loads
        assert httpx.post(f"{url}/cluster", params={"model": "other"}, files=one).json()["version"] == 1
        for model, version in (("cc_digits", 3), ("other", 2)):
            r = httpx.post(f"{url}/cluster", params={"model": model, "version": version}, files=one)
            assert r.status_code == 503 and r.json()["error"]["kind"] == "version_unavailable", r.text
            assert REASONS[(model, str(version))] in r.json()["error"]["message"]
        for route in ("/readyz", "/models"):
            answer = httpx.get(url + route)
            assert answer.status_code == 200, answer.text
            named = {(u["model"], u["version"]): u["reason"] for u in answer.json()["unavailable"]}
            assert set(named) == set(REASONS), named
            assert all(REASONS[key] in reason and str(repo) not in reason for key, reason in named.items())
        models = {m["name"]: m for m in httpx.get(f"{url}/models").json()["models"]}
        assert (models["cc_digits"]["version"], models["cc_digits"]["versions"]) == (2, [1, 2])
        assert httpx.get(f"{url}/models/cc_digits").status_code == 200
        time.sleep(1.5)  # several polls
    text = log.read_text()
    for (model, version), reason in REASONS.items():
        lines = [line for line in text.splitlines() if f"model {model} version {version}" in line and reason in line]
        assert len(lines) == 1, (model, version, lines)  # said once, not at every poll
    assert "Traceback" not in text


def test_a_version_that_does_not_load_stops_no_other_model_from_updating(cc_model, tmp_path):
    """Issue 24: an undecodable graph in another model's new version aborted the poll every 2 s, so a good new
    version of this model was never picked up; /models listed a version it did not serve."""
    repo = shutil.copytree(cc_model.repository, tmp_path / "repo")
    copy_model(cc_model.repository, cc_model.name, repo, "aa")  # polled before cc_digits
    with gateway(repo, repository_poll_s=0.1) as client:
        broken = model_set(repo, "aa")
        broken.encoder_onnx = tmp_path / "not_a_graph.onnx"  # version 2 is published with it, whole
        broken.encoder_onnx.write_bytes(b"\x0a\xff\xff not a graph")
        write_repository(repo, broken, FLAVOURS["onnxruntime"])
        write_repository(repo, model_set(repo, cc_model.name), FLAVOURS["onnxruntime"])
        assert wait_for(lambda: served_version(client, model=cc_model.name) == 2), "the good version was not picked up"
        assert served_version(client, model="aa") == 1
        listed = {m["name"]: m["versions"] for m in client.get("/models").json()["models"]}
        assert listed == {"aa": [1], cc_model.name: [1, 2]}
        r = client.post("/cluster", files=files([("a.png", digit_pngs(1)[0])]), params={"model": "aa", "version": 2})
        assert r.status_code == 503 and "version 2 is unavailable" in r.json()["error"]["message"]


def test_a_repository_where_nothing_loads_is_exit_2_with_the_reasons(cc_model, tmp_path):
    repo = shutil.copytree(cc_model.repository, tmp_path / "repo")
    graph = repo / f"{cc_model.name}_head" / "1" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:500])
    proc = subprocess.run([sys.executable, "-m", "serve", "--model-repository", str(repo), "--port", "0"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no version of any model in {repo} loads: {cc_model.name} version 1: "), last
    assert "Traceback" not in proc.stderr and "gateway ready" not in proc.stderr
