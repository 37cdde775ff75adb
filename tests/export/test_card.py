"""The model card on digits: sizes, Hungarian mapping and purity agree with the run's own assignments.csv."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from contract.card import ModelCard, nearest_centroid_distance


@pytest.fixture(scope="module")
def assignments(cc_model):
    rows = list(csv.DictReader(open(cc_model.run / "assignments.csv")))
    return np.array([int(r["cluster"]) for r in rows]), np.array([int(r["label"]) for r in rows]), \
        np.array([float(r["confidence"]) for r in rows])


def test_card_mapping_and_purity_match_the_assignments(cc_model, assignments):
    clusters, labels, _ = assignments
    card = ModelCard.read(cc_model.repository / cc_model.name / "1" / "card.json")
    stats = card.stats
    assert (card.name, card.version, card.method, card.dataset, card.finished) == \
        (cc_model.name, 1, "cc", "digits", True)
    assert card.source_run == cc_model.run.name  # the run's name, not a host path
    assert set(card.metrics) >= {"nmi", "acc", "ari"} and stats.num_images == len(clusters) == 1797
    k = len(stats.clusters)
    table = np.zeros((k, 10), np.int64)
    np.add.at(table, (clusters, labels), 1)
    assert [c.size for c in stats.clusters] == table.sum(1).tolist()
    assert [list(row) for row in stats.contingency] == table.tolist()
    rows, cols = linear_sum_assignment(table, maximize=True)
    expected = {int(r): str(int(c)) for r, c in zip(rows, cols, strict=True) if table[r, c] > 0}
    assert {c.id: c.mapped_class for c in stats.clusters if c.mapped_class is not None} == expected
    for c in stats.clusters:
        if c.size:
            assert c.purity == pytest.approx(table[c.id].max() / c.size)
            assert c.majority_class == str(int(table[c.id].argmax()))
        else:
            assert c.purity is None and c.centroid is None
    # default names: the mapped digit, else "cluster <id>"
    names = json.loads((cc_model.repository / cc_model.name / "1" / "cluster_names.json").read_text())
    assert names == {str(c.id): expected.get(c.id, f"cluster {c.id}") for c in stats.clusters}
    markdown = (cc_model.repository / cc_model.name / "1" / "card.md").read_text()
    assert f"# {cc_model.name} v1" in markdown and "| cluster | name | images |" in markdown


def test_card_calibration_is_the_training_distribution(cc_model, assignments):
    clusters, _, confidence = assignments
    stats = ModelCard.read(cc_model.repository / cc_model.name / "1" / "card.json").stats
    assert stats.confidence.threshold == pytest.approx(np.percentile(confidence, 5), abs=1e-5)
    assert stats.confidence.flag(confidence).mean() == pytest.approx(0.05, abs=0.01)
    centroids = stats.centroids()
    used = [c.id for c in stats.clusters if c.size]
    np.testing.assert_allclose(np.linalg.norm(centroids[used], axis=1), 1, atol=1e-5)
    assert nearest_centroid_distance(centroids[used], centroids).max() < 1e-5  # a centroid is its own nearest


def test_card_ood_flag_fires_on_about_one_percent_of_the_training_images(cc_model):
    # the whole training set through the trained model: half of it fitted the prototypes (closer than
    # usual), the other half calibrated the 99th percentile, so between none and 1% are flagged
    from contract.sessions import CPU, fused_model, open_session
    from train.checkpoint import load_run
    from train.data.datasets import load_dataset

    stats = ModelCard.read(cc_model.repository / cc_model.name / "1" / "card.json").stats
    reference = stats.ood_reference()
    assert reference.shape[0] > len(stats.clusters)  # prototypes, not the centroids
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1, atol=1e-4)
    images = load_dataset("digits", None, load_run(cc_model.run).meta["image_size"]).images.numpy()
    version = cc_model.repository / cc_model.name
    session = open_session(fused_model(*(version.parent / f"{cc_model.name}_{part}" / "1" / "model.onnx"
                                         for part in ("encoder", "head"))), providers=[CPU])
    embedding = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images}),
                         strict=True))["embedding"]
    flagged = stats.ood.flag(nearest_centroid_distance(embedding, reference)).mean()
    assert 0 < flagged <= 0.015, flagged


def test_sample_images_per_cluster_are_its_most_confident(cc_model, assignments):
    clusters, _, confidence = assignments
    stats = ModelCard.read(cc_model.repository / cc_model.name / "1" / "card.json").stats
    with np.load(cc_model.repository / cc_model.name / "1" / "cluster_samples.npz") as samples:
        assert samples["images"].shape[1:] == (1, 16, 16) and samples["images"].dtype == np.uint8
        np.testing.assert_array_equal(clusters[samples["index"]], samples["cluster"])
    for c in stats.clusters:
        members = np.flatnonzero(clusters == c.id)
        assert len(c.samples) == min(8, len(members))
        if c.samples:
            assert confidence[list(c.samples)].min() >= np.sort(confidence[members])[-len(c.samples)] - 1e-6
