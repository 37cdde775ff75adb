"""CoHiClust losses (Znalezniak et al., "Contrastive Hierarchical Clustering", ECML PKDD 2023).

The tree is a complete binary tree of depth L with nodes in heap order: root 0, the children of
node u are 2u + 1 (left) and 2u + 2 (right); level l holds the 2^l nodes 2^l - 1 ... 2^(l+1) - 2.
The tree head gives, per image, the sigmoid s_u of each of the 2^L - 1 internal nodes: the
probability of going left at u. A node's probability is the product of the branch probabilities
on its path from the root.
"""

from __future__ import annotations

import torch


def _check_eps(eps: float) -> None:
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")


def tree_depth(num_nodes: int) -> int:
    """Depth L of the complete binary tree with num_nodes = 2^(L+1) - 1 nodes (heap order)."""
    depth = (num_nodes + 1).bit_length() - 2
    if depth < 1 or num_nodes != 2 ** (depth + 1) - 1:
        raise ValueError(f"{num_nodes} nodes is not a complete binary tree of depth >= 1 (2^(L+1) - 1)")
    return depth


def level_slice(level: int) -> slice:
    """Columns of level `level` in a heap-ordered (B, 2^(L+1) - 1) node tensor."""
    return slice(2**level - 1, 2 ** (level + 1) - 1)


def node_probabilities(s: torch.Tensor) -> torch.Tensor:
    """Probabilities of every node, all levels at once.

    s: (B, 2^L - 1) sigmoids of the internal nodes (heap order), s[:, u] = P(left child of u | u).
    Returns (B, 2^(L+1) - 1) in heap order: column 0 is the root (1), level l is the slice
    level_slice(l) and each level sums to 1 per row. One tensor operation per level:
    P_l = (P_{l-1} x [s, 1 - s] of the level's parents), interleaved left/right.
    """
    depth = tree_depth(int(s.shape[1]) * 2 + 1)
    levels = [torch.ones_like(s[:, :1])]
    for level in range(1, depth + 1):
        parents = s[:, level_slice(level - 1)]
        branches = torch.stack([parents, 1 - parents], dim=2)  # (B, 2^(l-1), 2): left, right
        levels.append((levels[-1].unsqueeze(2) * branches).flatten(1))
    return torch.cat(levels, dim=1)


def leaf_level_mask(leaf_mask: torch.Tensor) -> torch.Tensor:
    """(2^L,) bool surviving leaves -> (2^(L+1) - 1,) bool node mask of the losses (heap order).

    Only the leaf level is masked, as the official code (masks_for_level: pruning writes the leaf
    level only): internal nodes keep mask 1 even when both their leaves are pruned.
    """
    internal = torch.ones(leaf_mask.numel() - 1, dtype=torch.bool, device=leaf_mask.device)
    return torch.cat([internal, leaf_mask.bool()])


def node_mask_from_leaves(leaf_mask: torch.Tensor) -> torch.Tensor:
    """(2^L,) bool surviving leaves -> (2^(L+1) - 1,) bool nodes of the pruned tree (heap order).

    A node survives while at least one leaf below it does: the tree the model describes (tree.json);
    the losses mask the leaves only (leaf_level_mask).
    """
    levels = [leaf_mask.bool()]
    while levels[0].numel() > 1:
        levels.insert(0, levels[0].view(-1, 2).any(dim=1))
    return torch.cat(levels)


def tree_loss(p1: torch.Tensor, p2: torch.Tensor, node_mask: torch.Tensor | None = None,
              self_pairs_negative: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """CoHiClust's hierarchical contrastive loss, summed over the levels 1..L.

    p1, p2: (N, 2^(L+1) - 1) node probabilities of the two views (see node_probabilities); row i
    of p1 and row i of p2 are the two views of one image. node_mask: (2^(L+1) - 1,) bool, pruned
    nodes False; their probabilities are set to zero first. Over the ordered pairs (i, j) of the
    2N views, s_ij = sum over a level's nodes of sqrt(P_i + eps) sqrt(P_j + eps); the level's
    loss is mean(s) over negative pairs - mean(s) over positive pairs (the two views of one
    image). With self_pairs_negative (the reference code) the pairs (i, i) count as negatives.
    """
    _check_eps(eps)
    if p1.shape != p2.shape or p1.dim() != 2:
        raise ValueError(f"expected two (N, M) tensors of one shape, got {tuple(p1.shape)} and {tuple(p2.shape)}")
    tree_depth(p1.shape[1])
    n = p1.shape[0]
    if n < 2 and not self_pairs_negative:
        raise ValueError("a batch of one image has no negative pair unless self_pairs_negative")
    p = torch.cat([p1, p2]).float()
    if node_mask is not None:
        p = p * node_mask.to(p.dtype)
    q = torch.sqrt(p[:, 1:] + eps)  # the root (level 0) is not part of the loss
    s = q @ q.T  # (2N, 2N): s_ij summed over the levels 1..L
    positive = torch.roll(torch.eye(2 * n, dtype=torch.bool, device=p.device), n, dims=1)
    negative = ~positive
    if not self_pairs_negative:
        negative.fill_diagonal_(False)
    return s[negative].mean() - s[positive].mean()


def tree_regularizer(p: torch.Tensor, node_mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Balance term: -sum_l 2^-l sum over surviving sibling pairs of (log m_left + log m_right) / 2.

    p: (B, 2^(L+1) - 1) node probabilities (both views of a batch, concatenated); m_u is the batch
    mean of column u (plus eps). node_mask: (2^(L+1) - 1,) bool; a sibling pair counts only when
    both of its nodes survive. The method weights this by 2^-L.
    """
    _check_eps(eps)
    depth = tree_depth(p.shape[1])
    log_mass = torch.log(p.float().mean(0) + eps)
    pair_mask = torch.ones_like(log_mass[1:]) if node_mask is None else node_mask[1:].to(log_mass.dtype)
    pair_mask = pair_mask.view(-1, 2).prod(1)  # (2^(L+1) - 2) / 2 sibling pairs, level by level
    pair_term = 0.5 * log_mass[1:].view(-1, 2).sum(1) * pair_mask
    levels = torch.cat([torch.full((2 ** (level - 1),), float(level)) for level in range(1, depth + 1)])
    weights = torch.pow(2.0, -levels).to(p.device)
    return -(weights * pair_term).sum()
