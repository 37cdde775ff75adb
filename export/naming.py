"""What to call an exported model (torch-free); which run to export is contract.runs' business."""

from __future__ import annotations

import re

from contract.names import FP32, split_precision

NAME_PATTERN = re.compile(r"^[a-z0-9_]+$")


def model_name(method: str, dataset: str) -> str:
    """"<method>-<dataset>" as a Triton model name: lower case, [a-z0-9_] only ("cc-cifar10" -> "cc_cifar10")."""
    name = re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", f"{method}-{dataset}".lower())).strip("_")
    return name if name and not name[0].isdigit() else f"m_{name}"


def check_name(name: str) -> str:
    """ValueError unless `name` can name Triton models and does not end in a precision's suffix (--precision adds
    it: NAME_int8, NAME_fp16)."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r} must match [a-z0-9_]+ (it names Triton models)")
    base, precision = split_precision(name)
    if precision != FP32:
        raise ValueError(f"model name {name!r} ends in _{precision}, the suffix --precision {precision} adds: "
                         f"give --name {base} --precision {precision}")
    return name
