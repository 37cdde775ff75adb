"""Helpers shared by the gateway and bulk tests (tests/serve/test_support.py checks them).

- `exported(tiny_run, tmp_path_factory, method)`: a tiny trained run exported by `export.pipeline`
  (GPU-flavour repository for the embedded backend, CPU flavour for tritonserver), cached per session;
  `precisions=("fp32", "int8")` exports it at each into the same repositories (models NAME, NAME_int8).
- `gateway(repository, **settings)`: a TestClient around a fresh app (lifespan run, so models are warm).
- `FakeBackend`: a Backend answering from the mean pixel, optionally held at a gate (queue tests).
- image encoders and `metric(text, name, **labels)` to read /metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from contract.metadata import ImageInput, ModelMetadata, TensorSpec
from serve.backends.base import Backend
from serve.settings import load_settings
from tests.support.images import encode

_EXPORTS: dict[tuple[str, str, tuple[str, ...]], Exported] = {}
TINY_MIN_AGREEMENT = 0.9
"""The agreement an int8 export of a tiny run must reach in these tests. Two epochs leave its cluster
probabilities nearly uniform (the int8 graph changes none by more than a few 1e-4), so a handful of near ties
may flip; the default 0.99 is for real runs (docs/export.md), and is what these runs reach on the test machine."""


@dataclass
class Exported:
    run: Path
    name: str  # the first precision's model
    repository: Path  # onnxruntime flavour: read by the embedded backend
    cpu_repository: Path  # python-backend flavour: served by the CPU tritonserver
    names: dict[str, str] = field(default_factory=dict)  # precision -> its model's name (NAME, NAME_int8)


def exported(tiny_run, tmp_path_factory, method: str = "cc", name: str | None = None,
             precisions: tuple[str, ...] = ("fp32",)) -> Exported:
    """Train (cached by conftest) and export `method` on digits at each of `precisions` (into the same
    repositories); one export per (method, name, precisions) per session."""
    from export.agreement import Thresholds
    from export.pipeline import PrecisionOptions, export_run

    key = (method, name or "", precisions)
    if key not in _EXPORTS:
        run = tiny_run(method)
        root = tmp_path_factory.mktemp(f"export-{method}")
        names = {}
        for precision in precisions:
            result = export_run(run, root / "model_repository", root / "model_repository_cpu", name=name,
                                log=lambda msg: None,
                                precision=PrecisionOptions(precision, Thresholds(min_agreement=TINY_MIN_AGREEMENT)))
            names[precision] = result.name
        _EXPORTS[key] = Exported(run, names[precisions[0]], root / "model_repository", root / "model_repository_cpu",
                                 names)
    return _EXPORTS[key]


def copy_model(repository: Path, name: str, destination: Path, new_name: str) -> None:
    """Copy one exported model (ensemble dir, encoder, head) under a new name, as the exporter would name it."""
    import shutil

    for suffix in ("", "_encoder", "_head"):
        shutil.copytree(repository / f"{name}{suffix}", destination / f"{new_name}{suffix}")
    for meta_file in (destination / new_name).glob("*/metadata.json"):  # every version
        ModelMetadata.read(meta_file).replace(name=new_name).write(meta_file)


@contextmanager
def gateway(repository: Path | str, instance: Backend | None = None, **overrides: Any) -> Iterator[Any]:
    """TestClient on a new app; settings from `overrides` only (the environment's DCS_* are ignored).

    `instance` replaces the backend that settings.backend names."""
    from fastapi.testclient import TestClient

    from serve.app import create_app

    settings = load_settings({}, model_repository=str(repository), **overrides)
    # the address the gateway listens on by default: its allowed hosts (TestClient's own "testserver" is not one)
    with TestClient(create_app(settings, instance), base_url="http://127.0.0.1") as client:
        yield client




def digit_pngs(count: int, size: int = 16, seed: int = 0) -> list[bytes]:
    """Real digits (the data set the tiny models were trained on) as grayscale PNGs."""
    from tests.support.runs import digit_images  # torch: not for the no-torch gateway test

    images = digit_images(count, size)
    return [encode(Image.fromarray(img[0], "L")) for img in images]


def digit_pngs_without_torch() -> bytes:
    """A PNG made without torch or the export package (for the no-torch import test)."""
    return encode(Image.fromarray((np.arange(256, dtype=np.uint8).reshape(16, 16) * 7) % 255, "L"))


def mixed_images() -> list[tuple[str, bytes]]:
    """Digits in every awkward form: RGB, upscaled non-square, palette, RGBA, 16-bit, EXIF-rotated JPEG."""
    from tests.support.runs import digit_images

    images = digit_images(8, 16)
    grey = [Image.fromarray(img[0], "L") for img in images]
    rgba = grey[3].convert("RGBA")
    alpha = np.full((16, 16), 255, np.uint8)
    alpha[:, :4] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rotated = grey[6].resize((48, 40)).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation: rotate 90 CW to view (undoes the ROTATE_90 above)
    return [
        ("grey.png", encode(grey[0])),
        ("rgb.png", encode(grey[1].convert("RGB"))),
        ("wide.png", encode(grey[2].resize((40, 24)).convert("RGB"))),
        ("rgba.png", encode(rgba)),
        ("palette.png", encode(grey[4].convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE))),
        ("sixteen.png", encode(Image.fromarray(images[5][0].astype(np.uint16) * 257))),
        ("exif.jpg", encode(rotated, "JPEG", quality=95, exif=exif)),
        ("gif.gif", encode(grey[7], "GIF")),
    ]


def torch_predict(run: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """PyTorch reference on prepared uint8 (B, C, S, S): load_run(run).model.predict(x / 255)."""
    import torch

    from train.checkpoint import load_run

    model = load_run(run).model
    with torch.no_grad():
        out = model.predict(torch.from_numpy(images).float().div(255))
    return {k: v.numpy() for k, v in out.items()}


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`, from Prometheus text."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def files(items: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


class FakeBackend(Backend):
    """One model 'fake' (1 x 8 x 8, 4 clusters): cluster = mean pixel // 64. `gate` holds every batch."""

    name = "fake"

    def __init__(self, gate: asyncio.Event | None = None, error: Exception | None = None) -> None:
        self.spec = ModelMetadata(
            name="fake", num_clusters=4, input=ImageInput(channels=1, height=8, width=8), method="fake",
            outputs={"embedding": TensorSpec("embedding", "float32", (-1, 2)),
                     "probabilities": TensorSpec("probabilities", "float32", (-1, 4)),
                     "cluster": TensorSpec("cluster", "int64", (-1,))})
        self.gate = gate
        self.error = error
        self.batches: list[int] = []

    async def start(self) -> None:
        pass

    def models(self) -> dict[str, ModelMetadata]:
        return {"fake": self.spec}

    async def infer(self, model: str, images: np.ndarray, version: int | None = None) -> dict[str, np.ndarray]:
        if self.gate is not None and self.batches:  # the warm-up batch passes
            await self.gate.wait()
        self.batches.append(len(images))
        if self.error is not None and len(self.batches) > 1:
            raise self.error
        mean = images.reshape(len(images), -1).mean(1)
        cluster = np.minimum(mean // 64, 3).astype(np.int64)
        probs = np.full((len(images), 4), 0.1, np.float32)
        probs[np.arange(len(images)), cluster] = 0.7
        emb = np.stack([np.cos(mean), np.sin(mean)], 1).astype(np.float32)
        return {"embedding": emb, "probabilities": probs, "cluster": cluster}


def grey_png(value: int, size: int = 8) -> bytes:
    return encode(Image.new("L", (size, size), value))
