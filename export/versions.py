"""Model versions in a repository: the exporters' lock, adding a version in one rename, removing one.

    python -m export.versions --repository model_repository                 # list models and versions
    python -m export.versions --repository model_repository --name digits --remove 3   # roll back to 2

Semantics (Triton's versioned layout, contract/repository.py):
- each export of NAME adds version max+1 of NAME, NAME_encoder and NAME_head, from any run: retrain,
  export, and the gateway serves the new version; the old ones stay (rollback, `?version=` pins);
- versions of one model share one Triton config, so they must share the interface (input, outputs,
  feature size): an export whose interface differs is refused unless `--force`, which removes the
  model's older versions first (or give it another `--name`);
- a version is written in full beside the repository and made visible with one rename per directory,
  the ensemble's NAME/<v> (holding metadata.json, what readers look for) last: a reader sees the old
  latest version or the new one, never a half-written one;
- exporters hold REPOSITORY/.export.lock (flock) from choosing the version number to the last rename:
  concurrent exports of one repository queue (each gets its own version) or, after the lock timeout,
  fail with a message and leave the repository as it was;
- removing NAME/<v> first (then the graphs' <v>) rolls back; `--keep-versions N` prunes to the newest N;
  a removed version's number is never given again (NAME/.last_version).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from contract import files
from contract.card import ModelCard, cluster_names, read_names
from contract.metadata import ModelMetadata
from contract.names import (
    CARD_FILE,
    EXPORT_LOCK_FILE,
    LAST_VERSION_FILE,
    METADATA_FILE,
    NAMES_FILE,
    PROBABILITIES,
    encoder_model,
    head_model,
)
from contract.repository import complete_versions, model_names, numeric_versions, version_dirs, version_number

LOCK_TIMEOUT_S = 600.0


class RepositoryBusy(RuntimeError):
    """Another exporter held the repository's lock for longer than the timeout."""


class IncompatibleVersion(ValueError):
    """A new version whose interface differs from the model's existing versions."""


