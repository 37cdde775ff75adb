"""Per-data-set defaults that every method shares: stored and model resolution, stem, splits and which
augmentations make sense.

`stored_size` is the side the images are kept at in memory (the data set's own side; 256 px for the
ImageNet subsets, whose files vary); `image_size` is the model's input. The defaults are the native
resolution with the CIFAR stem (what the `native` and `fast` presets run); the `paper` presets set
the official code's resolution and stem per method.
"""

from __future__ import annotations

from typing import Any

# Digits and MNIST are not mirror-symmetric (no flips) and have no colour; small images get the
# CIFAR stem. Handwriting needs per-image affine and elastic distortion instead of strong crops,
# or contrastive training collapses onto stroke thickness. The jitter keeps its fixed order: the
# digits recipes were measured with it.
_HANDWRITING = dict(flip_p=0.0, gray_p=0.0, crop_min_scale=0.6, rotate_degrees=12.0, shear_degrees=12.0,
                    translate=0.08, elastic_alpha=0.08, jitter_strength=0.4, jitter_p=0.5, jitter_order="fixed")

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(backbone="smallcnn", image_size=16, batch_size=256, **_HANDWRITING),
    "mnist": dict(image_size=28, stored_size=28, **_HANDWRITING),
    "fashion-mnist": dict(image_size=28, stored_size=28, gray_p=0.0),
    "cifar10": dict(image_size=32, stored_size=32, stem="cifar"),
    "cifar100": dict(image_size=32, stored_size=32, stem="cifar"),
    "tiny-imagenet": dict(image_size=64, stored_size=64, stem="cifar"),
    "stl10": dict(image_size=96, stored_size=96, stem="cifar"),
    # crops are taken from a 256 px copy (shorter side 256, centre square), not from a 96 px pre-resize
    "imagenet10": dict(image_size=96, stored_size=256, stem="cifar", blur_p=0.5),
    "imagenet-dogs": dict(image_size=96, stored_size=256, stem="cifar", blur_p=0.5),
    "folder": dict(image_size=96, stem="cifar"),
}
