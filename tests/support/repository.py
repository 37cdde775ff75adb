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


def add_shifted_version(repository: Path, name: str) -> int:
    """Add version v+1 of `name` that puts every image one cluster further (cluster k -> k+1 mod K): the latest
    version's files with the rows of the head's last layer (the Gemm before the softmax) rolled by one.
    Answers of the two versions differ for every image, so a test can tell which version gave a row."""
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    version = complete_versions(repository, name)[-1]
    new = version + 1
    for model in (f"{name}_encoder", f"{name}_head", name):  # the ensemble's (metadata.json) last
        shutil.copytree(repository / model / str(version), repository / model / f".{new}.tmp")
    head_file = repository / f"{name}_head" / f".{new}.tmp" / "model.onnx"
    graph = onnx.load(head_file)
    (softmax,) = [n for n in graph.graph.node if n.op_type == "Softmax" and n.output == ["probabilities"]]
    (gemm,) = [n for n in graph.graph.node if n.output == [softmax.input[0]]]
    for initializer in graph.graph.initializer:
        if initializer.name in gemm.input[1:]:
            initializer.CopyFrom(numpy_helper.from_array(np.roll(numpy_helper.to_array(initializer), 1, axis=0),
                                                         initializer.name))
    onnx.save(graph, head_file)
    meta_file = repository / name / f".{new}.tmp" / "metadata.json"
    ModelMetadata.read(meta_file).replace(version=new, exported_at="2099-01-01T00:00:00+00:00").write(meta_file)
    for model in (f"{name}_encoder", f"{name}_head", name):
        (repository / model / f".{new}.tmp").rename(repository / model / str(new))
    return new
