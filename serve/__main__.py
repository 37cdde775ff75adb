"""python -m serve [--backend embedded|triton] [--model-repository PATH] [--triton-url URL] [--host] [--port] ...

Every flag has a DCS_* environment variable (--max-batch-size <-> DCS_MAX_BATCH_SIZE); flags win.
"""

from __future__ import annotations

import argparse
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
    import uvicorn

    from serve.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
