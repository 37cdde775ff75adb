"""python -m serve [--backend embedded|triton] [--model-repository PATH] [--triton-url URL] [--host] [--port] ...

Every flag has a DCS_* environment variable (--max-batch-size <-> DCS_MAX_BATCH_SIZE); flags win.
"""

from __future__ import annotations

import argparse
import logging
import sys

from contract.cli import add_dataclass_arguments
from serve.settings import ENV_PREFIX, Settings, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__.split("\n\n")[1])
    add_dataclass_arguments(parser, Settings,
                            lambda f: f"env {ENV_PREFIX}{f.name.upper()}; default {f.default!r}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(**vars(args))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problem = settings.exposure_problem()
    if problem:
        print(f"error: refusing to start: {problem}", file=sys.stderr)
        return 2
    # the gateway's own lines ("serve" logger), shaped like uvicorn's; uvicorn's loggers do not propagate here
    level = getattr(logging, settings.log_level.upper(), logging.DEBUG)  # uvicorn also has "trace"
    logging.basicConfig(level=level, format="%(levelname)s:     %(message)s")
    import uvicorn

    from serve.app import create_app
    from serve.limits import BACKLOG, ConnectionGuard, GuardedServer, fit_to_fd_limit

    app = create_app(settings)
    guard = ConnectionGuard(fit_to_fd_limit(settings.max_connections), settings.header_timeout_s,
                            settings.body_timeout_s, app.state.gateway.metrics)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, http=guard.protocol(), timeout_keep_alive=settings.keepalive_timeout_s,
                            h11_max_incomplete_event_size=settings.max_header_bytes, backlog=BACKLOG)
    GuardedServer(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
