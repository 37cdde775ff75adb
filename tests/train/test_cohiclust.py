"""CoHiClust: tree probabilities, tree loss and regulariser against slow loop-based references (the
official code's leaf-only masking after pruning included), the pruning statistic and schedule, the
inference contract (ONNX export included), state_dict and a tiny training run."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.support.runs import tiny_config
from train.checkpoint import read_checkpoint
from train.losses.cohiclust import (
    leaf_level_mask,
    level_slice,
    node_mask_from_leaves,
    node_probabilities,
    tree_loss,
    tree_regularizer,
)
from train.methods import build_training_model
from train.methods.base import EpochContext, StepContext
from train.methods.cohiclust import CoHiClust
from train.trainer import train

EPS = 1e-8


def slow_node_probability(s: torch.Tensor, u: int) -> torch.Tensor:
    """P(node u) for every row: walk from u up to the root multiplying the branch probabilities."""
    prob = torch.ones(s.shape[0], dtype=s.dtype)
    while u > 0:
        parent = (u - 1) // 2
        prob = prob * (s[:, parent] if u == 2 * parent + 1 else 1 - s[:, parent])
        u = parent
    return prob


def random_tree(batch: int, depth: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 2**depth - 1, generator=g, dtype=torch.float64)


def mask_with_pruned(depth: int, pruned: list[int]) -> torch.Tensor:
    leaf_mask = torch.ones(2**depth, dtype=torch.bool)
    leaf_mask[pruned] = False
    return node_mask_from_leaves(leaf_mask)


@pytest.mark.parametrize("depth", [1, 2, 4, 5])
def test_node_probabilities_match_path_products_and_sum_to_one(depth):
    s = random_tree(6, depth, seed=depth)
    p = node_probabilities(s)
    assert p.shape == (6, 2 ** (depth + 1) - 1)
    for u in range(p.shape[1]):
        torch.testing.assert_close(p[:, u], slow_node_probability(s, u))
    for level in range(depth + 1):
        torch.testing.assert_close(p[:, level_slice(level)].sum(1), torch.ones(6, dtype=s.dtype))


def test_node_mask_from_leaves():
    # depth 2: leaves are nodes 3..6; in the tree the model describes, pruning both children of node 1
    # removes node 1 too; the losses mask the leaves only (the official masks_for_level).
    expected = torch.tensor([1, 0, 1, 0, 0, 1, 1], dtype=torch.bool)
    assert torch.equal(mask_with_pruned(2, [0, 1]), expected)
    assert mask_with_pruned(2, [0]).tolist() == [True, True, True, False, True, True, True]
    assert leaf_level_mask(torch.tensor([False, False, True, True])).tolist() == [True] * 3 + [False, False, True, True]


def slow_tree_loss(p1, p2, node_mask, depth, self_pairs_negative):
    p = torch.cat([p1, p2]) * node_mask
    n2 = p.shape[0]
    n = n2 // 2
    total = 0.0
    for level in range(1, depth + 1):
        nodes = range(2**level - 1, 2 ** (level + 1) - 1)
        pos, neg = [], []
        for i in range(n2):
            for j in range(n2):
                sim = sum(math.sqrt(p[i, u] + EPS) * math.sqrt(p[j, u] + EPS) for u in nodes)
                if j == (i + n) % n2:
                    pos.append(sim)
                elif i != j or self_pairs_negative:
                    neg.append(sim)
        total += sum(neg) / len(neg) - sum(pos) / len(pos)
    return total


@pytest.mark.parametrize("self_pairs_negative", [True, False])
@pytest.mark.parametrize("pruned", [[], [0, 5, 6]])
def test_tree_loss_matches_slow_reference(self_pairs_negative, pruned):
    depth = 3
    p1 = node_probabilities(random_tree(5, depth, seed=1))
    p2 = node_probabilities(random_tree(5, depth, seed=2))
    node_mask = mask_with_pruned(depth, pruned)
    got = tree_loss(p1, p2, node_mask, self_pairs_negative).item()
    assert got == pytest.approx(slow_tree_loss(p1, p2, node_mask, depth, self_pairs_negative), rel=1e-5)


def test_tree_loss_analytic_and_arguments():
    # Depth 1, two images in different leaves, identical views. Over the 4 views a positive pair has
    # s = 1, a self pair 1 and the 8 cross pairs about 0 (only the eps terms).
    p = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    expected = 4 / 12 - 1
    assert tree_loss(p, p.clone()).item() == pytest.approx(expected, abs=1e-3)
    assert tree_loss(p, p.clone(), self_pairs_negative=False).item() == pytest.approx(-1.0, abs=1e-3)
    with pytest.raises(ValueError):
        tree_loss(p, p, eps=0.0)
    with pytest.raises(ValueError):
        tree_loss(p, p[:, :2])  # not a complete tree
    with pytest.raises(ValueError):
        tree_loss(p[:1], p[:1], self_pairs_negative=False)  # no negative pair


def slow_regularizer(p, node_mask, depth):
    mean = p.mean(0)
    total = 0.0
    for level in range(1, depth + 1):
        for left in range(2**level - 1, 2 ** (level + 1) - 1, 2):
            if node_mask[left] and node_mask[left + 1]:
                total += 2.0**-level * 0.5 * (math.log(mean[left] + EPS) + math.log(mean[left + 1] + EPS))
    return -total


@pytest.mark.parametrize("pruned", [[], [1], [0, 1, 7]])
def test_regularizer_matches_slow_reference(pruned):
    depth = 4
    p = node_probabilities(random_tree(9, depth, seed=3))
    node_mask = mask_with_pruned(depth, pruned)
    assert tree_regularizer(p, node_mask).item() == pytest.approx(slow_regularizer(p, node_mask, depth), rel=1e-6)


def test_regularizer_balanced_tree_value():
    # All sigmoids 0.5: every node at level l has batch-mean 2^-l -> sum_l 2^-l 2^(l-1) l log 2.
    depth = 3
    p = node_probabilities(torch.full((4, 2**depth - 1), 0.5))
    expected = sum(0.5 * level * math.log(2) for level in range(1, depth + 1))
    assert tree_regularizer(p).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        tree_regularizer(p, eps=-1.0)


def official_masks(depth: int, pruned_leaves: list[int]) -> dict[int, torch.Tensor]:
    """The official masks_for_level (model.py): ones per level; pruning zeroes leaf-level entries only (main.py)."""
    masks = {level: torch.ones(2**level, dtype=torch.float64) for level in range(1, depth + 1)}
    masks[depth][pruned_leaves] = 0
    return masks


def official_tree_loss(p1, p2, masks, depth):
    """tree_losses.py tree_loss, loop by loop: per level the masked level probabilities; positives are the
    (i, i+n) pairs, every other ordered pair (the diagonal included) a negative."""
    p = torch.cat([p1, p2])
    n2 = p.shape[0]
    total = 0.0
    for level in range(1, depth + 1):
        probs = p[:, level_slice(level)] * masks[level]
        pos, neg = [], []
        for i in range(n2):
            for j in range(n2):
                sim = sum(math.sqrt(probs[i, u] + EPS) * math.sqrt(probs[j, u] + EPS) for u in range(2**level))
                (pos if j == (i + n2 // 2) % n2 else neg).append(sim)
        total += sum(neg) / len(neg) - sum(pos) / len(pos)
    return total


def official_regularizer(p, masks, depth):
    """tree_losses.py regularization_loss: a sibling pair counts unless either has mask 0 at its level
    (the official code has no eps in the log; ours adds 1e-8)."""
    total = 0.0
    for level in range(1, depth + 1):
        mean = p[:, level_slice(level)].mean(0) * masks[level]
        for left in range(0, 2**level, 2):
            if masks[level][left] != 0 and masks[level][left + 1] != 0:
                total -= 2.0**-level * 0.5 * (math.log(mean[left]) + math.log(mean[left + 1]))
    return total


def test_two_pruned_sibling_leaves_mask_the_leaf_level_only():
    # The released STL-10 mask prunes two sibling leaves; their parent keeps its probability in both losses.
    depth, pruned = 3, [2, 3]  # leaves 2 and 3: the children of node 4 (level 2)
    p1 = node_probabilities(random_tree(5, depth, seed=4))
    p2 = node_probabilities(random_tree(5, depth, seed=5))
    leaf_mask = torch.ones(2**depth, dtype=torch.bool)
    leaf_mask[pruned] = False
    masks = official_masks(depth, pruned)
    node_mask = leaf_level_mask(leaf_mask)
    assert node_mask[4] and not node_mask[2**depth - 1 + 2]
    tree = tree_loss(p1, p2, node_mask).item()
    assert tree == pytest.approx(official_tree_loss(p1, p2, masks, depth), rel=1e-5)  # float32 sums
    both = torch.cat([p1, p2])
    balance = tree_regularizer(both, node_mask).item()
    assert balance == pytest.approx(official_regularizer(both, masks, depth), rel=1e-6)
    # masking the emptied parent too (the project's earlier rule) is not the official loss
    subtree = node_mask_from_leaves(leaf_mask)
    assert tree_regularizer(both, subtree).item() != pytest.approx(balance, rel=1e-3)
    assert tree_loss(p1, p2, subtree).item() != pytest.approx(tree, rel=1e-3)


def make_model(tmp_path: Path, **overrides) -> CoHiClust:
    torch.manual_seed(0)
    cfg = tiny_config("cohiclust", tmp_path, **overrides)
    return CoHiClust(cfg, in_channels=1, num_clusters=2**cfg.depth - cfg.prune).eval()


def test_config_validation(tmp_path):
    for overrides, clusters in [(dict(prune=8), 8), (dict(prune=6), 9), (dict(depth=0, prune=0), 1),
                                (dict(simclr_epochs=50, prune_start_epoch=50), 10)]:
        cfg = tiny_config("cohiclust", tmp_path, **overrides)
        with pytest.raises(ValueError):
            CoHiClust(cfg, in_channels=1, num_clusters=clusters)


def epoch_context(images: torch.Tensor, epoch: int, epochs: int, tmp_path: Path) -> EpochContext:
    def map_images(fn):
        return torch.cat([fn(images[i:i + 16].float().div(255)) for i in range(0, images.shape[0], 16)])

    return EpochContext(epoch, epochs, images, torch.Generator(), map_images, tmp_path)


def train_steps(model: CoHiClust, epoch: int, batches: list[torch.Tensor]) -> None:
    """The trainer's calls for an epoch's training batches: forward, loss, on_step_end, model in train mode."""
    model.train()
    g = torch.Generator().manual_seed(epoch)
    for batch in batches:
        step = StepContext(epoch, 20, 0, len(batches), g, torch.arange(batch.shape[0]))
        outputs = model(batch, batch.flip(3), step)
        model.loss(outputs, step)
        model.on_step_end(step, {k: v.detach() for k, v in outputs.items()})
    model.eval()


def test_pruning_statistic_is_the_epochs_mean_of_masked_training_leaf_probabilities(tmp_path):
    model = make_model(tmp_path, simclr_epochs=0, prune_start_epoch=1, epochs=10)
    model.prune_smallest(torch.arange(16.0), 1)  # leaf 0 already gone
    g = torch.Generator().manual_seed(9)
    batches = [torch.rand(6, 1, 16, 16, generator=g) for _ in range(3)]
    model.on_epoch_start(epoch_context(batches[0], 1, 10, tmp_path))
    train_steps(model, 1, batches)
    # slow reference (main.py, tree_losses.py): per batch the mean over both views' rows (one pass per view) of
    # the masked leaf probabilities, summed over the batches, divided by their number; the smallest surviving
    # leaf goes
    model.train()
    with torch.no_grad():
        means = []
        for batch in batches:
            h = torch.cat([model.backbone(batch), model.backbone(batch.flip(3))])
            leaves = model.node_probabilities(h)[:, level_slice(model.depth)] * model.leaf_mask
            means.append(leaves.mean(0))
        mass = sum(means) / len(means)
    model.eval()
    torch.testing.assert_close(model.epoch_leaf_mass / model.epoch_batches, mass)
    expected = int(torch.where(mass > 0, mass, torch.ones_like(mass)).argmin())
    model.on_epoch_end(epoch_context(batches[0], 1, 10, tmp_path))  # 1-based epoch 2 >= prune_start_epoch 1
    assert (~model.leaf_mask).nonzero().squeeze(1).tolist() == sorted([0, expected])
    model.on_epoch_start(epoch_context(batches[0], 2, 10, tmp_path))  # a new epoch starts from nothing
    assert model.epoch_batches == 0 and not model.epoch_leaf_mass.any()


def test_the_loss_leaves_the_pruning_statistic_to_on_step_end(tmp_path):
    """loss() is a function of its outputs: the leaf masses are gathered by the step hook, once a step."""
    model = make_model(tmp_path, simclr_epochs=0, prune_start_epoch=1, epochs=10).train()
    batch = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    step = StepContext(0, 10, 0, 1, torch.Generator(), torch.arange(6))
    outputs = model(batch, batch.flip(3), step)
    model.loss(outputs, step)
    assert model.epoch_batches == 0 and not model.epoch_leaf_mass.any()
    model.on_step_end(step, {k: v.detach() for k, v in outputs.items()})
    leaves = torch.cat([outputs["p1"], outputs["p2"]])[:, level_slice(model.depth)].detach()
    assert model.epoch_batches == 1
    torch.testing.assert_close(model.epoch_leaf_mass, leaves.mean(0))


def test_pruning_schedule_and_assignments(tmp_path):
    model = make_model(tmp_path, simclr_epochs=2, prune_start_epoch=4, epochs=20)  # prunes at the ends of 4..9
    depth, prune = model.depth, model.cfg.prune
    images = torch.randint(0, 256, (12, 1, 16, 16), dtype=torch.uint8)
    batch = images.float().div(255)
    for epoch in range(20):
        ctx = epoch_context(images, epoch, 20, tmp_path)
        model.on_epoch_start(ctx)
        train_steps(model, epoch, [batch])
        model.on_epoch_end(ctx)
        gone = min(prune, max(0, epoch + 1 - 3))  # the end of 1-based epoch 4 is that of 0-based 3
        assert int((~model.leaf_mask).sum()) == gone
        out = model.head_outputs(torch.randn(64, model.backbone.out_dim) * 5)
        k = 2**depth - gone
        assert out["probabilities"].shape == (64, k)
        torch.testing.assert_close(out["probabilities"].sum(1), torch.ones(64))
        assert int(out["cluster"].max()) < k
        leaf = out["path"][:, -1] - (2**depth - 1)
        assert model.leaf_mask[leaf].all(), "a pruned leaf received an assignment"
        survivors = model.leaf_mask.nonzero().squeeze(1)
        assert torch.equal(survivors[out["cluster"]], leaf)  # cluster ids name the path's leaf
        for level in range(1, depth):  # each level is the parent of the next
            assert torch.equal(out["path"][:, level - 1], (out["path"][:, level] - 1) // 2)
    assert int(model.leaf_mask.sum()) == model.num_clusters == 2**depth - prune


def test_pruning_removes_smallest_surviving_leaf_and_catches_up(tmp_path):
    model = make_model(tmp_path)
    mass = torch.arange(16, 0, -1, dtype=torch.float32)  # leaf 15 lightest, then 14, ...
    model.prune_smallest(mass, 1)
    model.prune_smallest(mass, 2)
    assert (~model.leaf_mask).nonzero().squeeze(1).tolist() == [13, 14, 15]
    # A run shorter than the schedule prunes everything left at the end of its last epoch.
    assert model.pruned_after(0, 2) == 0 and model.pruned_after(1, 2) == model.cfg.prune
    # The official schedule (main.py: start_pruning_epochs 1050): the ends of epochs 1051..1056 prune.
    official = make_model(tmp_path, preset="paper", epochs=1500, simclr_epochs=1000, prune_start_epoch=1051)
    assert [official.pruned_after(e - 1, 1500) for e in (1050, 1051, 1056, 1057)] == [0, 1, 6, 6]


def test_state_dict_round_trip_keeps_mask(tmp_path):
    model = make_model(tmp_path)
    model.prune_smallest(torch.rand(16), 4)
    assert "leaf_mask" in model.state_dict()
    fresh = make_model(tmp_path)
    assert bool(fresh.leaf_mask.all())
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.leaf_mask, model.leaf_mask)
    features = torch.randn(8, model.backbone.out_dim)
    for key, value in model.head_outputs(features).items():
        torch.testing.assert_close(fresh.head_outputs(features)[key], value)


class _Head(nn.Module):
    def __init__(self, model: CoHiClust) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.head_outputs(features)
        return out["embedding"], out["probabilities"], out["cluster"], out["path"]


def test_head_exports_to_onnx_with_pruned_leaves(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = make_model(tmp_path)
    model.prune_smallest(torch.rand(16, generator=torch.Generator().manual_seed(0)), 6)
    head = _Head(model).eval()
    features = torch.randn(5, model.backbone.out_dim) * 3
    file = tmp_path / "head.onnx"
    torch.onnx.export(head, (features,), str(file), dynamo=False, opset_version=17, input_names=["features"],
                      output_names=["embedding", "probabilities", "cluster", "path"],
                      dynamic_axes={"features": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    other = torch.randn(11, model.backbone.out_dim) * 3  # another batch size than the traced one
    got = session.run(None, {"features": other.numpy()})
    with torch.no_grad():
        expected = head(other)
    assert got[1].shape == (11, 10)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-4, atol=1e-5)


def test_tiny_run_writes_tree_and_level_metrics(tiny_run):
    run_dir = tiny_run("cohiclust")
    results = json.loads((run_dir / "results.json").read_text())
    levels = results["metrics"]["levels"]
    assert sorted(levels) == ["1", "2", "3", "4"]
    assert all({"nmi", "acc", "ari"} <= set(v) for v in levels.values())
    tree = json.loads((run_dir / "tree.json").read_text())
    assert len(tree["leaves"]) == 10 and len(tree["pruned_leaves"]) == 6
    nodes = {n["id"]: n for n in tree["nodes"]}
    assert nodes[0]["size"] == results["num_images"]
    for node in nodes.values():
        if node["children"]:
            assert sum(nodes[c]["size"] for c in node["children"]) == node["size"]
    assert set(tree["assignments"]["4"]) <= set(tree["leaves"])
    assert (run_dir / "tree.png").stat().st_size > 0


def test_the_simclr_only_epochs_leave_the_tree_head_as_it_was(tmp_path, monkeypatch):
    """Through the SimCLR-only epochs the loss has no tree term: the tree head gets no gradient, so Adam (weight
    decay 1e-6) leaves it exactly as initialised while the rest trains; with the tree terms at weight 0 its
    normalised weight decay moved it by about lr a step, towards 0 (issue 26). Then the tree trains."""
    cfg = tiny_config("cohiclust", tmp_path, epochs=3, simclr_epochs=2, prune_start_epoch=4)
    assert cfg.weight_decay > 0
    seen: dict[int, dict[str, torch.Tensor]] = {}
    start = CoHiClust.on_epoch_start

    def snapshot(self, ctx):  # the weights each epoch starts from
        seen[ctx.epoch] = {k: v.detach().clone() for k, v in self.state_dict().items()}
        start(self, ctx)

    monkeypatch.setattr(CoHiClust, "on_epoch_start", snapshot)
    train(cfg)
    torch.manual_seed(cfg.seed)  # the trainer's initialisation (set_up)
    initial = build_training_model(cfg, 1, 10).state_dict()
    after_simclr, after = seen[2], read_checkpoint(tmp_path)["model"]
    for key in ("tree_head.0.weight", "tree_head.0.bias"):
        assert torch.equal(after_simclr[key], initial[key]), key
        assert not torch.equal(after[key], initial[key]), key  # the tree's epoch trains it
    for key in ("projection_head.0.weight", "backbone.trunk.net.0.0.weight"):
        assert not torch.equal(after_simclr[key], initial[key]), key
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [("tree" in m) for m in metrics] == [False, False, True]
    assert all(m["loss"] == m["simclr"] for m in metrics[:2])  # the loss is SimCLR's alone


def test_a_checkpoint_with_the_old_projection_bias_is_refused_clearly(tmp_path):
    model = make_model(tmp_path)
    state = model.state_dict()
    state["projection_head.0.bias"] = torch.zeros(model.projection_head[0].out_features)
    with pytest.raises(ValueError, match="earlier version of this project.*bias"):
        model.load_state_dict(state)
