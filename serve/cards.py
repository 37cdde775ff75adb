"""What a cluster answer means: the cluster's name, a low-confidence flag, an out-of-distribution score.

    card = VersionCard.load(resolve(root, "digits", 2))   # the model card + the editable names file
    card.names()                                        # re-read when cluster_names.json changes (mtime)
    card.annotate(outputs)                              # per image: name, low_confidence, ood_score, ood

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
from contract.metadata import ModelMetadata
from contract.names import CLUSTER, EMBEDDING, PROBABILITIES
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


def write_cluster_name(version: ModelVersion, cluster: int, name: str) -> None:
    """Write `name` for `cluster` into a version's names file, under a lock on the version's directory, reading
    the file again first (another gateway on the same repository may have just written it) and replacing it
    atomically. A file that does not read is replaced (its other names fall back to the card's; logged)."""
    names_file, count = version.names_file, version.metadata.outputs[PROBABILITIES].shape[1]
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
    """One model version's card and names; names follow edits of the names file without a restart."""

    card: ModelCard | None
    names_file: Path | None
    num_clusters: int
    _names: list[str] = field(default_factory=list)
    _stamp: tuple[int, int] | None = None
    _ood_reference: np.ndarray | None = None  # card.stats.ood_reference(), converted once per load

    @classmethod
    def load(cls, version: ModelVersion) -> VersionCard:
        card = None
        if version.card_file.is_file():
            try:
                card = ModelCard.read(version.card_file)
            except ValueError as err:
                log.warning("model %s version %d: card not used: %s", version.name, version.version, err)
        width = version.metadata.outputs[PROBABILITIES].shape[1]
        made = cls(card, version.names_file, width)
        made._names = made.default_names()
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
        """This card with fixed names, which edits of the names file do not change (a bulk job's snapshot)."""
        if len(names) != self.num_clusters:
            raise ValueError(f"{len(names)} cluster names for {self.num_clusters} clusters")
        return dataclasses.replace(self, names_file=None, _names=list(names))

    def default_names(self) -> list[str]:
        return cluster_names(self.card, self.num_clusters)

    def names(self) -> list[str]:
        """Cluster names: the names file's entries over the card's defaults, re-read when the file changes."""
        if self.names_file is None:
            return self._names
        try:
            status = self.names_file.stat()
        except OSError:
            return self._names
        stamp = (status.st_mtime_ns, status.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                edits = read_names(self.names_file, self.num_clusters)
            except (OSError, ValueError) as err:  # a half-saved edit: keep the names we had
                log.warning("cluster names not updated: %s", err)
                return self._names
            defaults = self.default_names()
            self._names = [edits.get(k, defaults[k]) for k in range(self.num_clusters)]
        return self._names

    def annotate(self, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """Head outputs of B images -> {"name": [B], and with a card "low_confidence", "ood_score", "ood": (B,)}."""
        cluster = outputs[CLUSTER].astype(np.int64, copy=False)
        names = self.names()
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
