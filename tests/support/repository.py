"""Repository helpers for the version tests: re-add an exported version quickly, check a repository's validity."""

from __future__ import annotations

from pathlib import Path

from contract.metadata import ModelMetadata
from contract.repository import complete_versions
from export.triton import ModelSet, read_config


def model_set(repository: Path, name: str, version: int = 1) -> ModelSet:
    """What an export writes, read back from an exported version (no training, no parity: fast)."""
    from export.onnx_export import graph_specs

    meta = ModelMetadata.read(repository / name / str(version) / "metadata.json")
    encoder, head = (repository / part / str(version) / "model.onnx" for part in (meta.encoder, meta.head))
    (enc_in, enc_out), (head_in, head_out) = graph_specs(encoder), graph_specs(head)
    return ModelSet(name, encoder, head, enc_in, enc_out, head_in, head_out, 64, meta.replace(version=None),
                    meta.parity)


def assert_valid(repository: Path, name: str) -> list[int]:
    """Every version complete in all three models, every config parses; returns the versions."""
    versions = complete_versions(repository, name)
    for model in (name, f"{name}_encoder", f"{name}_head"):
        assert read_config(repository / model).name == model
        assert sorted(int(p.name) for p in (repository / model).iterdir() if p.name.isdigit()) == versions, model
    for version in versions:
        assert ModelMetadata.read(repository / name / str(version) / "metadata.json").version == version
        for part in ("encoder", "head"):
            assert (repository / f"{name}_{part}" / str(version) / "model.onnx").is_file()
    return versions
