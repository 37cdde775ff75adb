"""The README's demo, end to end on the built-in digits data (no download):

1. train CC on scikit-learn's digits (prints NMI / ACC / ARI),
2. export it to ONNX and a Triton model repository (parity-checked against PyTorch),
3. start the gateway (embedded onnxruntime backend) on a free local port,
4. send a few digit images to /cluster with the project's client (serve/client.py) and print the answers:
   cluster, its name (the digit it maps to on the training data), probability and the novelty flags.

    python scripts/demo.py [--epochs N]    # what `make demo` runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serve.client import Client  # noqa: E402

RUN_DIR = ROOT / "runs" / "cc-digits-smallcnn"
REPOSITORY = ROOT / "model_repository"


def step(title: str, *command: str) -> None:
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    subprocess.run([sys.executable, *command], cwd=ROOT, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(client: Client, gateway: subprocess.Popen, timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise SystemExit(f"the gateway exited with code {gateway.returncode}")
        try:
            if client.http.get("/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the gateway was not ready after {timeout_s:.0f} s")


def digit_image(pixels: np.ndarray) -> Image.Image:
    # 8x8 as in the data set: the gateway resizes it exactly as training did.
    return Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (quicker look)")
    args = parser.parse_args()
    extra = ["--epochs", str(args.epochs)] if args.epochs else []
    step("1. train CC on digits", "-m", "train", "--method", "cc", "--dataset", "digits", "--run-dir", str(RUN_DIR),
         *extra)
    step("2. export to ONNX + Triton repositories", "-m", "export", "--engine", "onnx", "--run", str(RUN_DIR),
         "--name", "digits", "--output", str(REPOSITORY))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"\n=== 3. start the gateway on {url}", flush=True)
    gateway = subprocess.Popen([sys.executable, "-m", "serve", "--model-repository", str(REPOSITORY),
                                "--port", str(port), "--log-level", "warning"], cwd=ROOT)
    try:
        with Client(url) as client:
            wait_ready(client, gateway)
            digits = load_digits()
            picks = [int(np.flatnonzero(digits.target == d)[0]) for d in (0, 3, 5, 7, 9)]
            images = [digit_image(digits.images[i]) for i in picks] + [Image.new("RGB", (32, 32), (255, 0, 0))]
            labels = [f"digit {digits.target[i]}" for i in picks] + ["a red square"]
            print(f"\n=== 4. send {len(images)} images to {url}/cluster with serve.client.Client", flush=True)
            results = client.cluster(images)
            for label, r in zip(labels, results, strict=True):
                flags = ", ".join(f for f, on in (("low confidence", r.low_confidence), ("OUT OF DISTRIBUTION", r.ood))
                                  if on) or "in distribution"
                print(f"  {label:>12}: cluster {r.cluster} {r.name!r:>6}  probability {r.probability:.3f}  "
                      f"ood_score {r.ood_score:.2f}  ({flags})")
            print("first result as JSON:", json.dumps(dataclasses.asdict(results[0])))
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)


if __name__ == "__main__":
    main()