@contextmanager
def export_lock(repository: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold REPOSITORY/.export.lock (created with the repository if needed) while the block runs."""
    repository.mkdir(parents=True, exist_ok=True)
    with open(repository / EXPORT_LOCK_FILE, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RepositoryBusy(f"another export has held {repository / EXPORT_LOCK_FILE} for more than "
                                         f"{timeout_s:.0f} s; nothing was written") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def next_version(repository: Path, name: str) -> int:
    """One more than any version the model has or had: its directories (complete or not) and NAME/.last_version
    (a removed version's number is never given again, so no reader can mistake a new version for an old one)."""
    taken = [v for m in (name, encoder_model(name), head_model(name)) for v in numeric_versions(repository / m)]
    recorded = repository / name / LAST_VERSION_FILE
    if recorded.is_file() and (last := version_number(recorded.read_text().strip())) is not None:
        taken.append(last)
    return max(taken, default=0) + 1


def record_version(repository: Path, name: str, version: int) -> None:
    files.write_text(repository / name / LAST_VERSION_FILE, f"{version}\n")


def latest_metadata(repository: Path, name: str) -> ModelMetadata | None:
    versions = complete_versions(repository, name)
    return ModelMetadata.read(repository / name / str(versions[-1]) / METADATA_FILE) if versions else None


def describe_interface(meta: ModelMetadata) -> str:
    outputs = ", ".join(f"{s.name} {s.dtype} {list(s.shape)}" for s in meta.outputs.values())
    return (f"input {meta.input.channels}x{meta.input.height}x{meta.input.width}, features {meta.feature_dim}, "
            f"outputs {outputs}, precision {meta.precision}")


def check_compatible(repository: Path, metadata: ModelMetadata, force: bool) -> None:
    """IncompatibleVersion unless the model is new, shares the latest version's interface, or `force`."""
    latest = latest_metadata(repository, metadata.name)
    if latest is None or force or latest.interface() == metadata.interface():
        return
    raise IncompatibleVersion(
        f"{repository}/{metadata.name} version {latest.version} has another interface "
        f"({describe_interface(latest)}) than this export ({describe_interface(metadata)}); versions of one "
        "model share one Triton config: export it under another --name, or with --force to remove the "
        "existing versions first")


def carried_names(repository: Path, metadata: ModelMetadata, defaults: list[str]) -> tuple[list[str], str | None]:
    """The cluster names of a new version of metadata.name: `defaults` with the clusters renamed in the latest
    version carried over when both versions are exported from the same run (the same clusters), and a line
    saying what was carried or why not (None when no cluster was renamed)."""
    latest = latest_metadata(repository, metadata.name)
    if latest is None:
        return defaults, None
    directory = repository / metadata.name / str(latest.version)
    count = latest.outputs[PROBABILITIES].shape[1]
    try:
        names = read_names(directory / NAMES_FILE, count) if (directory / NAMES_FILE).is_file() else {}
        card = ModelCard.read(directory / CARD_FILE) if (directory / CARD_FILE).is_file() else None
    except ValueError as err:
        return defaults, f"note: the cluster names of version {latest.version} are not carried over: {err}"
    before = cluster_names(card, count)
    renamed = {k: name for k, name in names.items() if name != before[k]}
    if not renamed:
        return defaults, None
    if latest.source_run != metadata.source_run or count != len(defaults):
        return defaults, (f"note: the {len(renamed)} cluster name(s) given in version {latest.version} are not carried "
                          f"over: it was exported from {latest.source_run}, this version from {metadata.source_run}, "
                          "and the cluster ids of two runs are not the same clusters; name them again")
    return ([renamed.get(k, name) for k, name in enumerate(defaults)],
            f"the {len(renamed)} cluster name(s) given in version {latest.version} carried over (same run)")


def _discard(path: Path) -> None:
    """Make a directory disappear in one rename, then delete it."""
    if not path.exists():
        return
    gone = path.with_name(f".{path.name}.removed-{secrets.token_hex(4)}")
    os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def remove_version(repository: Path, name: str, version: int) -> None:
    """Remove one version: the ensemble's directory first (readers stop seeing it), then the graphs'."""
    for directory in version_dirs(repository, name, version):
        _discard(directory)


def remove_orphans(repository: Path, name: str) -> None:
    """Graph versions whose ensemble version is missing: left by an export killed between its renames."""
    complete = set(complete_versions(repository, name))
    for model in (encoder_model(name), head_model(name)):
        for version in numeric_versions(repository / model):
            if version not in complete:
                _discard(repository / model / str(version))


def prune(repository: Path, name: str, keep: int) -> list[int]:
    """Remove all but the newest `keep` versions (keep 0: none removed); returns the removed versions."""
    versions = complete_versions(repository, name)
    removed = versions[:-keep] if 0 < keep < len(versions) else []
    for version in removed:
        remove_version(repository, name, version)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.versions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="model repository (default: model_repository)")
    parser.add_argument("--name", help="one model (default: all)")
    parser.add_argument("--remove", type=int, metavar="VERSION", help="remove this version of --name (rollback)")
    args = parser.parse_args(argv)
    if not args.repository.is_dir():
        print(f"error: model repository {args.repository} does not exist", file=sys.stderr)
        return 2
    models = model_names(args.repository)
    if args.name is not None and args.name not in models:
        print(f"error: no model {args.name!r} in {args.repository} (models: {models})", file=sys.stderr)
        return 2
    if args.remove is not None:
        if not args.name:
            print("error: --remove needs --name", file=sys.stderr)
            return 2
        if args.remove not in complete_versions(args.repository, args.name):
            print(f"error: {args.repository}/{args.name} has no version {args.remove} "
                  f"(versions: {complete_versions(args.repository, args.name)})", file=sys.stderr)
            return 2
        with export_lock(args.repository):
            remove_version(args.repository, args.name, args.remove)
        print(f"removed {args.name} version {args.remove}; now served: "
              f"{(complete_versions(args.repository, args.name) or [None])[-1]}")
        return 0
    if not models:
        print(f"{args.repository} holds no model (export one with `python -m export`)")
    for name in [args.name] if args.name else models:
        versions = complete_versions(args.repository, name)
        print(f"{name}: versions {versions} (latest {versions[-1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
