"""scripts/: the GPU check runs end to end on the CPU (--dry-run), so it is known to work when a GPU is lent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what the bare GPU machine lacks (it has torch, torchvision, onnx, onnxruntime, numpy, pillow)
ABSENT_ON_GPU_MACHINE = ["tqdm", "tensorboard", "scipy", "sklearn", "matplotlib", "faiss", "threadpoolctl",
                         "fastapi", "uvicorn", "prometheus_client", "tritonclient", "orjson", "httpx", "pytest"]
SECTIONS = ["=== 1. environment", "=== 2. training step vs backbone alone, eager",
            "=== 3. k-means on the GPU", "=== 4. onnxruntime CUDA execution provider vs PyTorch eager",
            "=== 5. every method trains 2 epochs on the device and exports with passing parity",
            "=== 6. CC's CIFAR-10 paper recipe: epoch time projected to 1000 epochs",
            "=== 7. fp32 vs bf16: CoHiClust's metrics",
            "=== 8. training step vs backbone alone, torch.compile"]


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
    # sections 5-7 trained and exported for real (on the CPU, tiny): every method, the paper epoch, both precisions
    for method in ("cc", "drc", "cohiclust", "propos", "c3"):
        assert re.search(rf"^{method}: NMI [0-9.]+ .* 2 epochs in [0-9.]+ s; exported, parity passed$", out, re.M), out
    assert re.search(r"^cc paper recipe \(smallcnn, cifar stem, 16 px, batch 32, amp false\): the second epoch .* "
                     r"1000 epochs [0-9.]+ h", out, re.M), out
    for amp in ("false", "true"):
        assert re.search(rf"^cohiclust --amp {amp}: NMI [0-9.]+ .* 2 epochs in", out, re.M), out
    assert "FAILED" not in out and out.rstrip().splitlines()[-1].startswith("gpu_check: ok"), out


def test_gpu_check_refuses_unknown_arguments():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--gpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--dry-run" in done.stdout


def test_modules_the_gpu_check_runs_import_without_the_projects_other_dependencies():
    # a meta-path finder that makes those packages unimportable, as on the GPU machine
    code = f"""
import importlib.abc, importlib.machinery, sys
class Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in {ABSENT_ON_GPU_MACHINE!r}:
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}}", name=spec.name)
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, Absent())
try:
    import sklearn
except ModuleNotFoundError:
    pass
else:
    sys.exit("the finder did not hide sklearn")
import bench.export_speed, bench.kmeans, bench.train_throughput, contract.sessions, train.kmeans, train.trainer
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
