"""Reading the model repository written by `python -m export`: each `<name>/metadata.json` is a model."""

from __future__ import annotations

from pathlib import Path

from contract.metadata import ModelMetadata
from contract.names import METADATA_FILE, ONNX_MODEL_FILE


def read_repository(path: str | Path) -> dict[str, ModelMetadata]:
    """All servable models under `path` by name; ValueError if there are none or one is malformed."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"model repository {root} does not exist (export one with `python -m export`)")
    specs: dict[str, ModelMetadata] = {}
    for file in sorted(root.glob(f"*/{METADATA_FILE}")):
        spec = ModelMetadata.read(file)
        if spec.name != file.parent.name:
            raise ValueError(f"{file}: metadata name {spec.name!r} differs from its directory {file.parent.name!r}")
        specs[spec.name] = spec
    if not specs:
        raise ValueError(f"model repository {root} holds no model (no */{METADATA_FILE})")
    return specs


def onnx_file(root: str | Path, model: str) -> Path:
    """`<root>/<model>/<highest version>/model.onnx`; FileNotFoundError if absent."""
    model_dir = Path(root) / model
    versions = sorted((int(p.name), p) for p in model_dir.glob("*")
                      if p.name.isdigit() and (p / ONNX_MODEL_FILE).is_file())
    if not versions:
        raise FileNotFoundError(f"no {model_dir}/<version>/{ONNX_MODEL_FILE}")
    return versions[-1][1] / ONNX_MODEL_FILE
