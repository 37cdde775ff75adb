"""The model repository's layout, as Triton defines it, read by export, the gateway and the bulk path.

    NAME/config.pbtxt           the ensemble (images -> NAME_encoder -> NAME_head)
    NAME/<v>/metadata.json      marks version v of NAME complete (its directory appears in one rename)
    NAME/<v>/card.json, ...     the version's model card, cluster names, parity files (contract.names)
    NAME_encoder/<v>/, NAME_head/<v>/   the graphs of version v (written before NAME/<v>)

Versions are positive integers, their directories named in ASCII digits without a leading zero (Triton
ignores other names; "²".isdigit() is true, but it names no version); every export adds one
(export/triton.py). A model is servable while at least one of its versions is complete; the latest is
the highest. Deleting NAME/<v> (then the encoder's and head's <v>) rolls back to the version before it.
Torch-free, numpy-free.
"""

from __future__ import annotations

from pathlib import Path

from contract.names import METADATA_FILE, encoder_model, head_model


def version_number(name: str) -> int | None:
    """The version a directory name stands for (1, 2, ...), or None: Triton's rule, ASCII digits, no leading 0."""
    return int(name) if name.isascii() and name.isdigit() and not name.startswith("0") else None


def looks_like_a_version(name: str) -> bool:
    """A directory name meant as a version number that is none ("²", "٣", "007", "0"): worth a word to the user."""
    return name.isdigit() and version_number(name) is None


def numeric_versions(model_dir: Path) -> list[int]:
    """Version directories of one Triton model directory (any content), ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(v for p in model_dir.iterdir() if (v := version_number(p.name)) is not None and p.is_dir())


def complete_versions(root: str | Path, name: str) -> list[int]:
    """Versions of model NAME whose NAME/<v>/metadata.json exists, ascending."""
    model_dir = Path(root) / name
    return [v for v in numeric_versions(model_dir) if (model_dir / str(v) / METADATA_FILE).is_file()]


def model_names(root: str | Path) -> list[str]:
    """Models of a repository (ensembles with at least one complete version), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted({p.parent.parent.name for p in root.glob(f"*/*/{METADATA_FILE}")
                   if version_number(p.parent.name) is not None and complete_versions(root, p.parent.parent.name)})


def legacy_models(root: str | Path) -> list[str]:
    """Models written by an export before versions existed (NAME/metadata.json): to be exported again."""
    root = Path(root)
    return sorted(p.parent.name for p in root.glob(f"*/{METADATA_FILE}")) if root.is_dir() else []


def version_dirs(root: str | Path, name: str, version: int) -> list[Path]:
    """The three directories of one version: ensemble, encoder, head (the order to remove them in)."""
    root = Path(root)
    return [root / m / str(version) for m in (name, encoder_model(name), head_model(name))]
