"""A real Triton Inference Server on CPU for tests (helper, not a test file).

The server is the tritonserver 2.51 binary of the nvidia-pytriton wheel, in .triton-venv (made by
scripts/setup_triton.sh; see /work/shared/TRITON_CPU.md). It has the python backend only, so it
serves the CPU flavour of the repository (python-backend models running onnxruntime).

    reason = triton_available()            # None, or why tests needing it must skip
    with TritonServer(repo, tmp_path / "triton.log") as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
        ...
        server.stop(); server.start()      # kill Triton and bring it back (same ports)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".triton-venv"
TRITON_DIR = VENV / "lib" / "python3.11" / "site-packages" / "pytriton" / "tritonserver"
BINARY = TRITON_DIR / "bin" / "tritonserver"
BACKENDS = TRITON_DIR / "backends"
STUB = BACKENDS / "python" / "triton_python_backend_stub"
SETUP = "run scripts/setup_triton.sh (makes .triton-venv, ~100 MB from PyPI)"


def _libpython_dir() -> str | None:
    """LIBDIR of the python3.11 that made the venv (holds libpython3.11.so.1.0; without it the server hangs)."""
    candidates = []
    cfg = VENV / "pyvenv.cfg"
    if cfg.is_file():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                candidates.append(Path(value.strip()).parent / "lib")
    if sys.version_info[:2] == (3, 11):
        candidates.append(Path(sysconfig.get_config_var("LIBDIR") or ""))
    for directory in candidates:
        if (directory / "libpython3.11.so.1.0").exists():
            return str(directory)
    try:
        out = subprocess.run(["python3.11", "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if (Path(out) / "libpython3.11.so.1.0").exists() else None


def triton_available() -> str | None:
    """None when a CPU tritonserver can be started here, else the reason to skip."""
    if not BINARY.is_file():
        return f"no tritonserver at {BINARY}: {SETUP}"
    if not STUB.is_file():
        return f"python backend stub missing at {STUB}: {SETUP}"
    if _libpython_dir() is None:
        return "libpython3.11.so.1.0 not found (the python backend stub needs it)"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TritonServer:
    """tritonserver on 127.0.0.1 serving `repository`; its output goes to `log_path`.

    http_url and grpc_url are "host:port" (what tritonclient takes); metrics_url is a full URL.
    """

    def __init__(self, repository: Path, log_path: Path, ready_timeout: float = 60.0,
                 extra_args: list[str] | None = None) -> None:
        reason = triton_available()
        if reason:
            raise RuntimeError(reason)
        self.repository = Path(repository).resolve()
        self.log_path = Path(log_path)
        self.ready_timeout = ready_timeout
        self.extra_args = list(extra_args or [])
        self.http_port, self.grpc_port, self.metrics_port = _free_ports(3)
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        return [
            str(BINARY), f"--model-repository={self.repository}", f"--backend-directory={BACKENDS}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0", "--exit-timeout-secs=5",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # the stub's python finds numpy here
        libdir = _libpython_dir() or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        env.pop("PYTHONPATH", None)
        return env

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> TritonServer:
        """Start (or start again) and wait until ready; RuntimeError with the server log otherwise."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(f"\n=== {' '.join(self.command())}\n")
            log.flush()
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.environment(), start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with status {self.process.returncode}; "
                                   f"log {self.log_path}:\n{self.log()[-6000:]}")
            if self.is_ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {self.ready_timeout:.0f} s; "
                           f"log {self.log_path}:\n{self.log()[-6000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the server and its python stubs
            process.wait(5)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
