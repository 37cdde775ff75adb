"""Tiny runs on the built-in digits for tests: configs that train in seconds, and digit images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from train.config import Config
from train.methods import make_config

TINY = dict(dataset="digits", preset="fast", epochs=2, batch_size=128, eval_every=0, progress=False, seed=0)


def tiny_config(method: str, run_dir: Path, **overrides: Any) -> Config:
    """A config for a seconds-long run of `method` on digits (16 px, small CNN)."""
    return make_config(method, **{**TINY, "run_dir": str(run_dir), **overrides})


def digit_images(count: int, size: int = 16) -> np.ndarray:
    """`count` digits spread evenly over the data set: uint8 (count, 1, size, size), as training sees them."""
    from train.data.datasets import load_dataset

    data = load_dataset("digits", None, size)
    index = np.linspace(0, data.images.shape[0] - 1, count).round().astype(np.int64)
    return data.images[index].numpy()


def digit_folder(root: Path, per_class: int = 40, classes: int = 3) -> Path:
    """A `folder` data set: class_<k>/ of 24 px digit PNGs, plus one file that is no PNG (class_1/broken.png)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == label][:per_class]):
            pixels = np.round(image * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).resize((24, 24), Image.NEAREST).save(folder / f"{i}.png")
    (root / "class_1" / "broken.png").write_bytes(b"\x89PNG not really")
    return root
