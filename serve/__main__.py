"""python -m serve [--backend embedded|triton] [--model-repository PATH] [--triton-url URL] [--host] [--port] ...

Every flag has a DCS_* environment variable (--max-batch-size <-> DCS_MAX_BATCH_SIZE); flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
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
    from serve.access import configure_logging
    from serve.backends.repository import RepositoryError, check_root

    problem = settings.exposure_problem()
    if problem:
        print(f"error: refusing to start: {problem}", file=sys.stderr)
        return 2
    try:  # before the server starts: one line and exit 2, not a traceback from inside uvicorn
        if settings.backend == "embedded" or settings.repository_path.is_dir():
            check_root(settings.repository_path)
    except RepositoryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:  # the port first: a port in use is one line and exit 2, before any model is loaded or "ready" said
        listening = listen(settings.host, settings.port)
    except OSError as err:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {err.strerror or err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    import uvicorn

    from serve.app import create_app
    from serve.limits import BACKLOG, ConnectionGuard, GuardedServer, fit_to_fd_limit

    app = create_app(settings)
    guard = ConnectionGuard(fit_to_fd_limit(settings.max_connections), settings.header_timeout_s,
                            settings.body_timeout_s, app.state.gateway.metrics)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, http=guard.protocol(), timeout_keep_alive=settings.keepalive_timeout_s,
                            h11_max_incomplete_event_size=settings.max_header_bytes, backlog=BACKLOG,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s)
    server = GuardedServer(config)

    async def serve() -> int:
        try:  # the models before the server starts (its lifespan finds them ready): none that loads is exit 2
            await app.state.gateway.start()
        except RepositoryError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        await server.serve(sockets=[listening])
        return 0

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        return runner.run(serve())


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound (OSError when the address is in use or not this machine's)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restarts reuse the port at once
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    sys.exit(main())
