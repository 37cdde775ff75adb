"""Augmentation: every image of a batch gets its own parameters; outputs stay valid images; crops and the
evaluation resize take the stored side to the model side; crop boxes and colour jitter are torchvision's."""

import pytest
import torch

from train.data.augment import (
    AugmentParams,
    BatchAugment,
    apply_jitter,
    blur_kernel_size,
    crop_boxes,
    hsv_to_rgb,
    resize_images,
    rgb_to_hsv,
    supersampling,
)


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


# --- stored side -> model side -------------------------------------------------------------------


def test_crops_of_the_stored_images_come_out_at_the_model_size():
    # CIFAR stays 32 px in memory; the paper presets crop it to 224 px on the device (and 256 -> 224).
    for stored, out_size in ((32, 224), (256, 224), (256, 96)):
        x = torch.randint(0, 256, (4, 3, stored, stored), dtype=torch.uint8)
        out = BatchAugment(AugmentParams(out_size=out_size, blur_p=0.5))(x, torch.Generator().manual_seed(0))
        assert out.shape == (4, 3, out_size, out_size) and 0 <= out.min() and out.max() <= 1


def test_a_shrinking_crop_is_supersampled_not_aliased():
    # A 1 px checkerboard cropped whole from 256 to 96 px is mid-grey; point sampling it would alias.
    board = ((torch.arange(256)[:, None] + torch.arange(256)[None, :]) % 2 * 255).to(torch.uint8)
    x = board.view(1, 1, 256, 256).repeat(8, 1, 1, 1)
    assert supersampling(256, 96) == 3 and supersampling(256, 224) == 1 and supersampling(32, 224) == 1
    out = BatchAugment(AugmentParams(out_size=96, crop_min_scale=1.0, flip_p=0.0, jitter_p=0.0, gray_p=0.0))(
        x, torch.Generator().manual_seed(0))
    assert (out - 0.5).abs().max() < 0.1  # point-sampled (k = 1) it deviates by 0.33


def test_blur_kernel_is_the_official_23_px_at_224_and_scales_with_the_side():
    assert blur_kernel_size(224) == 23
    assert [blur_kernel_size(side) for side in (96, 448, 32, 8)] == [9, 45, 3, 3]


def test_test_resized_crop_keeps_the_central_224_of_256_as_torchvision_centercrop():
    """ProPos's Dogs evaluation: Resize(256) + CenterCrop(224) of the image; the stored image is the 256 px centre
    square already, so the evaluation view is its central 224 pixels, untouched at 224 px."""
    from torchvision.transforms.functional import center_crop

    from train.config import EVAL_CROP

    g = torch.Generator().manual_seed(7)
    stored = torch.randint(0, 256, (2, 3, 256, 256), generator=g, dtype=torch.uint8)
    assert torch.equal(resize_images(stored, 224, EVAL_CROP), center_crop(stored, [224, 224]))
    small = resize_images(stored, 96, EVAL_CROP)  # at another model size: the same centre, resized
    assert torch.equal(small, resize_images(center_crop(stored, [224, 224]), 96))


