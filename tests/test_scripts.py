"""scripts/: the GPU check runs end to end on the CPU (--dry-run), so it is known to work when a GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["=== 1. environment", "=== 2. training step vs backbone alone, eager",
            "=== 3. k-means on the GPU", "=== 4. onnxruntime CUDA execution provider vs PyTorch eager",
            "=== 5. training step vs backbone alone, torch.compile"]


def test_gpu_check_dry_run_prints_every_section():
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    positions = [out.find(header) for header in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), out
    assert "project modules import without the project's other dependencies: ok" in out
    # each benchmark printed its figures, not only its header
    for backbone in ("resnet18 cifar stem", "resnet34 imagenet stem"):
        assert f"{backbone}" in out and "ratio (c)/(b)" in out.split(backbone, 1)[1].splitlines()[0], out
    assert "k=  10: ours" in out and "k=  20: ours" in out, out
    assert "'providers': ['CPUExecutionProvider']" in out and "onnxruntime (shared settings, fused graph)" in out, out
    assert "FAILED" not in out and out.rstrip().splitlines()[-1].startswith("gpu_check: ok"), out


def test_gpu_check_refuses_unknown_arguments():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--gpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--dry-run" in done.stdout
