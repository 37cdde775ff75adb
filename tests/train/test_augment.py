"""Augmentation: every image of a batch gets its own parameters; outputs stay valid images."""

import torch

from train.data.augment import AugmentParams, BatchAugment, hsv_to_rgb, rgb_to_hsv


def _batch(n: int = 64, c: int = 3, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    one = torch.randint(0, 256, (1, c, size, size), generator=g, dtype=torch.uint8)
    return one.repeat(n, 1, 1, 1)  # the same image n times: any difference comes from the parameters


def test_same_image_gets_different_crops_per_sample():
    aug = BatchAugment(AugmentParams(out_size=32, jitter_p=0.0, gray_p=0.0, flip_p=0.0))
    out = aug(_batch(), torch.Generator().manual_seed(1))
    flat = out.flatten(1)
    dist = torch.cdist(flat, flat)
    off_diag = dist[~torch.eye(len(flat), dtype=torch.bool)]
    # A batch-wide crop would make every pair identical; per-sample crops make (almost) all differ.
    assert (off_diag > 1e-3).float().mean() > 0.99


def test_jitter_factors_differ_per_sample_and_follow_probability():
    aug = BatchAugment(AugmentParams(out_size=32, crop_min_scale=1.0, flip_p=0.0, jitter_strength=1.0,
                                     jitter_p=0.8, gray_p=0.0))
    # A flat mid-gray image: the crop is a no-op, so only brightness/contrast change its mean.
    flat = torch.full((2000, 3, 32, 32), 128, dtype=torch.uint8)
    means = aug(flat, torch.Generator().manual_seed(2)).mean((1, 2, 3))
    unchanged = (means - 128 / 255).abs() < 1e-4
    assert abs(unchanged.float().mean().item() - 0.2) < 0.04  # jitter applied with p = 0.8
    changed = means[~unchanged]
    assert changed.unique().numel() > 0.9 * changed.numel()  # each image its own factor
    assert changed.std() > 0.1


def test_grayscale_probability_and_flip():
    aug = BatchAugment(AugmentParams(out_size=16, crop_min_scale=1.0, flip_p=0.0, jitter_p=0.0, gray_p=0.3))
    colour = torch.zeros(3000, 3, 16, 16, dtype=torch.uint8)
    colour[:, 0] = 200  # pure red
    out = aug(colour, torch.Generator().manual_seed(3))
    gray = (out[:, 0] - out[:, 1]).abs().amax((1, 2)) < 1e-5
    assert abs(gray.float().mean().item() - 0.3) < 0.04

    ramp = torch.arange(16, dtype=torch.uint8).mul(15).view(1, 1, 1, 16).repeat(2000, 1, 16, 1)
    flipper = BatchAugment(AugmentParams(out_size=16, crop_min_scale=1.0, flip_p=0.5, jitter_p=0.0, gray_p=0.0))
    out = flipper(ramp, torch.Generator().manual_seed(4))
    flipped = out[:, 0, 8, 0] > out[:, 0, 8, -1]
    assert abs(flipped.float().mean().item() - 0.5) < 0.05


def test_output_range_shape_and_determinism():
    params = AugmentParams(out_size=24, blur_p=0.5, rotate_degrees=10, shear_degrees=10, translate=0.1,
                           elastic_alpha=0.1)
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    a = BatchAugment(params)(x, torch.Generator().manual_seed(5))
    b = BatchAugment(params)(x, torch.Generator().manual_seed(5))
    assert a.shape == (32, 3, 24, 24) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)


def test_hsv_round_trip():
    x = torch.rand(8, 3, 5, 5)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
