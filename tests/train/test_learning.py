"""Methods learn something real on the built-in digits (k-means on raw pixels: NMI 0.742, ACC 0.792)."""

from __future__ import annotations

import json

import pytest

from tests.support.runs import tiny_config
from train.trainer import train


def _metrics(run_dir) -> dict[str, float]:
    return json.loads((run_dir / "results.json").read_text())["metrics"]


def test_cc_learns_digits_in_a_few_epochs(tmp_path):
    # 20 epochs of the digits recipe: far above chance (NMI ~0 for random weights and collapsed heads).
    train(tiny_config("cc", tmp_path, preset="paper", epochs=20, batch_size=256))
    scores = _metrics(tmp_path)
    assert scores["nmi"] > 0.35 and scores["clusters_used"] >= 8, scores


FLOORS = {  # the issues' acceptance floors, with each method's default digits preset
    "cc": {"nmi": 0.80, "acc": 0.85},
    "drc": {"nmi": 0.75},
    "cohiclust": {"nmi": 0.75},
    "propos": {"nmi": 0.80},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(FLOORS))
def test_digits_preset_reaches_its_floor(tmp_path, method):
    train(tiny_config(method, tmp_path, preset="paper", epochs=None, batch_size=None))
    scores = _metrics(tmp_path)
    for name, floor in FLOORS[method].items():
        assert scores[name] >= floor, (method, scores)
