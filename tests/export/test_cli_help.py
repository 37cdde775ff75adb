"""python -m export --help explains every option (a papercut of issue 14: several had no help)."""

from __future__ import annotations

import re

import pytest

from export.__main__ import parse_args


def test_every_export_option_has_help_with_its_default(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    options = re.findall(r"^  (--[a-z-]+)", out, flags=re.M)
    assert {"--engine", "--run", "--runs-root", "--output", "--cpu-output", "--output-kind", "--force",
            "--serve-versions", "--keep-versions", "--queue-delay-us", "--instances"} <= set(options)
    entries = re.split(r"^  (?=--)", out.split("options:")[1], flags=re.M)[1:]
    for entry in entries:
        words = entry.split(None, 1)
        assert len(words) == 2 and len(words[1].split()) >= 3, f"no help for {words[0]}"
    for option in ("--engine", "--runs-root", "--max-batch", "--serve-versions"):
        entry = next(e for e in entries if e.startswith(option))
        assert "default" in entry, option