def test_evaluation_resize_agrees_with_the_gateway_decode():
    """The gateway decodes a file straight to the model size (contract.preprocess); training keeps the
    stored side and resizes on the device. CIFAR (32 -> 224): at most 1 grey level apart. ImageNet
    subsets (stored 256 -> 224): same centre square, resampled twice; on scikit-learn's two sample
    photos (640x427) a mean of 1-2.3 grey levels (max about 40 on sharp edges: README)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from contract.preprocess import prepare

    g = torch.Generator().manual_seed(6)
    cifar = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    ours = resize_images(cifar, 224)
    assert ours.dtype == torch.uint8 and ours.shape == (16, 3, 224, 224)
    gateway = torch.stack([torch.from_numpy(prepare(Image.fromarray(i.permute(1, 2, 0).numpy()), 224, 3))
                           for i in cifar])
    assert (ours.int() - gateway.int()).abs().max() <= 1
    assert resize_images(cifar, 32) is cifar  # already at the model size: untouched
    for photo in load_sample_images().images:
        image = Image.fromarray(photo)
        stored = torch.from_numpy(prepare(image, 256, 3))[None]
        diff = (resize_images(stored, 224)[0].int() - torch.from_numpy(prepare(image, 224, 3)).int()).abs()
        assert diff.float().mean() < 3.0


# --- colour jitter: torchvision's ColorJitter, a random order per image ---------------------------


def test_jitter_applies_torchvision_adjustments_in_each_images_own_order():
    from torchvision.transforms import functional as TF

    aug = BatchAugment(AugmentParams(out_size=8, jitter_strength=1.0, jitter_p=0.8))
    g = torch.Generator().manual_seed(7)
    x = torch.rand(64, 3, 8, 8, generator=g)
    draw = aug.draw_jitter(64, 3, g, x.device)
    assert sorted(draw.order[0].tolist()) == [0, 1, 2, 3]
    got = apply_jitter(x, draw)
    reference = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(64):
        expected = x[i]
        if draw.applied[i]:
            for op in draw.order[i].tolist():
                expected = reference[op](expected, float(draw.factors[op][i]))
        torch.testing.assert_close(got[i], expected, atol=2e-5, rtol=0)


def test_jitter_order_is_drawn_per_image_or_fixed():
    g = torch.Generator().manual_seed(8)
    draw = BatchAugment(AugmentParams(out_size=8)).draw_jitter(4000, 3, g, torch.device("cpu"))
    position = draw.order.argsort(1)  # position of each op in each image's order
    assert abs((position[:, 0] < position[:, 1]).float().mean().item() - 0.5) < 0.03  # brightness before contrast
    assert len({tuple(row) for row in draw.order[:200].tolist()}) == 24  # all 4! orders occur
    fixed = BatchAugment(AugmentParams(out_size=8, jitter_order="fixed")).draw_jitter(4, 3, g, torch.device("cpu"))
    assert fixed.order is None
    with pytest.raises(ValueError, match="jitter_order"):
        BatchAugment(AugmentParams(out_size=8, jitter_order="sorted"))


# --- random resized crop: torchvision's box sampling ---------------------------------------------

DRAWS = 20_000


def torchvision_boxes(height: int, width: int, min_scale: float) -> torch.Tensor:
    """(DRAWS, 4) float64 boxes (top, left, height, width) of torchvision's RandomResizedCrop.get_params."""
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    image = torch.zeros(1, height, width)
    return torch.tensor([RandomResizedCrop.get_params(image, [min_scale, 1.0], [3 / 4, 4 / 3]) for _ in range(DRAWS)],
                        dtype=torch.float64)


@pytest.mark.parametrize("height, width, min_scale", [
    (32, 32, 0.08),  # CIFAR
    (8, 8, 0.08),  # digits' native 8 px: the rounding to whole pixels shapes the distribution
    (4, 32, 0.08),  # an extreme ratio: half the images get torchvision's fallback, the centred 4 x 5 box
])
def test_crop_boxes_are_distributed_as_torchvisions(height, width, min_scale):
    """Area, aspect ratio and position of 20k boxes against torchvision's 20k (two-sample KS tests); the
    previous sampling (each side clamped to the image) gave area KS distances of 0.099-0.90 here."""
    from scipy.stats import ks_2samp

    ours = crop_boxes(DRAWS, height, width, min_scale, torch.Generator().manual_seed(1), torch.device("cpu"))
    top, left, h, w = (v.double() for v in (ours.top, ours.left, ours.height, ours.width))
    ref = torchvision_boxes(height, width, min_scale)
    pairs = {"area": (h * w, ref[:, 2] * ref[:, 3]), "aspect": (w / h, ref[:, 3] / ref[:, 2]),
             "top": (top, ref[:, 0]), "left": (left, ref[:, 1])}
    for name, (a, b) in pairs.items():
        assert ks_2samp(a.numpy(), b.numpy()).pvalue > 0.01, name
    assert torch.equal(torch.stack([top, left, h, w]), torch.stack([top, left, h, w]).round())  # whole pixels
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()


def test_the_crop_resamples_its_box():
    """On a ramp image (value = 8 x column) each output pixel of a crop without flip holds the ramp at its
    sampling point: left + (column + 1/2) x width / out - 1/2, bilinear interpolation of a line being exact."""
    side, batch = 32, 64
    ramp = (torch.arange(side) * 8).to(torch.uint8).view(1, 1, 1, side).repeat(batch, 1, side, 1)
    aug = BatchAugment(AugmentParams(out_size=side, flip_p=0.0, jitter_p=0.0, gray_p=0.0))
    g = torch.Generator().manual_seed(9)
    box = crop_boxes(batch, side, side, 0.08, torch.Generator().set_state(g.get_state()), torch.device("cpu"))
    out = aug(ramp, g)[:, 0] * 255  # (B, S, S)
    column = (torch.arange(side) + 0.5).view(1, -1)
    x = box.left.view(-1, 1) + column * (box.width / side).view(-1, 1) - 0.5  # (B, S) sampling points
    inside = (x >= 0) & (x <= side - 1)
    torch.testing.assert_close(out[:, side // 2][inside], (8 * x)[inside], atol=1e-3, rtol=0)
