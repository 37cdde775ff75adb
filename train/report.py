"""Run-directory artefacts: cluster assignments (CSV), confusion matrix and gallery (PNG), JSON.

Every file is written atomically (temporary file in the same directory, then os.replace), so a
reader never sees a half-written artefact. Plots use matplotlib's object API with the Agg canvas,
so no global backend is touched and pyplot is never imported.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contract.files import atomic_open
from contract.levels import ClusterLevels
from train.metrics import contingency, hungarian_match

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_GALLERY_ROWS = 100
"""The gallery shows at most this many clusters (the ones with the smallest ids)."""
MAX_ANNOTATED_CELLS = 20
"""The confusion plot writes counts in cells when both sides of the table are at most this."""
MAX_TICK_LABELS = 50
"""An axis of the confusion plot gets one tick label per row/column up to this many."""


def save_figure(fig: Figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")


def _figure(**kwargs: Any) -> Figure:
    from matplotlib.figure import Figure  # matplotlib only where a plot is drawn: `--help` stays light

    return Figure(**kwargs)


def tile_canvas(images: np.ndarray, rows: list[np.ndarray], cols: int) -> np.ndarray:
    """One row of tiles per entry of `rows` (indices into images (N, C, H, W) uint8), `cols` wide, on white.

    Returns (H', W', 3) uint8; a row with fewer indices than `cols` leaves white tiles.
    """
    _, _, h, w = images.shape
    pad = max(1, min(h, w) // 8)
    canvas = np.full((max(len(rows), 1) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for r, indices in enumerate(rows):
        for col, idx in enumerate(indices[:cols]):
            y, x = pad + r * (h + pad), pad + col * (w + pad)
            canvas[y : y + h, x : x + w] = images[idx].transpose(1, 2, 0)  # C=1 broadcasts to gray
    return canvas


def write_assignments(
    path: Path,
    sources: list[str],
    clusters: np.ndarray,
    confidence: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: list[str] | None = None,
) -> None:
    """Write one CSV row per sample: index,source,cluster,confidence[,label[,class_name]].

    sources: (N,) image paths or ids; clusters: (N,) int; confidence: (N,) float (probability of
    the assigned cluster); labels: (N,) int ground truth, optional; class_names: name per label id,
    optional and only with labels (adds the class_name column).
    """
    clusters = np.asarray(clusters).reshape(-1)
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    n = len(sources)
    lengths = {"sources": n, "clusters": clusters.size, "confidence": confidence.size}
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        lengths["labels"] = labels.size
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs differ in length: {lengths}")
    if class_names is not None:
        if labels is None:
            raise ValueError("class_names needs labels")
        if n and labels.max() >= len(class_names):
            raise ValueError(f"label {labels.max()} has no name among {len(class_names)} class_names")

    header = ["index", "source", "cluster", "confidence"]
    if labels is not None:
        header.append("label")
        if class_names is not None:
            header.append("class_name")
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(n):
            row: list[Any] = [i, sources[i], int(clusters[i]), f"{confidence[i]:.6f}"]
            if labels is not None:
                row.append(int(labels[i]))
                if class_names is not None:
                    row.append(class_names[int(labels[i])])
            writer.writerow(row)


def hungarian_cluster_order(table: np.ndarray) -> np.ndarray:
    """Row order of a (clusters, classes) table that puts each matched cluster on its class's diagonal.

    Matched clusters come first, ordered by their class column; unmatched clusters follow, largest
    first. Returns a permutation of range(num_clusters).
    """
    rows, cols = hungarian_match(table)
    matched = rows[np.argsort(cols, kind="stable")]
    rest = np.setdiff1d(np.arange(table.shape[0]), rows)
    rest = rest[np.argsort(-table[rest].sum(axis=1), kind="stable")]
    return np.concatenate([matched, rest]).astype(np.int64)


def plot_confusion(
    path: Path, labels: np.ndarray, clusters: np.ndarray, class_names: list[str] | None = None
) -> None:
    """Save a PNG of the cluster x class count table, clusters in Hungarian order (a diagonal when good).

    Classes run along x (named by class_names[label id] if given), clusters along y. Cells carry
    counts when the table is at most 20 x 20; axes with more than 50 entries get no tick labels.
    """
    table, cluster_ids, class_ids = contingency(labels, clusters)
    if class_names is not None and class_ids.max() >= len(class_names):
        raise ValueError(f"label {class_ids.max()} has no name among {len(class_names)} class_names")
    order = hungarian_cluster_order(table)
    table, cluster_ids = table[order], cluster_ids[order]
    n_clusters, n_classes = table.shape

    fig = _figure(figsize=(min(max(3 + 0.35 * n_classes, 6), 20), min(max(2 + 0.35 * n_clusters, 5), 20)))
    ax = fig.add_subplot()
    im = ax.imshow(table, cmap="Blues", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="samples")
    ax.set_xlabel("class")
    ax.set_ylabel("cluster")
    ax.set_title(f"{n_clusters} clusters x {n_classes} classes (clusters in Hungarian order)")

    if n_classes <= MAX_TICK_LABELS:
        names = [class_names[c] if class_names is not None else str(c) for c in class_ids]
        ax.set_xticks(np.arange(n_classes), names, rotation=90, fontsize=8)
    else:
        ax.set_xticks([])
    if n_clusters <= MAX_TICK_LABELS:
        ax.set_yticks(np.arange(n_clusters), [str(c) for c in cluster_ids], fontsize=8)
    else:
        ax.set_yticks([])
    if n_clusters <= MAX_ANNOTATED_CELLS and n_classes <= MAX_ANNOTATED_CELLS:
        threshold = table.max() / 2
        for i in range(n_clusters):
            for j in range(n_classes):
                if table[i, j]:
                    color = "white" if table[i, j] > threshold else "black"
                    ax.text(j, i, str(table[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    save_figure(fig, path)


def gallery_indices(
    clusters: np.ndarray, per_cluster: int, seed: int = 0, num_clusters: int | None = None
) -> dict[int, np.ndarray]:
    """Sample indices to show per cluster: {cluster id: sorted indices}, min(size, per_cluster) each.

    Keys are range(num_clusters) (default max(clusters) + 1), so empty clusters map to empty arrays.
    """
    clusters = np.asarray(clusters).reshape(-1)
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be >= 1, got {per_cluster}")
    if clusters.size and clusters.min() < 0:
        raise ValueError(f"cluster ids must be non-negative, got {clusters.min()}")
    k = int(clusters.max()) + 1 if clusters.size else 0
    if num_clusters is not None:
        if num_clusters < k:
            raise ValueError(f"num_clusters={num_clusters} but cluster id {k - 1} occurs")
        k = num_clusters
    rng = np.random.default_rng(seed)
    out: dict[int, np.ndarray] = {}
    for c in range(k):
        members = np.flatnonzero(clusters == c)
        if members.size > per_cluster:
            members = np.sort(rng.choice(members, per_cluster, replace=False))
        out[c] = members
    return out


def plot_gallery(
    path: Path,
    images: np.ndarray,
    clusters: np.ndarray,
    per_cluster: int = 10,
    seed: int = 0,
    titles: dict[int, str] | None = None,
    num_clusters: int | None = None,
) -> None:
    """Save a PNG with one row of random samples per cluster (at most the first 100 clusters).

    images: (N, C, H, W) uint8 with C = 1 (gray) or 3 (RGB); clusters: (N,) int ids.
    Rows are cluster ids 0..num_clusters-1 (default max id + 1), each labelled with its id, its
    size and titles[id] when given; an empty cluster is an empty labelled row.
    """
    images = np.asarray(images)
    clusters = np.asarray(clusters).reshape(-1)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C 1 or 3, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.shape[0] != clusters.size:
        raise ValueError(f"{images.shape[0]} images but {clusters.size} cluster ids")
    picks = gallery_indices(clusters, per_cluster, seed, num_clusters)
    total = len(picks)
    rows = sorted(picks)[:MAX_GALLERY_ROWS]
    sizes = np.bincount(clusters, minlength=total) if clusters.size else np.zeros(total, np.int64)

    _, _, h, _ = images.shape
    pad = max(1, min(images.shape[2:]) // 8)
    canvas = tile_canvas(images, [picks[cid] for cid in rows], per_cluster)

    # Undistorted tiles of about 0.9 inch, shrunk so the image part stays within 18 x 36 inches.
    img_w = 0.9 * per_cluster
    img_h = img_w * canvas.shape[0] / canvas.shape[1]
    scale = min(1.0, 18 / img_w, 36 / img_h)
    fig = _figure(figsize=(scale * img_w + 2.5, scale * img_h + 1))
    ax = fig.add_subplot()
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    labels = []
    for cid in rows:
        text = f"{cid} (n={sizes[cid]})"
        if titles is not None and cid in titles:
            text += f" {titles[cid]}"
        labels.append(text)
    ax.set_yticks(
        pad + np.arange(len(rows)) * (h + pad) + h / 2, labels, fontsize=8 if len(rows) <= 30 else 6
    )
    ax.tick_params(axis="y", length=0)
    ax.set_ylabel("cluster")
    shown = f"first {len(rows)} of {total} clusters" if total > len(rows) else f"{total} clusters"
    ax.set_title(f"{shown}, up to {per_cluster} random samples each")
    fig.tight_layout()
    save_figure(fig, path)


def plot_tree(path: Path, images: np.ndarray, clusters: np.ndarray, nodes: list[dict[str, Any]], depth: int,
              cols: int = 3, rows: int = 4, seed: int = 0) -> None:
    """Save a PNG of the pruned tree (node id and size) with cols x rows random samples under each leaf.

    images: (N, C, H, W) uint8; clusters: (N,) cluster ids; nodes: tree.json's "nodes" (surviving only).
    """
    leaves = [n for n in nodes if "cluster" in n]
    x = {n["id"]: float(n["cluster"]) for n in leaves}
    for node in sorted(nodes, key=lambda n: -n["level"]):  # parents sit above the middle of their children
        if node["children"]:
            x[node["id"]] = float(np.mean([x[c] for c in node["children"]]))
    picks = gallery_indices(clusters, cols * rows, seed, num_clusters=len(leaves))

    k = len(leaves)
    tile_w = 1.1
    tile_h = tile_w * rows / cols
    from matplotlib.gridspec import GridSpec

    fig = _figure(figsize=(max(6.0, tile_w * k), 0.75 * (depth + 1) + tile_h + 0.8))
    grid = GridSpec(2, k, figure=fig, height_ratios=[0.75 * (depth + 1), tile_h], wspace=0, hspace=0.02,
                    left=0.01, right=0.99, top=0.93, bottom=0.01)
    ax = fig.add_subplot(grid[0, :])
    for node in nodes:
        for child in node["children"]:
            ax.plot([x[node["id"]], x[child]], [node["level"], node["level"] + 1], color="0.5", lw=1, zorder=1)
    for node in nodes:
        text = f"{node['id']}\nn={node['size']}"
        if "cluster" in node:
            text = f"cluster {node['cluster']}\n" + text
        ax.text(x[node["id"]], node["level"], text, ha="center", va="center", fontsize=7, zorder=2,
                bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.3", lw=0.6))
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_ylim(depth + 0.5, -0.5)
    ax.axis("off")
    ax.set_title(f"CoHiClust tree: depth {depth}, {k} leaves (node id, size); {cols * rows} random samples per leaf")
    for leaf in leaves:
        c = leaf["cluster"]
        tile = fig.add_subplot(grid[1, c])
        grid_rows = [picks[c][r * cols:(r + 1) * cols] for r in range(rows)]
        tile.imshow(tile_canvas(images, grid_rows, cols), interpolation="nearest")
        tile.axis("off")
    save_figure(fig, path)


def plot_levels(path: Path, levels: ClusterLevels, names: list[str]) -> None:
    """Save a PNG of the scores per number of clusters (silhouette, and the height of the merge that ends each
    level: the curve whose knee is suggested; the suggested k marked) above the dendrogram of the merges, cut
    at the suggested k, its leaves the K clusters labelled "id name"."""
    from scipy.cluster.hierarchy import dendrogram

    k = levels.num_clusters
    fig = _figure(figsize=(min(max(6.0, 0.3 * k + 3), 24), 8))
    scores_ax, tree_ax = fig.subplots(2, 1, height_ratios=[1, 1.4])
    scored = [s for s in levels.scores if s.silhouette is not None]
    scores_ax.plot([s.k for s in scored], [s.silhouette for s in scored], "o-", color="C0", ms=3, label="silhouette")
    scores_ax.set_xlabel("number of clusters k")
    scores_ax.set_ylabel("silhouette (cosine)", color="C0")
    heights = levels.heights()  # row i ends level k - i
    height_ax = scores_ax.twinx()
    height_ax.plot(range(k, 1, -1), heights, "s-", color="C1", ms=3, alpha=0.7)
    height_ax.set_ylabel("height of the merge that ends level k", color="C1")
    if levels.suggested is not None:
        scores_ax.axvline(levels.suggested, color="C3", ls="--", lw=1)
        if 1 < levels.suggested < k:  # between the merge that ends the level and the one that made it
            cut = heights[k - levels.suggested - 1: k - levels.suggested + 1].mean()
            tree_ax.axhline(cut, color="C3", ls="--", lw=1)
    scores_ax.set_title(f"suggested clusters: {levels.summary()}", fontsize=9)
    if k > 1:
        labels = [f"{c} {n}" if n != str(c) else str(c) for c, n in enumerate(names)]
        dendrogram(np.array(levels.linkage, np.float64), ax=tree_ax, labels=labels, leaf_rotation=90,
                   leaf_font_size=7 if k <= 60 else 5, color_threshold=0, above_threshold_color="0.3")
    tree_ax.set_ylabel("merge height")
    tree_ax.set_title(f"{k} clusters merged pairwise: {levels.criterion}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
