"""python -m serve.bulk SOURCE --output OUT [--model-repository DIR] [--model NAME] [--address ADDR] ...

Clusters every image SOURCE names with an exported model, on Ray Data (a local Ray by default,
--address to join a cluster), into Parquet shards, summary.json and a gallery per cluster under OUT.
Started again with the same OUT, it continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys

from contract.cli import add_dataclass_arguments
from serve.bulk.job import BulkError, BulkOptions, run_job
from serve.bulk.source import SourceError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serve.bulk", description=__doc__.split("\n\n")[1])
    parser.add_argument("source", metavar="SOURCE", help=BulkOptions.__dataclass_fields__["source"].metadata["help"])
    add_dataclass_arguments(parser, BulkOptions, lambda f: "required" if f.name == "output" else
                            "optional" if f.default is None else f"default: {f.default!r}", skip=("source",))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    if "output" not in args:
        parser.error("--output is required")
    try:
        summary = run_job(BulkOptions(**args))
    except (BulkError, SourceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run = summary["run"]
    rate = f", {run['images_per_second']:,.0f} images/s" if run.get("images") else ""
    print(f"{summary['clustered']:,} images clustered into {len(summary['clusters'])} clusters, "
          f"{summary['errors']:,} errors{rate} -> {args['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
