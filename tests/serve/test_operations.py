"""Operating the gateway: request ids and access log lines, the start-up summary, a checked repository,
honest --help, Swagger UI served offline, explicit operation ids, optional CORS."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve.__main__ import build_parser
from tests.support.serving import digit_pngs, files, gateway

ROOT = Path(__file__).resolve().parents[2]


def test_request_ids_are_echoed_or_made_and_logged(cc_model, caplog):
    caplog.set_level(logging.INFO, logger="serve")
    with gateway(cc_model.repository, log_format="json") as client:
        given = client.get("/healthz", headers={"X-Request-ID": "job-42.a:b"})
        made = client.post("/cluster", files=files([("a.png", digit_pngs(1)[0])]))
        unsafe = client.get("/healthz", headers={"X-Request-ID": "two words\r\n"})
    assert given.headers["x-request-id"] == "job-42.a:b"
    assert len(made.headers["x-request-id"]) == 32 and made.headers["x-request-id"] != unsafe.headers["x-request-id"]
    assert " " not in unsafe.headers["x-request-id"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "serve.access"]
    by_id = {line["request_id"]: line for line in lines}
    assert by_id["job-42.a:b"]["path"] == "/healthz" and by_id["job-42.a:b"]["status"] == 200
    cluster = by_id[made.headers["x-request-id"]]
    assert (cluster["method"], cluster["path"], cluster["status"]) == ("POST", "/cluster", 200)
    assert cluster["duration_ms"] > 0


def test_the_start_up_summary_names_models_versions_and_providers(cc_model, caplog):
    caplog.set_level(logging.INFO, logger="serve")
    with gateway(cc_model.repository, access_log=False):
        pass
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gateway ready")]
    assert "backend embedded" in summary and f"{cc_model.name} (version 1, versions [1]" in summary
    assert "CPUExecutionProvider" in summary
    assert not [r for r in caplog.records if r.name == "serve.access"]  # access_log false: no lines


@pytest.mark.parametrize("setup", ["missing", "empty", "unversioned"])
def test_serving_an_unusable_repository_is_one_line_and_exit_2(tmp_path, setup):
    repo = tmp_path / "repo"
    if setup != "missing":
        repo.mkdir()
    if setup == "unversioned":  # NAME/metadata.json: an export from before versions
        (repo / "digits").mkdir()
        (repo / "digits" / "metadata.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "serve", "--model-repository", str(repo), "--port", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(repo) in lines[0], proc.stderr
    assert ("older export" if setup == "unversioned" else "python -m export") in lines[0]


def test_serve_help_shows_each_default_once_and_right(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: None" not in out  # the old help printed argparse's None beside the real default
    assert "default 'embedded'" in out and "default 2.0" in out and "env DCS_REPOSITORY_POLL_S" in out
    assert out.count("default 'embedded'") == 1


def test_swagger_ui_is_served_by_the_gateway_itself(cc_model):
    with gateway(cc_model.repository) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
        assert "cdn" not in page.text.lower()
        assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
        assert client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
        spec = client.get("/openapi.json").json()
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"cluster", "embed", "listModels", "getModelCard", "createEmbeddings", "health", "ready",
            "metrics"} <= ids
    cluster = spec["paths"]["/cluster"]["post"]
    assert "example" in cluster["requestBody"]["content"]["application/json"]
    assert {p["name"] for p in cluster["parameters"]} >= {"model", "version", "top_k"}
    assert "example" in spec["components"]["schemas"]["ClusterResult"]


def test_cors_only_for_the_configured_origins(cc_model):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with gateway(cc_model.repository, cors_origins="https://app.example, https://other.example") as client:
        r = client.options("/cluster", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = client.get("/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with gateway(cc_model.repository) as client:
        assert "access-control-allow-origin" not in client.get("/models", headers={"Origin": "https://app.example"}
                                                               ).headers


def test_a_port_in_use_is_one_line_and_exit_2_before_anything_is_loaded(cc_model):
    """Issue 24: `python -m serve` on a port in use logged "gateway ready" before failing with errno 98."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "serve", "--model-repository", str(cc_model.repository),
                               "--port", str(port)], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]
