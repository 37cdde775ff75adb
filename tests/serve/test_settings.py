"""Settings from DCS_* variables and flags; the gateway imports and answers without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serve.__main__ import build_parser
from serve.settings import Settings, load_settings
from tests.support.serving import exported

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_environment_and_overrides_in_that_order():
    assert load_settings({}) == Settings()
    env = {"DCS_API_KEY": "k", "DCS_MAX_BATCH_SIZE": "7", "DCS_MAX_WAIT_MS": "2.5", "DCS_QUEUE_SIZE": "300",
           "DCS_MAX_IMAGE_BYTES": "1000", "DCS_MAX_IMAGE_PIXELS": "5000", "DCS_MAX_IMAGES_PER_REQUEST": "9",
           "DCS_BACKEND": "triton", "DCS_TRITON_URL": "127.0.0.1:9", "OTHER": "x"}
    s = load_settings(env, max_batch_size=None, port=9000)
    assert (s.api_key, s.max_batch_size, s.max_wait_ms, s.queue_size) == ("k", 7, 2.5, 300)
    assert (s.max_image_bytes, s.max_image_pixels, s.max_images_per_request) == (1000, 5000, 9)
    assert (s.backend, s.triton_url, s.port, s.concurrency) == ("triton", "127.0.0.1:9", 9000, 2)
    assert load_settings(env, max_batch_size=3).max_batch_size == 3  # flags win
    assert s.public()["api_key"] == "***"


@pytest.mark.parametrize("env, message", [
    ({"DCS_MAX_BATCH_SIZE": "many"}, "DCS_MAX_BATCH_SIZE"),
    ({"DCS_MAX_BATCH_SIZE": "0"}, "max_batch_size must be >= 1"),
    ({"DCS_BACKEND": "torch"}, "unknown backend"),
    ({"DCS_QUEUE_SIZE": "10"}, "must not exceed queue_size"),
])
def test_bad_settings_fail_with_a_clear_message(env, message):
    with pytest.raises(ValueError, match=message):
        load_settings(env)


def test_unknown_override_is_refused():
    with pytest.raises(ValueError, match="unknown settings"):
        load_settings({}, max_batchsize=3)


def test_every_setting_has_a_flag():
    args = build_parser().parse_args(["--backend", "triton", "--model-repository", "repo", "--triton-url", "h:1",
                                      "--host", "0.0.0.0", "--port", "1234", "--max-wait-ms", "3"])
    s = load_settings({}, **vars(args))
    assert (s.backend, s.model_repository, s.triton_url, s.host, s.port, s.max_wait_ms) == \
           ("triton", "repo", "h:1", "0.0.0.0", 1234, 3.0)
    assert all(v is None for k, v in vars(build_parser().parse_args([])).items())


_NO_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import serve, serve.app, serve.__main__, serve.backends.embedded, serve.backends.triton, serve.images
from fastapi.testclient import TestClient
from serve.settings import load_settings
from tests.support.serving import digit_pngs_without_torch
app = serve.create_app(load_settings({}, model_repository=sys.argv[1]))
with TestClient(app, base_url="http://localhost") as client:
    r = client.post("/cluster", files=[("files", ("a.png", digit_pngs_without_torch(), "image/png"))])
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["results"][0]["cluster"], int)
assert "torch" not in [m.split(".")[0] for m, v in sys.modules.items() if v is not None]
print("ok without torch")
"""


def test_gateway_imports_and_answers_without_torch(tiny_run, tmp_path_factory):
    model = exported(tiny_run, tmp_path_factory, "cc")
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, str(model.repository)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok without torch" in out.stdout


