"""Reading the model repository written by `python -m export` (Triton's versioned layout, contract/repository.py).

    version = resolve(root, "digits")          # the latest complete version; resolve(root, "digits", 2) pins
    version.metadata, version.encoder_onnx, version.head_onnx, version.card_file, version.names_file
    read_repository(root)                      # {name: ModelMetadata of its latest version}
    found = scan(root)                         # every model's readable versions, and why the others are not

Every reader of a repository (the gateway's backends, the bulk path, benchmarks) goes through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from contract.metadata import ModelMetadata
from contract.names import CARD_FILE, METADATA_FILE, NAMES_FILE, ONNX_MODEL_FILE
from contract.repository import (
    complete_versions,
    legacy_models,
    looks_like_a_version,
    model_names,
    version_number,
)


class RepositoryError(ValueError):
    """No usable model repository, model or version; the message says which and what to do."""


@dataclass(frozen=True)
class ModelVersion:
    """The files of one version of one model."""

    root: Path
    metadata: ModelMetadata  # its `version` is the directory's

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return int(self.metadata.version or 0)

    @property
    def directory(self) -> Path:
        return self.root / self.name / str(self.version)

    @property
    def encoder_onnx(self) -> Path:
        return self.root / self.metadata.encoder / str(self.version) / ONNX_MODEL_FILE

    @property
    def head_onnx(self) -> Path:
        return self.root / self.metadata.head / str(self.version) / ONNX_MODEL_FILE

    @property
    def card_file(self) -> Path:
        return self.directory / CARD_FILE

    @property
    def names_file(self) -> Path:
        return self.directory / NAMES_FILE


def check_root(root: str | Path) -> Path:
    """The repository as a Path; RepositoryError when it does not exist or holds no model."""
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} does not exist (export a model with `python -m export`)")
    if not model_names(root):
        legacy = legacy_models(root)
        if legacy:
            raise RepositoryError(f"model repository {root} holds models {legacy} in the layout of an older export "
                                  f"(NAME/{METADATA_FILE}, no versions): export them again")
        raise RepositoryError(f"model repository {root} holds no model (no */<version>/{METADATA_FILE}); "
                              "export one with `python -m export`")
    return root


def resolve(root: str | Path, name: str, version: int | None = None) -> ModelVersion:
    """(model, version or None for the latest) -> its files; RepositoryError when there is no such version."""
    root = Path(root)
    available = complete_versions(root, name)
    if not available:
        raise RepositoryError(f"no model {name!r} in {root} (models: {model_names(root)})")
    chosen = available[-1] if version is None else version
    if chosen not in available:
        raise RepositoryError(f"model {name!r} has no version {chosen} (versions: {available})")
    return read_version(root, name, chosen)


def read_version(root: Path, name: str, version: int) -> ModelVersion:
    """The files of version `version` of `name`, from its metadata.json; ValueError when that does not read or
    names another model."""
    file = root / name / str(version) / METADATA_FILE
    meta = ModelMetadata.read(file)
    if meta.name != name:
        raise RepositoryError(f"{file}: metadata name {meta.name!r} differs from its directory {name!r}")
    return ModelVersion(root, meta.replace(version=version))


def describe_failure(err: BaseException) -> str:
    """Why a version could not be read or loaded, in one line (any exception: protobuf's DecodeError, ...)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, ValueError | OSError) and text else f"{type(err).__name__}: {text}".rstrip(": ")


@dataclass
class RepositoryScan:
    """One look at a repository: per model the versions whose metadata.json reads and names the model, and the
    version directories that cannot be served, with why (a directory name that is no version number, no or
    a corrupt metadata.json). Whether a version's graphs load is known only once a backend loads them."""

    versions: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    unavailable: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> directory name -> reason


def scan(root: str | Path) -> RepositoryScan:
    """Every model of the repository at `root` (a directory holding <version>/metadata.json), version by version;
    one bad version, or a bad directory name, never hides the others."""
    root = Path(root)
    found = RepositoryScan()
    names = sorted({p.parent.parent.name for p in root.glob(f"*/*/{METADATA_FILE}") if p.parent.name.isdigit()})
    for name in names:
        readable, problems = found.versions.setdefault(name, {}), found.unavailable.setdefault(name, {})
        for entry in sorted((root / name).iterdir(), key=lambda p: p.name):
            number = version_number(entry.name)
            if number is None:
                if looks_like_a_version(entry.name) and entry.is_dir():
                    problems[entry.name] = ("not a version number (versions are directories 1, 2, ...: ASCII digits "
                                            "without a leading zero)")
                continue
            if not entry.is_dir():
                continue
            if not (entry / METADATA_FILE).is_file():
                problems[entry.name] = f"no {METADATA_FILE} (an incomplete version: export again, or remove it)"
                continue
            try:
                readable[number] = read_version(root, name, number)
            except Exception as err:  # noqa: BLE001 - whatever is wrong with one version is that version's reason
                problems[entry.name] = describe_failure(err)
    return found


def read_repository(root: str | Path) -> dict[str, ModelMetadata]:
    """The latest version of every model by name; RepositoryError when there is none, ValueError if malformed."""
    root = check_root(root)
    return {name: resolve(root, name).metadata for name in model_names(root)}


def onnx_file(root: str | Path, model: str, version: int | None = None) -> Path:
    """`<root>/<model>/<version or the highest>/model.onnx` of an encoder or head graph; FileNotFoundError if absent."""
    model_dir = Path(root) / model
    found = sorted(v for p in model_dir.glob(f"*/{ONNX_MODEL_FILE}")
                   if (v := version_number(p.parent.name)) is not None)
    chosen = version if version is not None else (found[-1] if found else None)
    if chosen is None or chosen not in found:
        raise FileNotFoundError(f"no {model_dir}/{chosen or '<version>'}/{ONNX_MODEL_FILE}")
    return model_dir / str(chosen) / ONNX_MODEL_FILE
