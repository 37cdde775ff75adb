"""Answers that mean something: cluster names (editable without a restart), low-confidence and OOD flags."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from tests.support.images import encode
from tests.support.serving import digit_pngs, files, gateway, metric


@pytest.fixture
def repo(cc_model, tmp_path):
    return shutil.copytree(cc_model.repository, tmp_path / "repo")


def test_answers_carry_the_cluster_name_and_a_renamed_cluster_shows_in_the_next_answer(cc_model, repo):
    names_file = repo / cc_model.name / "1" / "cluster_names.json"
    defaults = json.loads(names_file.read_text())
    with gateway(repo) as client:
        first = client.post("/cluster", files=files([("a.png", digit_pngs(1)[0])])).json()["results"][0]
        assert first["name"] == defaults[str(first["cluster"])]
        names_file.write_text(json.dumps({str(first["cluster"]): "renamed by an operator"}))
        again = client.post("/cluster", files=files([("a.png", digit_pngs(1)[0])])).json()["results"][0]
        assert again["cluster"] == first["cluster"] and again["name"] == "renamed by an operator"
        card = client.get(f"/models/{cc_model.name}").json()
        assert card["names"][first["cluster"]] == "renamed by an operator"
        others = [k for k in range(len(card["names"])) if k != first["cluster"]]
        assert all(card["names"][k] == defaults[str(k)] for k in others)  # the rest keep their defaults
        names_file.write_text("{half-saved")
        kept = client.post("/cluster", files=files([("a.png", digit_pngs(1)[0])])).json()["results"][0]
        assert kept["name"] == "renamed by an operator"  # a broken edit keeps the names we had


def test_a_red_square_is_out_of_distribution_and_most_digits_are_not(repo, cc_model):
    red = encode(Image.new("RGB", (64, 64), (255, 0, 0)))
    digits = [(f"d{i}.png", d) for i, d in enumerate(digit_pngs(60))]
    with gateway(repo) as client:
        r = client.post("/cluster", files=files([("red.png", red), *digits]))
        assert r.status_code == 200, r.text
        red_result, *digit_results = r.json()["results"]
        # farther from its prototype than at least 99% of the training images (the flag's threshold)
        assert red_result["ood"] is True and red_result["ood_score"] >= 0.99
        assert sum(x["ood"] for x in digit_results) <= 3  # the threshold is the training data's 99th percentile
        assert 0 <= min(x["ood_score"] for x in digit_results) <= max(x["ood_score"] for x in digit_results) <= 1
        assert sum(x["low_confidence"] for x in digit_results) <= 10  # 5th percentile of the probability
        text = client.get("/metrics").text
        total = sum(metric(text, "gateway_cluster_assignments_total", model=cc_model.name, version="1", cluster=str(k))
                    for k in range(10))
        assert total == 61
        flagged = 1 + sum(x["ood"] for x in digit_results)
        assert metric(text, "gateway_ood_total", model=cc_model.name, version="1") == flagged
        low = sum(x["low_confidence"] for x in [red_result, *digit_results])
        assert metric(text, "gateway_low_confidence_total", model=cc_model.name, version="1") == low


def test_models_name_returns_the_card(repo, cc_model):
    with gateway(repo) as client:
        body = client.get(f"/models/{cc_model.name}").json()
        assert (body["name"], body["version"], body["versions"]) == (cc_model.name, 1, [1])
        card = body["card"]
        assert card["name"] == cc_model.name and card["stats"]["num_images"] == 1797
        assert len(card["stats"]["clusters"]) == len(body["names"]) == 10
        assert "/" not in card["source_run"]
        r = client.get("/models/nope")
        assert r.status_code == 404 and r.json()["error"]["kind"] == "not_found"
