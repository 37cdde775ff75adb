"""CLI papercuts found by a new user (issue 14, point 7) that tests/train/test_trainer.py does not cover."""

from __future__ import annotations

import json
import shutil

from tests.support.runs import tiny_config
from train.trainer import train


def test_starting_a_finished_run_again_with_new_flags_keeps_its_config(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run("cc"), tmp_path / "run")
    before = (run / "config.json").read_text()
    train(tiny_config("cc", run, lr=0.5, weight_decay=0.1))  # same epochs: already finished
    assert "already finished 2 epochs" in capsys.readouterr().out
    assert (run / "config.json").read_text() == before  # the config it was trained with, not the new flags
    assert json.loads(before)["lr"] != 0.5
