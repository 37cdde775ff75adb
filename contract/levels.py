"""How many clusters: a model's K head clusters merged pairwise into fewer, and answers at any level k.

    levels = ClusterLevels.read(run_dir / CLUSTER_LEVELS_FILE)   # written by the trainer (train/levels.py)
    k = check_level(levels, K, "8")                             # LevelError names the valid range
    merged = merge(levels, probabilities, cluster, k)           # (B, k) member sums, merged ids
    answers = outputs_at(levels, outputs, k)                    # the same at level k, in the head's (B, K) layout
    names = level_names(levels, k, head_names)                  # {merged id: name} built from the members

The hierarchy is scipy's linkage format: K-1 rows [a, b, height, count], row i merging groups a and
b (head clusters 0..K-1, or the group made by row j as K+j) into group K+i at `height`, count
being its head clusters; scipy's `dendrogram` draws it. At level k (1 <= k <= K) the first K-k rows
have merged. A merged cluster's probability is the sum of its members' probabilities and its id is
its smallest member's head id, so an id names the same group at every level it lives through (when
two groups merge, the one holding the smaller id keeps it). Level K is the head's own answer,
untouched. The gateway and the bulk worker both answer through `merge`; numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract import files
from contract.names import CLUSTER, PROBABILITIES

MEMBERS_IN_NAME = 3
"""A merged cluster without a name of its own is named after this many of its members, then "+N"."""


KNEE = "knee"
"""`suggested_by`: where the curve of merge heights bends (train/levels.py)."""
SILHOUETTE = "silhouette"
"""`suggested_by`: the level with the best silhouette."""


def best_silhouette(scores: tuple[LevelScore, ...] | list[LevelScore]) -> LevelScore | None:
    """The scored level with the highest silhouette, the smaller k on a tie (None when none was scored)."""
    scored = [s for s in scores if s.silhouette is not None]
    return max(scored, key=lambda s: (s.silhouette, -s.k)) if scored else None


class LevelError(ValueError):
    """A level (number of clusters) the model cannot answer at."""


@dataclass(frozen=True)
class LevelScore:
    """The evidence for answering at k clusters, measured on the training embeddings."""

    k: int
    silhouette: float | None  # mean cosine silhouette of a seeded sample at level k (None for k = 1)
    gap: float | None  # height of the merge that ends level k / that of the merge that made it (None: k = 1, K)

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "silhouette": self.silhouette, "gap": self.gap}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LevelScore:
        def number(key: str) -> float | None:
            return None if data.get(key) is None else float(data[key])

        return cls(int(data["k"]), number("silhouette"), number("gap"))


@dataclass(frozen=True)
class ClusterLevels:
    """A model's merge hierarchy over its K head clusters and the suggested number of clusters
    (cluster_levels.json in a run, `levels` of a model card)."""

    num_clusters: int  # K
    linkage: tuple[tuple[int, int, float, int], ...]  # (K-1, 4) scipy linkage
    criterion: str  # how the merges were chosen, in words
    scores: tuple[LevelScore, ...] = ()  # per k, ascending
    suggested: int | None = None  # the suggested k
    sample: int = 0  # images the silhouettes were measured on
    suggested_by: str = SILHOUETTE  # KNEE or SILHOUETTE

    def __post_init__(self) -> None:
        k = self.num_clusters
        if k < 1 or len(self.linkage) != k - 1:
            raise ValueError(f"a linkage of {k} clusters has {k - 1} rows, got {len(self.linkage)}")
        counts = [1] * k
        alive = set(range(k))
        for i, (a, b, height, count) in enumerate(self.linkage):
            if a == b or a not in alive or b not in alive:
                raise ValueError(f"linkage row {i} merges {a} and {b}: not two groups that exist at that step")
            if count != counts[a] + counts[b] or not np.isfinite(height):
                raise ValueError(f"linkage row {i}: count {count} is not {counts[a] + counts[b]}, or no height")
            alive -= {a, b}
            alive.add(k + i)
            counts.append(count)
        if self.suggested is not None and not 1 <= self.suggested <= k:
            raise ValueError(f"suggested level {self.suggested} is not in 1..{k}")
        if self.suggested_by not in (KNEE, SILHOUETTE):
            raise ValueError(f"suggested_by must be {KNEE!r} or {SILHOUETTE!r}, got {self.suggested_by!r}")
        object.__setattr__(self, "_table", self._assignments())

    def _assignments(self) -> np.ndarray:
        """(K, K) int64, row k-1: head cluster -> its merged cluster's id at level k (made once: the gateway
        answers at any level per request)."""
        k = self.num_clusters
        table = np.empty((k, k), np.int64)
        table[k - 1] = np.arange(k)
        group = np.arange(k)  # each head cluster's group (linkage numbering)
        smallest = list(range(k))  # per group: its smallest head cluster
        for i, (a, b, _, _) in enumerate(self.linkage):
            group[(group == a) | (group == b)] = k + i
            smallest.append(min(smallest[a], smallest[b]))
            table[k - i - 2] = np.asarray(smallest)[group]
        table.flags.writeable = False
        return table

    def assignment(self, k: int) -> np.ndarray:
        """(K,) int64, read-only: head cluster -> its merged cluster's id (its smallest member) at level k."""
        return self._table[k - 1]

    def members(self, k: int) -> dict[int, list[int]]:
        """{merged id: its head clusters, ascending} at level k, by ascending id."""
        out: dict[int, list[int]] = {}
        for head, merged in enumerate(self.assignment(k).tolist()):
            out.setdefault(merged, []).append(head)
        return dict(sorted(out.items()))

    def heights(self) -> np.ndarray:
        """(K-1,) the merge heights in row order."""
        return np.array([row[2] for row in self.linkage], np.float64)

    def score(self, k: int) -> LevelScore | None:
        return next((s for s in self.scores if s.k == k), None)

    def summary(self) -> str:
        """`10 (silhouette 0.41; 9: 0.38, 11: 0.37)`: the suggested k, its score and its neighbours'; chosen
        where the merge heights bend: `10 (where the merge heights bend; silhouette 0.60; 9: ..., 11: ...;
        best 0.66 at 17)`."""
        chosen = None if self.suggested is None else self.score(self.suggested)
        if chosen is None or chosen.silhouette is None:
            return f"none (no level of the {self.num_clusters} clusters was scored)"
        near = ", ".join(f"{s.k}: {s.silhouette:.2f}" for s in self.scores
                         if s.silhouette is not None and abs(s.k - chosen.k) == 1)
        text = f"silhouette {chosen.silhouette:.2f}" + (f"; {near}" if near else "")
        if self.suggested_by == KNEE:
            best = best_silhouette(self.scores)
            text = f"where the merge heights bend; {text}" + (
                f"; best {best.silhouette:.2f} at {best.k}" if best.k != chosen.k else "")
        return f"{chosen.k} ({text})"

    def to_json(self) -> dict[str, Any]:
        """The record, plus `assignments` {k: head cluster -> merged id} for readers without this module
        (pages); from_json recomputes them from the linkage."""
        return files.jsonable({
            "num_clusters": self.num_clusters, "criterion": self.criterion, "suggested": self.suggested,
            "suggested_by": self.suggested_by, "sample": self.sample, "linkage": [list(row) for row in self.linkage],
            "scores": [s.to_json() for s in self.scores],
            "assignments": {str(k): self.assignment(k) for k in range(1, self.num_clusters + 1)}})

    @classmethod
    def from_json(cls, data: Any, source: str = "cluster levels") -> ClusterLevels:
        try:
            rows = tuple((int(a), int(b), float(h), int(n)) for a, b, h, n in data["linkage"])
            return cls(int(data["num_clusters"]), rows, str(data["criterion"]),
                       tuple(LevelScore.from_json(s) for s in data.get("scores", ())),
                       None if data.get("suggested") is None else int(data["suggested"]), int(data.get("sample", 0)),
                       str(data.get("suggested_by", SILHOUETTE)))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{source}: not a valid cluster hierarchy: {err}") from err

    @classmethod
    def read(cls, path: str | Path) -> ClusterLevels:
        return files.read_record(path, cls.from_json, "cluster levels")

    def write(self, path: str | Path) -> None:
        files.write_json(path, self.to_json())


