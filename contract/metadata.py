"""The typed, versioned record an export writes beside each model (metadata.json) and every reader uses.

    meta = ModelMetadata.read(repository / name / str(version) / METADATA_FILE)   # validated; ValueError says what
    meta.input.size, meta.input.channels, meta.outputs["probabilities"].shape, meta.num_clusters, meta.version

Written by export (export/pipeline.py), extended in place by export/tensorrt.py, read by the gateway's
backends and the bulk path. `schema_version` grows when a field changes meaning; a file written by a
newer version than this code knows is refused rather than misread.

Schema versions: 1 (NAME/metadata.json, one unversioned model), 2 (NAME/<v>/metadata.json with
`version`, Triton's versioned layout: contract/repository.py). Version-1 records still parse
(`version` is then None). `extra_outputs` (the method's declared outputs beyond the required three) was
added within version 2: a record without it lists every output beyond the required three, undescribed.
`precision`, `agreement` and `quantization` were added within version 2 too: a record without them is fp32.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract import files
from contract.names import (
    ANSWER_FIELDS,
    FEATURES,
    FP32,
    IMAGES,
    PRECISIONS,
    REQUIRED_OUTPUTS,
    encoder_model,
    head_model,
)

SCHEMA_VERSION = 2
DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
_OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # a graph, config, JSON and Parquet field name alike


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: numpy dtype name and shape with -1 for the (dynamic) batch dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {list(DTYPES)}")
        if not self.shape or self.shape[0] != -1 or any(d < 1 for d in self.shape[1:]):
            raise ValueError(f"tensor {self.name!r}: shape {list(self.shape)} must be a dynamic batch (-1) "
                             "followed by fixed positive dimensions")

    @property
    def triton_dims(self) -> list[int]:
        """dims as Triton declares them: no batch dimension, [1] for a batch-only tensor."""
        return list(self.shape[1:]) or [1]

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "triton_dims": self.triton_dims}

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> TensorSpec:
        return cls(name, str(data["dtype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class ExtraOutput:
    """A head output beyond embedding, probabilities and cluster, as its method declares it
    (ClusteringMethod.extra_outputs): name, numpy dtype, shape per image (() one value, (L,) a vector).

    Export checks the graph against it and records it in the metadata; the Triton configs, the gateway's
    /cluster answers (a field of this name per image), the bulk shards (a field of their `extras`
    column) and the Python client carry it by these fields alone."""

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not _OUTPUT_NAME.match(self.name):
            raise ValueError(f"extra output {self.name!r}: a name is letters, digits and _, not first a digit")
        taken = {*REQUIRED_OUTPUTS, IMAGES, FEATURES, *ANSWER_FIELDS}
        if self.name in taken:
            raise ValueError(f"extra output {self.name!r}: the name is taken (by the graph or the answers: "
                             f"{sorted(taken)})")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        TensorSpec(self.name, self.dtype, (-1, *self.shape))  # refuses an unknown dtype or a dimension < 1

    @property
    def spec(self) -> TensorSpec:
        """The graph tensor: the batch dimension, then the shape per image."""
        return TensorSpec(self.name, self.dtype, (-1, *self.shape))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "description": self.description}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExtraOutput:
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]), str(data.get("description", "")))

    @classmethod
    def undescribed(cls, spec: TensorSpec) -> ExtraOutput:
        """An output of a graph whose method's declaration was not recorded (older metadata, Triton's)."""
        return cls(spec.name, spec.dtype, spec.shape[1:])


@dataclass(frozen=True)
class ImageInput:
    """The encoder's input: uint8 NCHW square images, as contract.preprocess.prepare makes them."""

    channels: int
    height: int
    width: int
    name: str = IMAGES
    dtype: str = "uint8"
    layout: str = "NCHW"
    crop: float = 1.0
    """The fraction of each image's centre square the model sees (contract.preprocess.prepare_source's crop:
    ProPos's test_resized_crop, 224/256); 1: all of it."""

    def __post_init__(self) -> None:
        if (self.name, self.dtype, self.layout) != (IMAGES, "uint8", "NCHW"):
            raise ValueError(f"input must be {IMAGES!r} uint8 NCHW, got {self.name!r} {self.dtype} {self.layout}")
        if self.channels not in (1, 3):
            raise ValueError(f"input channels must be 1 or 3, got {self.channels}")
        if self.height != self.width or self.height < 1:
            raise ValueError(f"input must be square (the preprocessing is), got {self.height}x{self.width}")
        if not 0 < self.crop <= 1:
            raise ValueError(f"input crop must be in (0, 1], got {self.crop}")

    @property
    def size(self) -> int:
        return self.height