def test_cli_help_and_bad_settings():
    help_ = subprocess.run([sys.executable, "-m", "serve", "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert help_.returncode == 0 and "DCS_MAX_BATCH_SIZE" in help_.stdout and "--triton-url" in help_.stdout
    bad = subprocess.run([sys.executable, "-m", "serve", "--max-batch-size", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "max_batch_size must be >= 1" in bad.stderr


def test_the_gateway_image_copies_no_train_code_and_its_import_check_passes(tmp_path):
    """What docker/Dockerfile.gateway COPYs, alone in a folder, passes the image's own import check."""
    import re
    import shutil

    dockerfile = (ROOT / "docker" / "Dockerfile.gateway").read_text()
    sources = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert "train" not in sources and not any(s.startswith("train") for s in sources)
    for source in sources:
        path = ROOT / source
        (shutil.copytree if path.is_dir() else shutil.copy)(path, tmp_path / source)
    (check,) = [c for c in re.findall(r'python -c "([^"]+)"', dockerfile) if "import serve" in c]
    # the editable install of this checkout would find train/ anyway: take its finder out first
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in "
            "getattr(f, '__module__', '')]; sys.path[0:0] = ['.']; " + check)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    broken = subprocess.run([sys.executable, "-c", code.replace("import serve.app", "import train, serve.app")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert broken.returncode != 0  # the check can fail: train/ is really absent


def test_connection_limits_and_timeouts_come_from_the_environment_and_are_checked():
    s = load_settings({"DCS_MAX_CONNECTIONS": "50", "DCS_HEADER_TIMEOUT_S": "2.5", "DCS_BODY_TIMEOUT_S": "4",
                       "DCS_KEEPALIVE_TIMEOUT_S": "1", "DCS_MAX_HEADER_BYTES": "8192", "DCS_DECODE_TIMEOUT_MS": "300"})
    assert (s.max_connections, s.header_timeout_s, s.body_timeout_s) == (50, 2.5, 4.0)
    assert (s.keepalive_timeout_s, s.max_header_bytes, s.decode_timeout_ms) == (1.0, 8192, 300.0)
    for env, message in [({"DCS_HEADER_TIMEOUT_S": "0"}, "header_timeout_s must be > 0"),
                         ({"DCS_MAX_CONNECTIONS": "0"}, "max_connections must be >= 1"),
                         ({"DCS_DECODE_TIMEOUT_MS": "-1"}, "decode_timeout_ms must be > 0")]:
        with pytest.raises(ValueError, match=message):
            load_settings(env)


@pytest.mark.parametrize("overrides, refused", [
    ({}, False),  # 127.0.0.1
    ({"host": "::1"}, False),
    ({"host": "localhost"}, False),
    ({"host": "0.0.0.0"}, True),
    ({"host": "gateway.example.com"}, True),
    ({"host": "0.0.0.0", "api_key": "k"}, False),
    ({"host": "0.0.0.0", "allow_no_api_key": True}, False),
    ({"host": "0.0.0.0", "public_host": "127.0.0.1"}, False),  # a container published on loopback only
    ({"host": "0.0.0.0", "public_host": "10.0.0.5"}, True),
])
def test_serving_other_machines_without_an_api_key_needs_saying_so(overrides, refused):
    problem = load_settings({}, **overrides).exposure_problem()
    assert (problem is not None) == refused
    if refused:
        assert "DCS_API_KEY" in problem and "DCS_ALLOW_NO_API_KEY" in problem


def test_the_gateway_refuses_to_start_open_on_a_public_address():
    out = subprocess.run([sys.executable, "-m", "serve", "--host", "0.0.0.0", "--model-repository", "nowhere"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 2 and "refusing to start" in out.stderr and "--host 0.0.0.0" in out.stderr


def test_compose_publishes_on_loopback_and_tells_the_gateway_where():
    import yaml

    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    gateway = compose["services"]["gateway"]
    (port,) = gateway["ports"]
    assert port.startswith("${DCS_PUBLISH_HOST:-127.0.0.1}:")
    env = gateway["environment"]
    assert env["DCS_PUBLIC_HOST"] == "${DCS_PUBLISH_HOST:-127.0.0.1}"  # the same address, checked at start
    assert env["DCS_ALLOW_NO_API_KEY"] == "${DCS_ALLOW_NO_API_KEY:-false}"
    published = {"DCS_PUBLIC_HOST": "127.0.0.1", "DCS_HOST": env["DCS_HOST"], "DCS_ALLOW_NO_API_KEY": "false"}
    assert load_settings(published).exposure_problem() is None  # the default: starts without a key
    assert load_settings({**published, "DCS_PUBLIC_HOST": "0.0.0.0"}).exposure_problem() is not None


def test_the_connection_limit_stays_under_the_file_descriptor_limit(monkeypatch):
    import resource

    from serve import limits

    calls = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: calls.append(value))
    reserve = limits.FD_RESERVE + limits.BURSTS * limits.BACKLOG
    assert limits.fit_to_fd_limit(1000) == 1000 and calls == [(1000 + reserve, 4096)]  # soft raised to fit
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1024))
    calls.clear()
    assert limits.fit_to_fd_limit(1000) == 1024 - reserve and calls == []  # cannot raise: the limit shrinks


def test_batches_in_flight_follow_the_onnxruntime_instances_unless_set():
    assert Settings().concurrency == 2  # embedded: one batch per default instance
    assert Settings(ort_instances=1).concurrency == 1  # one session: one batch at a time
    assert Settings(ort_instances=3).concurrency == 3
    assert Settings(ort_instances=3, batch_concurrency=5).concurrency == 5
    assert Settings(backend="triton", ort_instances=1).concurrency == 2  # instances are the embedded backend's
