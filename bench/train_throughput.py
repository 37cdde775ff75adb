"""Training throughput: is the data path and the rest of the step keeping the accelerator busy?

Measures, in one run on one device, for each configuration BACKBONE:STEM:SIZE[:BATCH], images/s of
  (a) the data path alone: index a uint8 batch on the device and augment two views per image,
  (b) the backbone alone: forward + backward + optimiser step on fixed tensors of the same shape
      (both views, 2 x BATCH images),
  (c) the full training step as the trainer runs it: (a), then the trainer's own step
      (train.trainer.train_step on a train_state: the method's forward and its outputs gathered, its loss,
      backward, optimiser and schedule steps, on_step_end) on the model as the trainer builds it
      (train.methods.build_training_model: BatchNorm groups when the preset has them),
and prints the ratio (c)/(b): near 1 means augmentation, heads and losses cost little next to the
backbone. As in the trainer: channels_last on CUDA (the config's `channels_last`), bf16 autocast with
`--amp true` (the presets train fp32), and with `--compile true` torch.compile of the whole method for (c)
and of the backbone for (b) (compilation happens in the warm-up, outside the timing). CUDA is
synchronised around each timed block.

    python bench/train_throughput.py                                   # CPU: small CNN at 16 px (digits-sized)
    python bench/train_throughput.py --device cuda --amp true --configs resnet18:cifar:32:512 resnet34:imagenet:224:128
    python bench/train_throughput.py --device cuda --compile true --configs resnet18:cifar:32:512
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.cli import parse_bool  # noqa: E402
from train.data.augment import AugmentParams, BatchAugment  # noqa: E402
from train.distributed import ProcessGroup  # noqa: E402
from train.methods import build_training_model, make_config  # noqa: E402
from train.methods.base import StepContext  # noqa: E402
from train.trainer import autocast_for, train_state, train_step  # noqa: E402


@dataclass(frozen=True)
class Shape:
    backbone: str
    stem: str
    size: int
    batch: int

    @classmethod
    def parse(cls, text: str, default_batch: int) -> Shape:
        parts = text.split(":")
        if len(parts) not in (3, 4) or not all(p for p in parts):
            raise argparse.ArgumentTypeError(f"configuration {text!r}: expected BACKBONE:STEM:SIZE[:BATCH]")
        return cls(parts[0], parts[1], int(parts[2]), int(parts[3]) if len(parts) == 4 else default_batch)

    def __str__(self) -> str:
        return f"{self.backbone} {self.stem} stem {self.size} px, batch {self.batch}"


def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call after warm-up (synchronising CUDA around the timed block)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def measure(shape: Shape, channels: int, args: argparse.Namespace,
            device: torch.device) -> tuple[float, float, float]:
    """(data path, backbone, full step) images/s of one configuration."""
    cfg = make_config(args.method, dataset=args.dataset, backbone=shape.backbone, stem=shape.stem,
                      image_size=shape.size, batch_size=shape.batch, compile=args.compile, amp=args.amp)
    gpu = device.type == "cuda"
    b = shape.batch
    torch.manual_seed(0)
    data = torch.randint(0, 256, (4 * b, channels, shape.size, shape.size), dtype=torch.uint8, device=device)
    augment = BatchAugment(AugmentParams.from_config(cfg))
    g = torch.Generator(device).manual_seed(0)
    model = build_training_model(cfg, channels, args.clusters).to(device).train()
    channels_last = cfg.channels_last and gpu
    if channels_last:
        model.to(memory_format=torch.channels_last)
    autocast = autocast_for(cfg, device)
    state = train_state(cfg, model, ProcessGroup(), autocast, steps_per_epoch=args.steps + args.warmup)
    backbone = torch.compile(model.backbone) if cfg.compile else model.backbone

    def data_path():
        idx = torch.randint(0, data.shape[0], (b,), generator=g, device=device)
        batch = data[idx]
        x1, x2 = augment(batch, g), augment(batch, g)
        if channels_last:
            x1, x2 = x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last)
        return idx, x1, x2

    fixed = torch.rand(2 * b, channels, shape.size, shape.size, device=device)
    if channels_last:
        fixed = fixed.contiguous(memory_format=torch.channels_last)

    def backbone_step():
        with autocast():
            loss = backbone(fixed).float().pow(2).mean()
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()

    def full_step():
        idx, x1, x2 = data_path()
        train_step(state, x1, x2, StepContext(0, 1, 0, 1, g, idx))

    t_data = timed(data_path, args.steps, args.warmup, device)
    t_backbone = timed(backbone_step, args.steps, args.warmup, device)
    t_full = timed(full_step, args.steps, args.warmup, device)
    return b / t_data, b / t_backbone, b / t_full


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="BACKBONE:STEM:SIZE[:BATCH] ... (default: smallcnn:cifar:16 on CPU, "
                             "resnet18:cifar:32 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch of configurations that give none")
    parser.add_argument("--channels", type=int, default=None, help="image channels (default: 1 for smallcnn, else 3)")
    parser.add_argument("--method", default="cc", help="registered method whose training step is timed")
    parser.add_argument("--dataset", default="cifar10", help="data set whose defaults (augmentations) apply")
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--compile", type=parse_bool, default=False, help="torch.compile as the trainer's --compile")
    parser.add_argument("--amp", type=parse_bool, default=False, help="bf16 autocast as the trainer's --amp")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: its default)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    texts = args.configs or (["resnet18:cifar:32"] if gpu else ["smallcnn:cifar:16"])
    shapes = [Shape.parse(t, args.batch_size) for t in texts]
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; method {args.method}; bf16 autocast "
          f"{'on' if args.amp else 'off'}; channels_last {'on' if gpu else 'off (CUDA only)'}; torch.compile "
          f"{'on' if args.compile else 'off'}", flush=True)
    for shape in shapes:
        channels = args.channels or (1 if shape.backbone == "smallcnn" else 3)
        data, backbone, full = measure(shape, channels, args, device)
        print(f"{shape}: (a) data + augmentation {data:9.0f} images/s | (b) backbone fwd+bwd {backbone:8.0f} "
              f"images/s (2 views each) | (c) full {args.method} step {full:8.0f} images/s | ratio (c)/(b) "
              f"{full / backbone:.2f}", flush=True)


if __name__ == "__main__":
    main()
