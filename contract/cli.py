"""Typed dataclass -> argparse options: one --option per field, typed from the field's annotation.

Used by train's run config and the gateway's settings. Options left out parse to None, so the
caller can layer defaults, presets and environment variables underneath the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false, 1/0, yes/no, on/off), got {text!r}")


def _bool_option(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def field_type(cls: type, name: str) -> type:
    """The annotation of field `name` of dataclass `cls`, with Optional[...] unwrapped."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                            describe_default: Callable[[dataclasses.Field], str],
                            skip: Iterable[str] = ()) -> None:
    """Add one option per field of `cls`; help = the field's metadata["help"] + describe_default(field)."""
    skip = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = field_type(cls, f.name)
        help_text = f"{f.metadata.get('help', '')} ({describe_default(f)})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(option_name(f.name), dest=f.name, type=_bool_option, default=None, metavar="BOOL",
                                help=help_text)
        else:
            parser.add_argument(option_name(f.name), dest=f.name, type=kind, default=None, help=help_text)
