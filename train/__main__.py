"""python -m train --method NAME --dataset NAME [--data-dir PATH] [--preset paper|fast] [overrides]

`--method list` prints the registered methods; `--method NAME --dataset NAME --help` shows every
option with the value that method, data set and preset resolve it to.
"""

from __future__ import annotations

import argparse
import sys

from train.config import add_config_arguments
from train.data.datasets import DATASETS, DataError
from train.methods import METHODS, get_method, make_config


def build_parser(method: str, dataset: str, preset: str | None) -> argparse.ArgumentParser:
    cls = get_method(method)
    resolved = make_config(method, dataset=dataset, preset=preset)
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a deep-clustering model. Options left out come from the preset "
                    "(paper: the official code's recipe per data set; native: the project's recipe at the data "
                    "set's own resolution; fast: a short schedule) and the data set's defaults.",
        epilog="methods: " + ", ".join(sorted(METHODS)) + ". datasets: "
               + "; ".join(f"{name} ({info.description})" for name, info in DATASETS.items())
               + ". Defaults shown are those of --method/--dataset/--preset as given (or their defaults).",
    )
    parser.add_argument("--method", required=True, choices=sorted(METHODS),
                        help="clustering method (`--method list` lists them)")
    add_config_arguments(parser, cls.Config, resolved, f"the {resolved.preset} preset / {dataset} defaults")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method")
    pre.add_argument("--dataset")
    pre.add_argument("--preset")
    known = pre.parse_known_args(argv)[0]
    if known.method == "list":
        for name, cls in sorted(METHODS.items()):
            doc = (cls.__module__ and sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
            print(f"{name:10s} {doc[0] if doc else ''}" + (f" (starts from a {cls.parent} run)" if cls.parent else ""))
        return 0
    method = known.method or "cc"
    dataset = known.dataset or "digits"
    if known.method is not None and known.method not in METHODS:
        print(f"error: unknown method {known.method!r}; choose from {sorted(METHODS)} (or `--method list`)",
              file=sys.stderr)
        return 2
    if dataset not in DATASETS:
        print(f"error: unknown dataset {dataset!r}; choose from {sorted(DATASETS)}", file=sys.stderr)
        return 2
    try:
        parser = build_parser(method, dataset, known.preset)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = vars(parser.parse_args(argv))
    from train.parents import ParentRunMissing
    from train.trainer import train  # imported here so --help stays fast

    try:
        train(make_config(**args))
    except (DataError, ValueError, FileNotFoundError, ParentRunMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