@dataclass(frozen=True)
class ModelMetadata:
    """One exported model: what it is, where it came from, how to call it."""

    name: str
    num_clusters: int
    input: ImageInput
    outputs: dict[str, TensorSpec]  # the head's outputs, in graph order
    method: str | None = None
    dataset: str | None = None
    feature_dim: int | None = None
    class_names: list[str] | None = None
    source_run: str | None = None
    epoch: int | None = None
    finished: bool | None = None  # False: exported with --allow-unfinished
    flavour: str | None = None  # how the repository runs it: onnxruntime, python, tensorrt
    max_batch_size: int | None = None
    opset: int | None = None
    exported_at: str | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] | None = None
    version: int | None = None  # the model version (directory NAME/<version>/) this record describes
    extra_outputs: tuple[ExtraOutput, ...] | None = None
    """The outputs beyond the required three, as the method declares them; None (not recorded): every
    output beyond the required three, undescribed. Always a tuple once constructed."""
    precision: str = FP32  # contract.names.PRECISIONS: what the model computes in (its name says it too)
    agreement: dict[str, Any] | None = None
    """Reduced precision: how far its answers are the fp32 graph's, on training images not used for calibration
    (export/agreement.py: cluster agreement, embedding cosine mean and min, largest probability difference,
    the thresholds and the verdict). None for fp32 (its `parity` says it reproduces PyTorch)."""
    quantization: dict[str, Any] | None = None  # int8: what was quantized, how, calibrated on which images
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {self.num_clusters}")
        missing = [o for o in REQUIRED_OUTPUTS if o not in self.outputs]
        if missing:
            raise ValueError(f"outputs lack {missing} (has {list(self.outputs)})")
        if self.extra_outputs is None:
            object.__setattr__(self, "extra_outputs", tuple(
                ExtraOutput.undescribed(spec) for name, spec in self.outputs.items() if name not in REQUIRED_OUTPUTS))
        self._check_extra_outputs()
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {list(PRECISIONS)}")
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is newer than this code reads "
                             f"({SCHEMA_VERSION}): upgrade deepcluster-serve")

    def _check_extra_outputs(self) -> None:
        declared = {extra.name: extra for extra in self.extra_outputs}
        beyond = [name for name in self.outputs if name not in REQUIRED_OUTPUTS]
        if sorted(beyond) != sorted(declared):
            raise ValueError(f"outputs beyond {list(REQUIRED_OUTPUTS)} are {beyond}, but the extra outputs "
                             f"declared are {list(declared)}")
        for name, extra in declared.items():
            if self.outputs[name] != extra.spec:
                got = self.outputs[name]
                raise ValueError(f"extra output {name!r} is declared {extra.dtype} {list(extra.spec.shape)}, "
                                 f"the graph has {got.dtype} {list(got.shape)}")

    @property
    def encoder(self) -> str:
        return encoder_model(self.name)

    @property
    def head(self) -> str:
        return head_model(self.name)

    @property
    def embedding_dim(self) -> int:
        return self.outputs["embedding"].shape[1]

    def replace(self, **changes: Any) -> ModelMetadata:
        return dataclasses.replace(self, **changes)

    def interface(self) -> tuple[Any, ...]:
        """What a caller depends on: input, outputs, feature size, precision. Versions of one model share it
        (they share one Triton config, and one precision: TensorRT builds a model's plans at its precision)."""
        return self.input, tuple(sorted(self.outputs.items())), self.feature_dim, self.precision

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["input"] = dataclasses.asdict(self.input)
        data["outputs"] = {name: spec.to_json() for name, spec in self.outputs.items()}
        data["extra_outputs"] = [extra.to_json() for extra in self.extra_outputs]
        # derived, written for people and for clients that read the file without this code
        data.update(encoder=self.encoder, head=self.head, embedding_dim=self.embedding_dim)
        return files.jsonable(data)

    @classmethod
    def from_json(cls, data: Any, source: str = "metadata") -> ModelMetadata:
        """Validate a parsed metadata.json; ValueError names `source` and what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: not a model metadata record (a JSON object), got {type(data).__name__}")
        try:
            inp = data["input"]
            values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
            values["input"] = ImageInput(int(inp["channels"]), int(inp["height"]), int(inp["width"]),
                                         inp.get("name", IMAGES), inp.get("dtype", "uint8"), inp.get("layout", "NCHW"),
                                         float(inp.get("crop", 1.0)))
            values["outputs"] = {name: TensorSpec.from_json(name, spec) for name, spec in data["outputs"].items()}
            values["num_clusters"] = int(data["num_clusters"])
            if data.get("extra_outputs") is not None:
                values["extra_outputs"] = tuple(ExtraOutput.from_json(e) for e in data["extra_outputs"])
            return cls(**values)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            what = f"missing {err}" if isinstance(err, KeyError) else str(err)
            raise ValueError(f"{source}: not a valid model metadata record: {what}") from err

    @classmethod
    def read(cls, path: str | Path) -> ModelMetadata:
        return files.read_record(path, cls.from_json, "model metadata")

    def write(self, path: str | Path) -> None:
        files.write_json(path, self.to_json())
