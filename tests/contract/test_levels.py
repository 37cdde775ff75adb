"""contract.levels: answers at k clusters from the merge hierarchy, the ids and names of merged clusters, the
valid levels, the record's JSON round trip and its place in the model card."""

from __future__ import annotations

import numpy as np
import pytest

from contract.card import ModelCard
from contract.levels import (
    KNEE,
    SILHOUETTE,
    ClusterLevels,
    LevelError,
    LevelScore,
    check_level,
    level_names,
    merge,
    outputs_at,
)

# 5 head clusters: 3+4 merge first (group 5), then 0+2 (6), then {3,4}+1 (7), then everything (8).
LINKAGE = ((3, 4, 0.1, 2), (0, 2, 0.2, 2), (5, 1, 0.3, 3), (6, 7, 0.9, 5))
LEVELS = ClusterLevels(5, LINKAGE, "test", (LevelScore(1, None, None), LevelScore(2, 0.6, 0.6),
                                           LevelScore(3, 0.4, 0.1), LevelScore(4, 0.3, 0.1),
                                           LevelScore(5, 0.2, 0.1)), suggested=2, sample=100)


def head_outputs(count: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    logits = np.random.default_rng(seed).normal(size=(count, 5)) * 3
    probabilities = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    return probabilities, probabilities.argmax(1)


def test_each_level_groups_the_head_clusters_and_names_a_group_by_its_smallest_member():
    assert LEVELS.members(5) == {0: [0], 1: [1], 2: [2], 3: [3], 4: [4]}
    assert LEVELS.members(4) == {0: [0], 1: [1], 2: [2], 3: [3, 4]}
    assert LEVELS.members(3) == {0: [0, 2], 1: [1], 3: [3, 4]}
    assert LEVELS.members(2) == {0: [0, 2], 1: [1, 3, 4]}  # {3, 4} joined 1: the group takes id 1
    assert LEVELS.members(1) == {0: [0, 1, 2, 3, 4]}
    np.testing.assert_array_equal(LEVELS.assignment(3), [0, 1, 0, 3, 3])


def test_merged_probabilities_are_the_sums_of_their_members_and_sum_to_one():
    probabilities, cluster = head_outputs()
    for k in range(1, 5):
        merged = merge(LEVELS, probabilities, cluster, k)
        assert merged.probabilities.shape == (64, k)
        np.testing.assert_allclose(merged.probabilities.sum(1), 1.0, atol=1e-6)
        for column, (merged_id, members) in enumerate(LEVELS.members(k).items()):
            assert merged.ids[column] == merged_id
            np.testing.assert_allclose(merged.probabilities[:, column], probabilities[:, members].sum(1), rtol=1e-6)
        np.testing.assert_array_equal(merged.cluster, merged.ids[merged.probabilities.argmax(1)])


def test_the_trained_level_is_the_heads_answer_bit_for_bit_and_level_one_is_one_cluster():
    probabilities, cluster = head_outputs()
    at_k = merge(LEVELS, probabilities, cluster, 5)
    assert at_k.probabilities is probabilities
    np.testing.assert_array_equal(at_k.cluster, cluster)
    one = merge(LEVELS, probabilities, cluster, 1)
    assert one.ids.tolist() == [0] and set(one.cluster.tolist()) == {0}
    np.testing.assert_allclose(one.probabilities, 1.0, atol=1e-6)
    # a model without a hierarchy answers at its own K the same way
    assert merge(None, probabilities, cluster, 5).probabilities is probabilities


def test_an_image_keeps_its_merged_cluster_when_coarser_levels_merge_others():
    probabilities, cluster = head_outputs()
    for k in range(1, 5):
        finer, coarser = merge(LEVELS, probabilities, cluster, k + 1), merge(LEVELS, probabilities, cluster, k)
        # a group at level k+1 lies inside one group at level k, and that group's id is one of its members
        for merged_id, members in LEVELS.members(k + 1).items():
            parent = LEVELS.assignment(k)[members]
            assert len(set(parent.tolist())) == 1 and parent[0] <= merged_id
        assert set(coarser.ids.tolist()) <= set(finer.ids.tolist())


@pytest.mark.parametrize("requested", [0, -1, 6, "0", "6", "ten", "2.5", "", "1e1"])
def test_an_invalid_level_names_the_valid_range(requested):
    with pytest.raises(LevelError, match="from 1 to 5"):
        check_level(LEVELS, 5, requested)


def test_valid_levels_and_a_model_without_a_hierarchy():
    assert check_level(LEVELS, 5, None) == 5
    assert check_level(LEVELS, 5, "3") == 3 and check_level(LEVELS, 5, 1) == 1
    assert check_level(None, 5, None) == 5 and check_level(None, 5, "5") == 5
    with pytest.raises(LevelError, match="answers at its 5 clusters only"):
        check_level(None, 5, 3)
    with pytest.raises(LevelError, match="from 1 to 5"):
        check_level(None, 5, 9)
    probabilities, cluster = head_outputs()
    with pytest.raises(LevelError, match="no merge hierarchy"):
        merge(None, probabilities, cluster, 3)


def test_names_at_a_level_come_from_its_names_file_else_from_the_members():
    heads = ["zero", "one", "two", "three", "four"]
    assert level_names(LEVELS, 5, heads) == dict(enumerate(heads))
    assert level_names(LEVELS, 5, heads, {2: "deux"})[2] == "deux"
    assert level_names(LEVELS, 3, heads) == {0: "zero + two", 1: "one", 3: "three + four"}
    assert level_names(LEVELS, 3, heads, {3: "big"}) == {0: "zero + two", 1: "one", 3: "big"}
    assert level_names(LEVELS, 1, heads) == {0: "zero + one + two +2"}


def test_the_record_round_trips_and_a_broken_linkage_is_refused(tmp_path):
    LEVELS.write(tmp_path / "levels.json")
    again = ClusterLevels.read(tmp_path / "levels.json")
    assert again == LEVELS
    assert again.summary() == "2 (silhouette 0.60; 3: 0.40)"
    record = LEVELS.to_json()
    assert record["assignments"]["3"] == [0, 1, 0, 3, 3]  # for pages
    for rows in [LINKAGE[:3], ((3, 4, 0.1, 2), (3, 2, 0.2, 2), *LINKAGE[2:]), ((3, 4, 0.1, 3), *LINKAGE[1:])]:
        with pytest.raises(ValueError, match="linkage"):
            ClusterLevels.from_json({**record, "linkage": [list(r) for r in rows]})


def test_a_suggestion_where_the_heights_bend_says_so_and_names_the_best_silhouette(tmp_path):
    bent = ClusterLevels(5, LINKAGE, "test", LEVELS.scores, suggested=3, sample=100, suggested_by=KNEE)
    bent.write(tmp_path / "levels.json")
    assert ClusterLevels.read(tmp_path / "levels.json") == bent
    assert bent.summary() == "3 (where the merge heights bend; silhouette 0.40; 2: 0.60, 4: 0.30; best 0.60 at 2)"
    older = LEVELS.to_json()
    del older["suggested_by"]  # a record written before the knee: its suggestion was the best silhouette
    assert ClusterLevels.from_json(older).suggested_by == SILHOUETTE
    with pytest.raises(ValueError, match="suggested_by"):
        ClusterLevels.from_json({**older, "suggested_by": "vote"})


def test_the_card_carries_the_levels_and_an_older_card_without_them_still_loads(tmp_path):
    card = ModelCard("m", 1, "cc", "digits", "run", True, 2, "now", levels=LEVELS)
    card.write(tmp_path / "card.json")
    assert ModelCard.read(tmp_path / "card.json") == card
    assert "suggested: 2 (silhouette 0.60; 3: 0.40)" in card.markdown()
    record = card.to_json()
    del record["levels"]
    older = ModelCard.from_json(record)
    assert older.levels is None and older.schema_version == card.schema_version


def test_answers_at_a_level_keep_the_heads_layout_with_absorbed_clusters_at_zero():
    probabilities, cluster = head_outputs()
    outputs = {"embedding": np.ones((64, 3), np.float32), "probabilities": probabilities, "cluster": cluster,
               "path": np.arange(64)}
    assert outputs_at(LEVELS, outputs, 5) is outputs
    at_3 = outputs_at(LEVELS, outputs, 3)
    merged = merge(LEVELS, probabilities, cluster, 3)
    assert at_3["probabilities"].shape == (64, 5) and at_3["cluster"].dtype == cluster.dtype
    np.testing.assert_array_equal(at_3["probabilities"][:, [0, 1, 3]], merged.probabilities)
    assert not at_3["probabilities"][:, [2, 4]].any()  # absorbed by 0 and 3
    np.testing.assert_array_equal(at_3["cluster"], merged.cluster)
    assert at_3["embedding"] is outputs["embedding"] and at_3["path"] is outputs["path"]
