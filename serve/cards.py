"""What a cluster answer means: the cluster's name, a low-confidence flag, an out-of-distribution score.

    card = VersionCard.load(resolve(root, "digits", 2))   # the model card + the editable names file
    card.names()                                        # re-read when cluster_names.json changes (mtime)
    card.annotate(outputs)                              # per image: name, low_confidence, ood_score, ood
    k = answer_level(card, K, "4")                      # answers at 4 clusters (LevelError outside 1..K)
    outputs_k, notes = answers_at(card, outputs, k)     # merged clusters; names from cluster_names_4.json, else
                                                        # built from the members'; what /cluster and bulk answer

The calibration comes from the training data (contract/card.py, measured by the trainer): an answer
is low-confidence when its probability is below the training data's 5th percentile, and out of
distribution when its cosine distance to the nearest OOD prototype (a k-means of the training
embeddings, contract/card.py) is above the 99th percentile; `ood_score` is the fraction of training
images closer to their nearest prototype than this image is to its.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract import files
from contract.card import ModelCard, cluster_names, nearest_centroid_distance, read_names
from contract.levels import ClusterLevels, check_level, level_names, outputs_at
from contract.metadata import ModelMetadata
from contract.names import CLUSTER, EMBEDDING, PROBABILITIES, level_names_file
from serve.backends.repository import ModelVersion, RepositoryError, resolve

log = logging.getLogger("serve")

NAME, LOW_CONFIDENCE, OOD_SCORE, OOD = "name", "low_confidence", "ood_score", "ood"
"""The keys of `VersionCard.annotate`: the fields of a /cluster answer and the columns of a bulk shard."""
MAX_NAME_LENGTH = 100
HIDDEN = "\\x00-\\x1f\\x7f-\\x9f\\xad\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\ufeff"
"""What a cluster name may not hold (a regular-expression class): control characters (NUL, tab, line breaks,
ESC), line and paragraph separators, and invisible formatting (soft hyphen, zero-width characters,
bidirectional overrides such as U+202E)."""
NAME_PATTERN = f"^ *[^ {HIDDEN}](?:[^{HIDDEN}]*[^ {HIDDEN}])? *$"
"""A cluster name: something visible, spaces around it trimmed (also the OpenAPI page's pattern; written
without \\s or Unicode classes, so that every regular-expression engine reads it alike)."""


def clean_name(text: str) -> str:
    """A cluster name as it is stored: trimmed of spaces; ValueError when that is empty, longer than
    MAX_NAME_LENGTH, or holds a character of HIDDEN."""
    name = text.strip(" ")
    if not name:
        raise ValueError("a cluster name cannot be empty or blank")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"a cluster name has at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    if not re.fullmatch(NAME_PATTERN, name):
        hidden = sorted({c.encode("unicode_escape").decode("ascii") for c in name if not re.match(f"[^{HIDDEN}]", c)})
        raise ValueError(f"a cluster name cannot hold control or invisible characters: {', '.join(hidden)}")
    return name


def write_cluster_name(version: ModelVersion, cluster: int, name: str, level: int | None = None) -> None:
    """Write `name` for `cluster` into a version's names file of `level` (default: its own clusters; see
    contract.names.level_names_file), under a lock on the version's directory, reading the file again first
    (another gateway on the same repository may have just written it) and replacing it atomically. A file that
    does not read is replaced (its other names fall back to the card's; logged)."""
    count = version.metadata.outputs[PROBABILITIES].shape[1]
    names_file = version.directory / level_names_file(count if level is None else level, count)
    directory = os.open(version.directory, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)  # released when closed
        try:
            names = read_names(names_file, count) if names_file.is_file() else {}
        except (OSError, ValueError) as err:
            log.warning("model %s version %d: replacing a names file that did not read: %s", version.name,
                        version.version, err)
            names = {}
        names[cluster] = name
        files.write_json(names_file, {str(k): v for k, v in sorted(names.items())})
    finally:
        os.close(directory)


@dataclass
class VersionCard:
    """One model version's card and names; names follow edits of the names files without a restart."""

    card: ModelCard | None
    names_file: Path | None  # the names file of the trained level; other levels' sit beside it
    num_clusters: int
    levels: ClusterLevels | None = None  # the card's merge hierarchy, when it fits this version's clusters
    _defaults: list[str] = field(default_factory=list)  # the card's names (mapped classes), made once
    _edits: dict[int, tuple[tuple[int, int] | None, dict[int, str]]] = field(default_factory=dict)  # per level
    _ood_reference: np.ndarray | None = None  # card.stats.ood_reference(), converted once per load
    _fixed: list[str] | None = None  # with_names: these names, whatever the files say

    @classmethod
    def load(cls, version: ModelVersion) -> VersionCard:
        card = None
        if version.card_file.is_file():
            try:
                card = ModelCard.read(version.card_file)
            except ValueError as err:
                log.warning("model %s version %d: card not used: %s", version.name, version.version, err)
        width = version.metadata.outputs[PROBABILITIES].shape[1]
        levels = None if card is None else card.levels
        if levels is not None and levels.num_clusters != width:
            log.warning("model %s version %d: card levels merge %d clusters, the model has %d: answers at %d only",
                        version.name, version.version, levels.num_clusters, width, width)
            levels = None
        made = cls(card, version.names_file, width, levels, cluster_names(card, width))
        if card is not None and card.stats is not None:
            made._ood_reference = card.stats.ood_reference()
        return made

    @classmethod
    def find(cls, root: str | Path, spec: ModelMetadata) -> VersionCard | None:
        """The card and names of `spec`'s version in the repository at `root`; None when the repository does
        not hold that version (a Triton-only model, an unknown version)."""
        if spec.version is None:
            return None
        try:
            return cls.load(resolve(root, spec.name, spec.version))
        except (RepositoryError, OSError):
            return None

    def with_names(self, names: list[str]) -> VersionCard:
        """This card with fixed names per head cluster (`names(level)` at the one level a bulk job answers at),
        which edits of the names files do not change (a bulk job's snapshot)."""
        if len(names) != self.num_clusters:
            raise ValueError(f"{len(names)} cluster names for {self.num_clusters} clusters")
        return dataclasses.replace(self, names_file=None, _fixed=list(names))

    def names_path(self, level: int) -> Path | None:
        """The names file of `level` (level_names_file beside the trained level's)."""
        return None if self.names_file is None else self.names_file.with_name(
            level_names_file(level, self.num_clusters))

    def edits(self, level: int) -> dict[int, str]:
        """The names file of `level` as {cluster id: name}, re-read when it changes; a file that cannot be read
        (half saved, removed) leaves the edits read before."""
        path = self.names_path(level)
        stamp, edits = self._edits.get(level, (None, {}))
        try:
            status = path.stat() if path is not None else None
        except OSError:
            return edits
        if status is None or (status.st_mtime_ns, status.st_size) == stamp:
            return edits
        try:
            edits = read_names(path, self.num_clusters)
        except (OSError, ValueError) as err:  # a half-saved edit: keep the names we had
            log.warning("cluster names not updated: %s", err)
            return edits
        self._edits[level] = ((status.st_mtime_ns, status.st_size), edits)
        return edits

    def names(self, level: int | None = None) -> list[str]:
        """Per head cluster, the name of its cluster at `level` (default: the trained level, where each is its
        own): the level's names file over names built from the members' (contract.levels.level_names)."""
        if self._fixed is not None:
            return self._fixed
        own = self.edits(self.num_clusters)
        heads = [own.get(k, name) for k, name in enumerate(self._defaults)]
        if level is None or level == self.num_clusters:
            return heads
        named = level_names(self.levels, level, heads, self.edits(level))
        return [named[m] for m in self.levels.assignment(level).tolist()]

    def annotate(self, outputs: dict[str, np.ndarray], level: int | None = None) -> dict[str, Any]:
        """Head outputs of B images (at `level`: contract.levels.outputs_at) -> {"name": [B], and with a card
        "low_confidence", "ood_score", "ood": (B,)}. The low-confidence threshold is the trained level's: a
        merged cluster's probability, the sum of its members', is flagged less often."""
        cluster = outputs[CLUSTER].astype(np.int64, copy=False)
        names = self.names(level)
        out: dict[str, Any] = {NAME: [names[c] for c in cluster.tolist()]}
        stats = self.card.stats if self.card is not None else None
        if stats is None:
            return out
        chosen = outputs[PROBABILITIES][np.arange(len(cluster)), cluster]
        distance = nearest_centroid_distance(outputs[EMBEDDING], self._ood_reference)
        out[LOW_CONFIDENCE] = stats.confidence.flag(chosen)
        out[OOD_SCORE] = stats.ood.score(distance)
        out[OOD] = stats.ood.flag(distance)
        return out


def answer_level(card: VersionCard | None, num_clusters: int, requested: int | str | None) -> int:
    """The level (number of clusters) to answer at: `requested` (?clusters=, --clusters), or the trained
    num_clusters when None. LevelError names the valid range; without a card's hierarchy only num_clusters."""
    return check_level(None if card is None else card.levels, num_clusters, requested)


def answers_at(card: VersionCard | None, outputs: dict[str, np.ndarray], level: int
               ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """Head outputs of B images -> their answers at `level` (contract.levels.outputs_at: the head's layout, each
    merged cluster in its id's column) and the card's names and flags for them (None without a card): what
    /cluster and a bulk shard answer, so the two agree."""
    at_level = outputs_at(None if card is None else card.levels, outputs, level)
    return at_level, None if card is None else card.annotate(at_level, level)
