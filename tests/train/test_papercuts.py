"""CLI papercuts found by a new user (issues 14 and 24) that tests/train/test_trainer.py does not cover."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.support.runs import tiny_config
from train.__main__ import main as train_main
from train.trainer import train


def test_starting_a_finished_run_again_with_new_flags_keeps_its_config(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run("cc"), tmp_path / "run")
    before = (run / "config.json").read_text()
    train(tiny_config("cc", run, lr=0.5, weight_decay=0.1))  # same epochs: already finished
    assert "already finished 2 epochs" in capsys.readouterr().out
    assert (run / "config.json").read_text() == before  # the config it was trained with, not the new flags
    assert json.loads(before)["lr"] != 0.5


@pytest.mark.parametrize("option,value,message", [
    ("--batch-size", "0", "--batch-size must be at least 1, got 0"),
    ("--epochs", "0", "--epochs must be at least 1, got 0"),
    ("--num-clusters", "1", "--num-clusters must be 0 (the data set's class count) or at least 2, got 1"),
    ("--num-clusters", "100000", "--num-clusters 100000 is more than the 1797 training images"),
])
def test_settings_no_run_can_use_are_one_line_errors(option, value, message, tmp_path, capsys):
    """Issue 24: a ZeroDivisionError traceback, "digits has no class labels", a 160 GB allocation, and a run
    that wrote finished: true with no checkpoint."""
    run = tmp_path / "run"
    code = train_main(["--method", "cc", "--dataset", "digits", "--preset", "fast", "--progress", "false",
                       "--run-dir", str(run), option, value])
    assert (code, capsys.readouterr().err) == (2, f"error: {message}\n")
    assert not (run / "results.json").exists() and not (run / "last.pt").exists()