@dataclass(frozen=True)
class Merged:
    """Answers at one level: what `merge` returns."""

    probabilities: np.ndarray  # (B, k) float: column j is merged cluster ids[j]'s, the sum of its members'
    cluster: np.ndarray  # (B,) int64 merged ids: the most probable merged cluster
    ids: np.ndarray  # (k,) int64 ascending: the merged clusters' ids (their smallest member head id)


def check_level(levels: ClusterLevels | None, num_clusters: int, requested: int | str | None) -> int:
    """The level to answer at: `requested` (an int, or its text as a query gives it), or num_clusters when
    None. LevelError unless it is an integer in 1..num_clusters that the model's hierarchy reaches."""
    if requested is None:
        return num_clusters
    try:
        k = int(str(requested).strip())
    except ValueError:
        raise LevelError(f"clusters must be a whole number from 1 to {num_clusters}, got {str(requested)!r}") from None
    if not 1 <= k <= num_clusters:
        raise LevelError(f"clusters must be from 1 to {num_clusters} (the model's {num_clusters} clusters merged "
                         f"into fewer), got {k}")
    if levels is None and k != num_clusters:
        raise LevelError(f"clusters={k}: this model version answers at its {num_clusters} clusters only (its card has "
                         "no merge hierarchy: it was exported before there was one; export its run again)")
    return k


