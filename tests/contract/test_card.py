"""contract.card: calibration flags and scores, the records' JSON round trip, names, centroid distances."""

from __future__ import annotations

import numpy as np
import pytest

from contract.card import (
    CARD_SCHEMA_VERSION,
    Calibration,
    ClusterInfo,
    ClusterStats,
    ModelCard,
    cluster_names,
    nearest_centroid_distance,
    read_names,
)


def test_calibration_flags_the_unusual_side_and_scores_by_rank():
    values = np.arange(1000, dtype=np.float64) / 1000  # 0.000 .. 0.999
    high = Calibration.measure(values, 0.99, higher_is_unusual=True)
    low = Calibration.measure(values, 0.05, higher_is_unusual=False)
    assert high.threshold == pytest.approx(np.percentile(values, 99))
    assert high.flag(values).mean() == pytest.approx(0.01, abs=0.001)
    assert low.flag(values).mean() == pytest.approx(0.05, abs=0.001)
    np.testing.assert_allclose(high.score(np.array([-1.0, 0.5, 5.0])), [0, 0.5, 1], atol=0.002)
    np.testing.assert_allclose(low.score(np.array([-1.0, 0.5, 5.0])), [1, 0.5, 0], atol=0.002)
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibration(tuple(range(101))[::-1], 0.5, True)


def test_nearest_centroid_distance_skips_empty_clusters():
    centroids = np.array([[1, 0], [np.nan, np.nan], [0, 1]], np.float32)
    embedding = np.array([[1, 0], [0.6, 0.8], [-1, 0]], np.float32)
    np.testing.assert_allclose(nearest_centroid_distance(embedding, centroids), [0, 0.2, 1], atol=1e-6)


def stats() -> ClusterStats:
    cal = Calibration.measure(np.linspace(0, 1, 50), 0.05, False)
    ood = Calibration.measure(np.linspace(0, 1, 50), 0.99, True)
    clusters = (ClusterInfo(0, 3, (1.0, 0.0), (4, 2), "cat", "cat", 1.0, 1.0),
                ClusterInfo(1, 0, None), ClusterInfo(2, 2, (0.0, 1.0), (1,), "cat", "dog", 0.5, 0.5))
    prototypes = ((1.0, 0.0), (0.6, 0.8), (0.0, 1.0))
    return ClusterStats(5, clusters, cal, ood, ("cat", "dog"), ((3, 0), (0, 0), (1, 1)), prototypes)


def test_records_round_trip_through_json(tmp_path):
    card = ModelCard("m", 3, "cc", "digits", "run-1", True, 2, "now", {"nmi": 0.5}, {"epochs": 2}, stats())
    card.write(tmp_path / "card.json")
    again = ModelCard.read(tmp_path / "card.json")
    assert again == card
    assert again.to_json()["stats"]["clusters"][0]["share"] == pytest.approx(0.6)
    assert "| 2 | cat (2) | 2 |" in again.markdown()
    with pytest.raises(ValueError, match="card.json"):
        (tmp_path / "card.json").write_text('{"name": 1, "stats": {"clusters": 3}}')
        ModelCard.read(tmp_path / "card.json")


def test_ood_reference_is_the_prototypes_and_the_centroids_for_statistics_written_before_them(tmp_path):
    with_prototypes = stats()
    np.testing.assert_array_equal(with_prototypes.ood_reference(), np.array(with_prototypes.ood_prototypes, np.float32))
    record = with_prototypes.to_json()
    del record["ood_prototypes"]  # cluster_stats.json or a card of schema 1: calibrated to the centroids
    older = ClusterStats.from_json(record)
    assert older.ood_prototypes is None
    np.testing.assert_array_equal(older.ood_reference(), older.centroids())
    v1 = ModelCard("m", 1, None, None, None, None, None, None, stats=older, schema_version=1)
    v1.write(tmp_path / "card.json")
    assert ModelCard.read(tmp_path / "card.json") == v1
    with pytest.raises(ValueError, match="ood_prototypes"):
        ClusterStats(**{**with_prototypes.__dict__, "ood_prototypes": ((1.0, 0.0, 0.0),)})


def test_a_card_newer_than_this_code_is_refused():
    with pytest.raises(ValueError, match="upgrade"):
        ModelCard("m", 1, None, None, None, None, None, None, schema_version=CARD_SCHEMA_VERSION + 1)


def test_default_names_are_mapped_classes_made_unique():
    card = ModelCard("m", 1, None, None, None, None, None, None, stats=stats())
    assert cluster_names(card, 3) == ["cat (0)", "cluster 1", "cat (2)"]
    assert cluster_names(None, 2) == ["cluster 0", "cluster 1"]


def test_a_names_file_with_a_key_that_is_no_cluster_id_is_an_error_naming_it(tmp_path):
    path = tmp_path / "cluster_names.json"
    path.write_text('{"0": "zero", "1": "one"}')
    assert read_names(path, 2) == {0: "zero", 1: "one"}
    for bad in ('{"²": "two"}', '{"2": "two"}', '["zero"]', '{"0": 7}'):
        path.write_text(bad)
        with pytest.raises(ValueError, match=str(path)):
            read_names(path, 2)
