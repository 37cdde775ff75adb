"""Shared fixtures: tiny trained runs on the built-in digits data, one per method, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.runs import tiny_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """tiny_run(method) -> run directory of a finished 2-epoch run on digits (cached per method)."""
    from train.methods import get_method
    from train.trainer import train

    cache: dict[str, Path] = {}

    def make(method: str) -> Path:
        if method not in cache:
            run_dir = tmp_path_factory.mktemp(f"run-{method}")
            parent = get_method(method).parent
            # a method with a parent fine-tunes the parent's tiny run rather than look for a full one
            extra = {"init": str(make(parent))} if parent else {}
            train(tiny_config(method, run_dir, **extra))
            cache[method] = run_dir
        return cache[method]

    return make


@pytest.fixture(scope="session")
def cc_model(tiny_run, tmp_path_factory):
    """The tiny CC run exported once per session (tests.support.serving.exported): repositories of both flavours."""
    from tests.support.serving import exported

    return exported(tiny_run, tmp_path_factory, "cc")
