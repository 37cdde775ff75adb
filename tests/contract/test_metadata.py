"""contract.metadata: the typed model record round-trips through JSON and refuses what is not one."""

from __future__ import annotations

import json

import pytest

from contract.metadata import SCHEMA_VERSION, ExtraOutput, ImageInput, ModelMetadata, TensorSpec


def _meta(**changes) -> ModelMetadata:
    base = ModelMetadata(
        name="cc_digits", num_clusters=10, input=ImageInput(channels=1, height=16, width=16),
        outputs={"embedding": TensorSpec("embedding", "float32", (-1, 128)),
                 "probabilities": TensorSpec("probabilities", "float32", (-1, 10)),
                 "cluster": TensorSpec("cluster", "int64", (-1,))},
        method="cc", dataset="digits", class_names=[str(i) for i in range(10)], epoch=2, finished=True)
    return base.replace(**changes)


def test_round_trip_through_json(tmp_path):
    meta = _meta()
    meta.write(tmp_path / "metadata.json")
    data = json.loads((tmp_path / "metadata.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert (data["encoder"], data["head"], data["embedding_dim"]) == ("cc_digits_encoder", "cc_digits_head", 128)
    assert data["outputs"]["cluster"] == {"dtype": "int64", "shape": [-1], "triton_dims": [1]}
    assert list(data["outputs"]) == ["embedding", "probabilities", "cluster"]  # graph order kept
    assert ModelMetadata.read(tmp_path / "metadata.json") == meta


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("outputs"), "missing 'outputs'"),
    (lambda d: d["outputs"].pop("cluster"), r"outputs lack \['cluster'\]"),
    (lambda d: d["input"].update(channels=4), "channels must be 1 or 3"),
    (lambda d: d["input"].update(height=17), "must be square"),
    (lambda d: d["input"].update(dtype="float32"), "uint8 NCHW"),
    (lambda d: d["outputs"]["embedding"].update(shape=[8, 128]), "dynamic batch"),
    (lambda d: d["outputs"]["embedding"].update(dtype="complex64"), "dtype 'complex64'"),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "newer than this code reads"),
    (lambda d: d.update(num_clusters="many"), "invalid literal"),
])
def test_invalid_records_are_refused_naming_the_file(tmp_path, change, message):
    data = _meta().to_json()
    change(data)
    (tmp_path / "metadata.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as err:
        ModelMetadata.read(tmp_path / "metadata.json")
    assert str(tmp_path / "metadata.json") in str(err.value)


def test_unreadable_files_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read model metadata"):
        ModelMetadata.read(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelMetadata.read(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="a JSON object"):
        ModelMetadata.read(tmp_path / "list.json")


def _with_path(**changes) -> ModelMetadata:
    """A CoHiClust-like record: one extra output, path (B, 4) int64."""
    outputs = {**_meta().outputs, "path": TensorSpec("path", "int64", (-1, 4))}
    extra = ExtraOutput("path", "int64", (4,), "tree node ids")
    return _meta(outputs=outputs, extra_outputs=(extra,), **changes)


def test_extra_outputs_are_recorded_and_old_records_without_them_still_load(tmp_path):
    meta = _with_path()
    meta.write(tmp_path / "metadata.json")
    data = json.loads((tmp_path / "metadata.json").read_text())
    assert data["extra_outputs"] == [{"name": "path", "dtype": "int64", "shape": [4], "description": "tree node ids"}]
    assert ModelMetadata.read(tmp_path / "metadata.json") == meta
    del data["extra_outputs"]  # written before extra outputs were recorded
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = ModelMetadata.read(tmp_path / "old.json")
    assert old.extra_outputs == (ExtraOutput("path", "int64", (4,)),) and old.outputs == meta.outputs
    assert _meta().extra_outputs == ()


@pytest.mark.parametrize(("extra", "message"), [
    (ExtraOutput("path", "int64", (5,)), r"declared int64 \[-1, 5\], the graph has int64 \[-1, 4\]"),
    (ExtraOutput("path", "float32", (4,)), "declared float32"),
    (ExtraOutput("depth", "int64", ()), r"outputs beyond .* are \['path'\], but the extra outputs declared are"),
])
def test_extra_outputs_must_be_what_the_graph_gives(extra, message):
    with pytest.raises(ValueError, match=message):
        _with_path().replace(extra_outputs=(extra,))


@pytest.mark.parametrize(("name", "dtype", "shape", "message"), [
    ("cluster", "int64", (), "the name is taken"),
    ("name", "int64", (), "the name is taken"),  # a field of every /cluster answer
    ("features", "float32", (3,), "the name is taken"),
    ("tree path", "int64", (), "letters, digits and _"),
    ("depth", "complex64", (), "dtype 'complex64'"),
    ("depth", "int64", (0,), "fixed positive dimensions"),
])
def test_bad_extra_output_declarations_are_refused(name, dtype, shape, message):
    with pytest.raises(ValueError, match=message):
        ExtraOutput(name, dtype, shape)
