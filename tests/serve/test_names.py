"""Renaming clusters (PUT /models/{name}/clusters/{cluster}): names are checked, a corrupt names file is
replaced, a corrupt metadata file is a 503 that names it, and renames from two gateways both land (issue 24)."""

from __future__ import annotations

import json
import shutil
import threading

import httpx
import pytest

from tests.support.processes import gateway_process
from tests.support.serving import gateway


@pytest.fixture
def repo(cc_model, tmp_path):
    return shutil.copytree(cc_model.repository, tmp_path / "repo")


def _names(repo, name: str) -> dict[str, str]:
    return json.loads((repo / name / "1" / "cluster_names.json").read_text())


def test_a_name_is_trimmed_and_refused_when_blank_too_long_or_not_printable(cc_model, repo):
    """Issue 24: a rename to "   " was stored as "", and NUL, a line break or a right-to-left override were kept."""
    path = f"/models/{cc_model.name}/clusters/3"
    with gateway(repo) as client:
        for bad in ("   ", "", "two\nlines", "nul\x00", "\u202egnp.exe", "x" * 101, "tab\there"):
            r = client.put(path, json={"name": bad})
            assert r.status_code == 422 and r.json()["error"]["kind"] == "validation", (bad, r.text)
        assert _names(repo, cc_model.name)["3"] != ""
        assert client.put(path, json={"name": "  round ones  "}).status_code == 204
        assert _names(repo, cc_model.name)["3"] == "round ones"
        assert client.get(f"/models/{cc_model.name}").json()["names"][3] == "round ones"


def test_a_corrupt_names_file_is_replaced_by_a_rename_and_corrupt_metadata_is_a_503(cc_model, repo):
    """Issue 24: a corrupt served metadata.json or cluster_names.json made the page's routes answer 500, so the
    page could not repair the names file."""
    names_file = repo / cc_model.name / "1" / "cluster_names.json"
    names_file.write_text('{"0": "zero", ')  # a half-written edit
    with gateway(repo) as client:
        card = client.get(f"/models/{cc_model.name}")
        assert card.status_code == 200 and len(card.json()["names"]) == 10
        assert client.put(f"/models/{cc_model.name}/clusters/2", json={"name": "hooks"}).status_code == 204
        assert json.loads(names_file.read_text()) == {"2": "hooks"}  # a valid file again
        assert client.get(f"/models/{cc_model.name}").json()["names"][2] == "hooks"

        (repo / cc_model.name / "1" / "metadata.json").write_text("{ not json")
        for method, route in (("get", "/clusters/2/samples/0.png"), ("get", "/projection"),
                              ("put", "/clusters/2")):
            body = {"name": "x"} if method == "put" else None
            r = client.request(method, f"/models/{cc_model.name}{route}", json=body)
            assert r.status_code == 503, (route, r.status_code, r.text)
            error = r.json()["error"]
            assert error["kind"] == "version_unavailable" and "metadata.json" in error["message"]


def test_renames_from_two_gateways_on_one_repository_all_land(cc_model, repo, tmp_path):
    """Issue 24: two gateways on one repository lost a rename (each read, changed and wrote the whole file)."""
    rounds = 12
    with gateway_process(repo, tmp_path / "a.log") as a, gateway_process(repo, tmp_path / "b.log") as b:
        def rename(url: str, clusters: range) -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                for r in range(rounds):
                    for k in clusters:
                        assert client.put(f"/models/{cc_model.name}/clusters/{k}",
                                          json={"name": f"{url[-5:]} {k} round {r}"}).status_code == 204

        workers = [threading.Thread(target=rename, args=(a, range(0, 5))),
                   threading.Thread(target=rename, args=(b, range(5, 10)))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
    final = _names(repo, cc_model.name)
    assert final == {str(k): f"{(a if k < 5 else b)[-5:]} {k} round {rounds - 1}" for k in range(10)}
