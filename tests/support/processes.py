"""A real gateway process on a free loopback port, for tests that need HTTP as clients see it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gateway_process(repository: Path, log: Path, timeout_s: float = 60.0, **settings: str) -> Iterator[str]:
    """`python -m serve` on `repository` (settings as DCS_* variables); yields its base URL once /readyz is 200."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DCS_PORT": str(port), "DCS_HOST": "127.0.0.1",
           "DCS_MODEL_REPOSITORY": str(repository), **{f"DCS_{k.upper()}": str(v) for k, v in settings.items()}}
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the gateway exited with {process.returncode}: {log.read_text()[-2000:]}")
                probe = urllib.request.Request(f"{url}/readyz", headers={"X-API-Key": settings.get("api_key", "")})
                try:
                    with urllib.request.urlopen(probe, timeout=2) as answer:
                        if answer.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the gateway was not ready in {timeout_s} s: {log.read_text()[-2000:]}")
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
