"""Answers at k clusters (issue 25): /cluster?clusters=k, /models/{name}?clusters=k, renaming at a level, the
client, serve.bulk --clusters k on a real local Ray, and a model version whose card has no merge hierarchy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from contract.card import ModelCard
from contract.names import CARD_FILE, level_names_file
from serve.client import Client
from tests.support.serving import digit_pngs, exported, files, gateway

ROOT = Path(__file__).resolve().parents[2]
K = 10


@pytest.fixture(scope="module")
def model(tiny_run, tmp_path_factory):
    return exported(tiny_run, tmp_path_factory, "cc")


@pytest.fixture(scope="module")
def card(model) -> ModelCard:
    return ModelCard.read(model.repository / model.name / "1" / CARD_FILE)


@pytest.fixture(scope="module")
def pngs() -> list[tuple[str, bytes]]:
    return [(f"{i}.png", data) for i, data in enumerate(digit_pngs(60))]


@pytest.fixture(scope="module")
def repository(model, tmp_path_factory) -> Path:
    """A copy of the model's repository: these tests write names files into it."""
    root = tmp_path_factory.mktemp("levels") / "repository"
    shutil.copytree(model.repository, root)
    return root


def cluster(client, pngs, **params) -> dict:
    r = client.post("/cluster", files=files(pngs), params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_default_level_is_the_trained_one_bit_for_bit(repository, model, pngs):
    with gateway(repository) as client:
        plain, at_k = cluster(client, pngs), cluster(client, pngs, clusters=K)
    assert plain["clusters"] == at_k["clusters"] == K
    assert plain["results"] == at_k["results"]


def test_answers_at_a_level_are_merged_clusters_with_summed_probabilities(repository, card, pngs):
    with gateway(repository) as client:
        heads = cluster(client, pngs, top_k=K)["results"]
        four = cluster(client, pngs, clusters=4, top_k=K)
        one = cluster(client, pngs, clusters=1)
        names = client.get("/models/cc_digits", params={"clusters": 4}).json()["names"]
    assert four["clusters"] == 4
    members = card.levels.members(4)
    for head, merged in zip(heads, four["results"], strict=True):
        head_p = {t["cluster"]: t["probability"] for t in head["top_k"]}
        sums = {m: sum(head_p[c] for c in group) for m, group in members.items()}
        assert merged["cluster"] == max(sums, key=lambda m: (sums[m], -m))  # an id is its smallest member's
        assert merged["probability"] == pytest.approx(sums[merged["cluster"]], abs=1e-6)
        assert len(merged["top_k"]) == 4 and {t["cluster"] for t in merged["top_k"]} == set(members)
        assert sum(t["probability"] for t in merged["top_k"]) == pytest.approx(1.0, abs=1e-5)
        assert merged["name"] == names[merged["cluster"]]
    assert {r["cluster"] for r in one["results"]} == {0}
    assert all(r["probability"] == pytest.approx(1.0, abs=1e-5) for r in one["results"])


@pytest.mark.parametrize("clusters", ["0", "11", "ten", "2.5", "-3"])
def test_an_invalid_level_is_a_422_naming_the_valid_range(repository, pngs, clusters):
    with gateway(repository) as client:
        r = client.post("/cluster", files=files(pngs[:2]), params={"clusters": clusters})
        card_answer = client.get("/models/cc_digits", params={"clusters": clusters})
    assert r.status_code == 422 and card_answer.status_code == 422
    error = r.json()["error"]
    assert "from 1 to 10" in error["message"] and error["kind"] == "validation"


def test_names_at_a_level_and_renaming_there_write_that_levels_file(repository, card, pngs):
    members = card.levels.members(3)
    with gateway(repository) as client:
        answered = {r["cluster"] for r in cluster(client, pngs, clusters=3)["results"]}
        merged_id = next(m for m, group in members.items() if len(group) > 1 and m in answered)
        absorbed = members[merged_id][1]
        heads = client.get("/models/cc_digits").json()["names"]
        at_3 = client.get("/models/cc_digits", params={"clusters": 3}).json()
        assert at_3["clusters"] == 3 and len(at_3["names"]) == K
        group = members[merged_id]
        built = " + ".join(heads[c] for c in group[:3]) + (f" +{len(group) - 3}" if len(group) > 3 else "")
        assert at_3["names"][merged_id] == at_3["names"][absorbed] == built  # from the members' names
        r = client.put(f"/models/cc_digits/clusters/{absorbed}", params={"clusters": 3}, json={"name": "no"})
        assert r.status_code == 400 and f"{merged_id}" in r.json()["error"]["message"]  # not an id at level 3
        r = client.put(f"/models/cc_digits/clusters/{merged_id}", params={"clusters": 3}, json={"name": "curly"})
        assert r.status_code == 204
        written = repository / "cc_digits" / "1" / level_names_file(3, K)
        assert json.loads(written.read_text()) == {str(merged_id): "curly"}
        answers = cluster(client, pngs, clusters=3)["results"]
        assert {r["name"] for r in answers if r["cluster"] == merged_id} == {"curly"}
        assert client.get("/models/cc_digits").json()["names"] == heads  # the trained level's names are untouched
        assert "curly" not in {r["name"] for r in cluster(client, pngs)["results"]}


def test_the_client_asks_for_a_level(repository, pngs):
    with gateway(repository) as http:
        raw = cluster(http, pngs, clusters=5)["results"]
        client = Client(http=http)
        results = client.cluster([data for _, data in pngs], clusters=5)
        assert [r.cluster for r in results] == [r["cluster"] for r in raw]
        assert [r.name for r in results] == [r["name"] for r in raw]
        assert client.card("cc_digits", clusters=5)["clusters"] == 5


def test_a_card_without_a_hierarchy_answers_at_its_own_clusters_and_says_so_for_others(model, pngs, tmp_path):
    older = tmp_path / "repository"
    shutil.copytree(model.repository, older)
    card_file = older / "cc_digits" / "1" / CARD_FILE
    record = json.loads(card_file.read_text())
    del record["levels"]  # a card exported before merge hierarchies
    card_file.write_text(json.dumps(record))
    with gateway(model.repository) as client:
        expected = cluster(client, pngs)
    with gateway(older) as client:
        assert cluster(client, pngs) == expected
        assert cluster(client, pngs, clusters=K) == expected
        r = client.post("/cluster", files=files(pngs[:2]), params={"clusters": 4})
        assert r.status_code == 422 and "answers at its 10 clusters only" in r.json()["error"]["message"]


def test_the_bulk_job_gives_the_gateways_merged_answers(model, pngs, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in pngs:
        (folder / name).write_bytes(data)
    out = tmp_path / "out"

    def bulk(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "serve.bulk", str(folder), "--model-repository",
                               str(model.repository), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})

    refused = bulk("--output", str(out), "--clusters", "11")
    assert refused.returncode == 2 and "--clusters: clusters must be from 1 to 10" in refused.stderr
    done = bulk("--output", str(out), "--clusters", "4", "--block-size", "20", "--actors", "1", "--top-k", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    table = pads.dataset(out / "shards", format="parquet").to_table().sort_by("index").to_pydict()
    with gateway(model.repository) as client:
        items = [(p, Path(p).read_bytes()) for p in table["path"]]
        answers = cluster(client, items, clusters=4, top_k=3)["results"]
    assert table["cluster"] == [a["cluster"] for a in answers] and len(set(table["cluster"])) <= 4
    np.testing.assert_allclose(table["probability"], [a["probability"] for a in answers], atol=1e-6)
    assert table["top_k"] == [[t["cluster"] for t in a["top_k"]] for a in answers]
    assert table["name"] == [a["name"] for a in answers]
    used = sorted(set(table["cluster"]))  # at most 4 of the 10 ids: the other clusters are empty and get no gallery
    assert sorted(p.name for p in (out / "gallery").iterdir()) == [f"cluster_{k:03d}.png" for k in used]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["level"] == 4 and [k for k, n in summary["clusters"].items() if n] == [str(k) for k in used]
    again = bulk("--output", str(out), "--clusters", "5")
    assert again.returncode == 2 and "clusters 4 -> 5" in again.stderr  # OUT holds the job at 4