def merge(levels: ClusterLevels | None, probabilities: np.ndarray, cluster: np.ndarray, k: int) -> Merged:
    """Head outputs of B images -> their answers at level k (checked by `check_level`).

    probabilities (B, K), cluster (B,) the head's own argmax. At k = K both come back as they are."""
    width = probabilities.shape[1]
    if k == width:
        return Merged(probabilities, cluster.astype(np.int64, copy=False), np.arange(width, dtype=np.int64))
    if levels is None or levels.num_clusters != width:
        raise LevelError(f"no merge hierarchy for {width} clusters: cannot answer at {k}")
    assignment = levels.assignment(k)
    ids, column = np.unique(assignment, return_inverse=True)
    merged = np.zeros((probabilities.shape[0], len(ids)), probabilities.dtype)
    np.add.at(merged.T, column, probabilities.T)
    return Merged(merged, ids[merged.argmax(1)], ids)


def outputs_at(levels: ClusterLevels | None, outputs: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Head outputs of B images -> the answers at level k in the head's own layout, so whatever reads head
    outputs reads them: probabilities (B, K) with each merged cluster's probability in its id's column and 0 in
    the columns of the clusters it absorbed, cluster (B,) its merged id, every other output as it is. At k = K:
    `outputs` itself."""
    probabilities = outputs[PROBABILITIES]
    if k == probabilities.shape[1]:
        return outputs
    merged = merge(levels, probabilities, outputs[CLUSTER], k)
    spread = np.zeros_like(probabilities)
    spread[:, merged.ids] = merged.probabilities
    return {**outputs, PROBABILITIES: spread, CLUSTER: merged.cluster.astype(outputs[CLUSTER].dtype, copy=False)}


def level_names(levels: ClusterLevels | None, k: int, head_names: list[str],
                edits: dict[int, str] | None = None) -> dict[int, str]:
    """{merged id: name} at level k: `edits` (the names file of that level) over names built from the
    members' names at K (`head_names`): "3" for a group of one, "1 + 7" for two, "0 + 6 + 8 +2" beyond."""
    edits = edits or {}
    if k == len(head_names):
        return {c: edits.get(c, name) for c, name in enumerate(head_names)}
    if levels is None:
        raise LevelError(f"no merge hierarchy: no names at {k} clusters")
    out = {}
    for merged, members in levels.members(k).items():
        shown = " + ".join(head_names[m] for m in members[:MEMBERS_IN_NAME])
        extra = len(members) - MEMBERS_IN_NAME
        out[merged] = edits.get(merged, shown + (f" +{extra}" if extra > 0 else ""))
    return out
