"""Per-sample random augmentation of whole uint8 batches, on whatever device the batch lives.

Each image of a batch draws its own parameters (crop box, flip, affine, elastic field, jitter
factors and order, grayscale, blur): one parameter set shared by a batch is wrong for contrastive
learning. Everything is batched tensor maths (one grid_sample, a few element-wise ops, one grouped
convolution), so on a GPU the data set stays resident as uint8 and augmentation costs little.

The data set is stored at its own side (CIFAR 32 px, ImageNet subsets 256 px) and the random resized
crop outputs the model's input side (`out_size`, e.g. 224), as torchvision's RandomResizedCrop does
on the stored image in the official code; `resize_images` is the evaluation path's resize to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from contract.preprocess import center_start

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
BLUR_KERNEL_AT_224 = 23
BLUR_SIGMA_AT_224 = (0.1, 2.0)
"""The official Gaussian blur at 224 px (CC modules/transform.py, ProPos models/basic_template.py):
a 23 px kernel, sigma 0.1-2 px; at other sides both scale with the side."""
SUPERSAMPLE_ABOVE = 1.25
"""A crop that shrinks the stored image by more than this is rendered at k x the output side and
box-filtered (k = ceil(stored / out)), so downscaling does not alias."""
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
"""torchvision's RandomResizedCrop: aspect ratios 3/4..4/3, up to 10 draws of a box that fits."""


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation strengths; `from_config` reads them off a run config."""

    out_size: int
    crop_min_scale: float = 0.08
    flip_p: float = 0.5
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    rotate_degrees: float = 0.0
    shear_degrees: float = 0.0
    translate: float = 0.0
    elastic_alpha: float = 0.0
    jitter_order: str = "random"

    @classmethod
    def from_config(cls, cfg) -> AugmentParams:
        names = [f for f in cls.__dataclass_fields__ if f != "out_size"]
        return cls(out_size=cfg.image_size, **{n: getattr(cfg, n) for n in names})


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


@dataclass
class CropBoxes:
    """One crop box per image, in pixels of the stored image (float tensors holding whole numbers)."""

    top: torch.Tensor  # (B,)
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor


def crop_boxes(n: int, height: int, width: int, min_scale: float, g: torch.Generator, device: torch.device,
               ratio: tuple[float, float] = CROP_RATIO, attempts: int = CROP_ATTEMPTS) -> CropBoxes:
    """torchvision's RandomResizedCrop.get_params for n images of height x width, batched on the device.

    Per image up to `attempts` draws of an area (a uniform fraction min_scale..1 of the image's) and a
    log-uniform aspect ratio; the first draw whose rounded width and height fit in the image is the box, at
    a uniform whole-pixel position. An image with none gets torchvision's fallback: the centred box of the
    image's own ratio clamped to `ratio`, as large as fits.
    """
    draws = (n, attempts)
    area = height * width * (torch.rand(draws, generator=g, device=device) * (1 - min_scale) + min_scale)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(draws, generator=g, device=device) * (log_hi - log_lo) + log_lo)
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)  # the first draw that fits (0 when none does)
    found = fits.any(1)
    if width / height < ratio[0]:
        fallback_w, fallback_h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        fallback_w, fallback_h = round(height * ratio[1]), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w.gather(1, first).squeeze(1), float(fallback_w))
    h = torch.where(found, h.gather(1, first).squeeze(1), float(fallback_h))
    position = torch.rand(2, n, generator=g, device=device)
    top = torch.where(found, (position[0] * (height - h + 1)).floor(), ((height - h) / 2).floor())
    left = torch.where(found, (position[1] * (width - w + 1)).floor(), ((width - w) / 2).floor())
    return CropBoxes(top, left, h, w)


def blur_kernel_size(side: int) -> int:
    """Odd Gaussian kernel side for images of `side` px: 23 at 224, scaled with the side, at least 3."""
    return max(3, 2 * round((BLUR_KERNEL_AT_224 * side / 224 - 1) / 2) + 1)


def supersampling(stored_side: int, out_size: int) -> int:
    """Render factor k of the random resized crop: 1, or ceil(stored / out) when it shrinks by > 1.25x."""
    return 1 if stored_side <= SUPERSAMPLE_ABOVE * out_size else math.ceil(stored_side / out_size)


def resize_images(images: torch.Tensor, size: int, crop: float = 1.0) -> torch.Tensor:
    """The evaluation resize: uint8 (B, C, H, W) -> uint8 (B, C, size, size), on the images' device.

    Bilinear (antialiased when shrinking, as PIL's resize that `contract.preprocess` uses), rounded
    to uint8 so the model sees what the gateway gives it: a uint8 image at the model's input size.
    A no-op at size x size. crop < 1 keeps that fraction of each side around the centre first, as
    torchvision's CenterCrop places it (ProPos's test_resized_crop: 224/256 of the 256 px square).
    """
    if crop < 1:
        height, width = images.shape[-2:]
        keep_h, keep_w = round(height * crop), round(width * crop)
        top, left = center_start(height, keep_h), center_start(width, keep_w)
        images = images[..., top:top + keep_h, left:left + keep_w]
    if tuple(images.shape[-2:]) == (size, size):
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    w = x.new_tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV in [0, 1]."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    flat = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(flat, ones, maxc)
    div = torch.where(flat, ones, chroma)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) HSV in [0, 1] -> RGB in [0, 1]."""
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    table = torch.stack([
        torch.stack((v, q, p, p, t, v), 1),
        torch.stack((t, v, v, q, p, p), 1),
        torch.stack((p, p, t, v, v, q), 1),
    ], 1)  # (B, 3 channels, 6 sectors, H, W)
    index = i.unsqueeze(1).unsqueeze(1).expand(-1, 3, 1, -1, -1)
    return table.gather(2, index).squeeze(2)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) in [0, 1], factor (B, 1, 1, 1): x * factor, clamped (torchvision's adjust_brightness)."""
    return (x * factor).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean grey level of each image (torchvision's adjust_contrast)."""
    mean = (to_gray(x) if x.shape[1] == 3 else x).mean((1, 2, 3), keepdim=True)
    return (factor * x + (1 - factor) * mean).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's grey version (torchvision's adjust_saturation); RGB only."""
    return (factor * x + (1 - factor) * to_gray(x)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `shift` (B, 1, 1, 1) turns (torchvision's adjust_hue); RGB only."""
    hsv = rgb_to_hsv(x)
    return hsv_to_rgb(torch.cat([torch.remainder(hsv[:, :1] + shift, 1.0), hsv[:, 1:]], 1))


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
"""ColorJitter's four adjustments; a JitterDraw's order indexes them."""


@dataclass
class JitterDraw:
    """One batch's colour jitter parameters."""

    applied: torch.Tensor  # (B,) bool: jittered at all (probability jitter_p)
    factors: list[torch.Tensor]  # per op of JITTER_OPS (grey: the first 2): (B, 1, 1, 1), 1 (hue 0) if not applied
    order: torch.Tensor | None  # (B, 4) int64: row i is image i's order of JITTER_OPS; None: the fixed order


def apply_jitter(x: torch.Tensor, draw: JitterDraw) -> torch.Tensor:
    """x (B, C, H, W) in [0, 1] -> jittered. Fixed order: every op on the whole batch (identity factors
    where not applied); random order: at each position each op on the images that have it there."""
    ops = JITTER_OPS[:len(draw.factors)]
    if draw.order is None:
        for op, factor in zip(ops, draw.factors, strict=True):
            x = op(x, factor)
        return x
    x = x.clone()
    for position in range(draw.order.shape[1]):
        for index, (op, factor) in enumerate(zip(ops, draw.factors, strict=True)):
            chosen = ((draw.order[:, position] == index) & draw.applied).nonzero().squeeze(1)
            if chosen.numel():
                x[chosen] = op(x[chosen], factor[chosen])
    return x


class BatchAugment:
    """uint8 (B, C, H, W) -> float (B, C, S, S) in [0, 1], every image with its own parameters."""

    def __init__(self, params: AugmentParams) -> None:
        if not 0 < params.crop_min_scale <= 1:
            raise ValueError(f"crop_min_scale must be in (0, 1], got {params.crop_min_scale}")
        if params.jitter_order not in ("random", "fixed"):
            raise ValueError(f"jitter_order must be random or fixed, got {params.jitter_order!r}")
        self.p = params

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self.geometric(images.float().div_(255.0), g)
        if self.p.jitter_strength > 0 and self.p.jitter_p > 0:
            x = self.jitter(x, g)
        if x.shape[1] == 3 and self.p.gray_p > 0:
            gray = _bernoulli(x.shape[0], self.p.gray_p, g, x.device).view(-1, 1, 1, 1)
            x = torch.where(gray, to_gray(x).expand_as(x), x)
        if self.p.blur_p > 0:
            x = self.blur(x, g)
        return x

    def geometric(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random resized crop, flip, rotation, shear, translation and elastic field in one resample.

        x: (B, C, H, W) at the stored side -> (B, C, out_size, out_size); the crop box is torchvision's
        (`crop_boxes`: area crop_min_scale..1 of the stored image, aspect 3/4..4/3, whole pixels).
        """
        p, n, dev = self.p, x.shape[0], x.device
        height, width = x.shape[2:]
        box = crop_boxes(n, height, width, p.crop_min_scale, g, dev)
        w, h = box.width / width, box.height / height  # crop side / image side
        cx = (2 * box.left + box.width) / width - 1  # the box's centre, in grid_sample's [-1, 1] coordinates
        cy = (2 * box.top + box.height) / height - 1
        cx = cx + _uniform(n, -p.translate, p.translate, g, dev) * 2
        cy = cy + _uniform(n, -p.translate, p.translate, g, dev) * 2
        angle = torch.deg2rad(_uniform(n, -p.rotate_degrees, p.rotate_degrees, g, dev))
        shear = torch.tan(torch.deg2rad(_uniform(n, -p.shear_degrees, p.shear_degrees, g, dev)))
        flip = torch.where(_bernoulli(n, p.flip_p, g, dev), -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # theta maps output coordinates to input coordinates: scale . rotate . shear . flip.
        a11, a12 = cos, cos * shear - sin
        a21, a22 = sin, sin * shear + cos
        theta = torch.stack([
            torch.stack([w * a11 * flip, w * a12, cx], 1),
            torch.stack([h * a21 * flip, h * a22, cy], 1),
        ], 1)
        k = supersampling(max(x.shape[2:]), p.out_size)
        size = (n, x.shape[1], k * p.out_size, k * p.out_size)
        grid = F.affine_grid(theta, size, align_corners=False)
        if p.elastic_alpha > 0:
            noise = torch.randn(n, 2, 4, 4, generator=g, device=dev) * p.elastic_alpha
            field = F.interpolate(noise, size=size[2:], mode="bicubic", align_corners=False)
            grid = grid + field.permute(0, 2, 3, 1)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return F.avg_pool2d(out, k) if k > 1 else out

    def _factors(self, n: int, spread: float, applied: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        f = _uniform(n, max(0.0, 1 - spread), 1 + spread, g, applied.device)
        return torch.where(applied, f, torch.ones_like(f)).view(n, 1, 1, 1)

    def jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Colour jitter with probability jitter_p (see `draw_jitter`, `apply_jitter`)."""
        return apply_jitter(x, self.draw_jitter(x.shape[0], x.shape[1], g, x.device))

    def draw_jitter(self, n: int, channels: int, g: torch.Generator, device: torch.device) -> JitterDraw:
        """Per image: applied with probability jitter_p, factors as torchvision's ColorJitter(0.8s, 0.8s,
        0.8s, 0.2s) (saturation and hue for RGB only), and with jitter_order "random" its own order."""
        s = self.p.jitter_strength
        applied = _bernoulli(n, self.p.jitter_p, g, device)
        factors = [self._factors(n, 0.8 * s, applied, g) for _ in range(3 if channels == 3 else 2)]
        if channels == 3:
            hue = torch.where(applied, _uniform(n, -0.2 * s, 0.2 * s, g, device), torch.zeros(n, device=device))
            factors.append(hue.view(n, 1, 1, 1))
        order = None
        if self.p.jitter_order == "random":
            order = torch.rand(n, len(JITTER_OPS), generator=g, device=device).argsort(1)
        return JitterDraw(applied, factors, order)

    def blur(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Gaussian blur with probability blur_p; at 224 px the official kernel 23 and sigma 0.1-2 px, both
        scaled with the side elsewhere."""
        n, c, hgt, wid = x.shape
        k = blur_kernel_size(hgt)
        low, high = (bound * hgt / 224 for bound in BLUR_SIGMA_AT_224)
        sigma = _uniform(n, low, high, g, x.device)
        sigma = torch.where(_bernoulli(n, self.p.blur_p, g, x.device), sigma, torch.full_like(sigma, 1e-3))
        offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
        kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, k)
        flat = x.reshape(1, n * c, hgt, wid)
        flat = F.conv2d(F.pad(flat, (k // 2, k // 2, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, k), groups=n * c)
        flat = F.conv2d(F.pad(flat, (0, 0, k // 2, k // 2), mode="reflect"), kernel.view(n * c, 1, k, 1), groups=n * c)
        return flat.view(n, c, hgt, wid)
