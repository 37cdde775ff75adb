"""Reading run directories written by `python -m train` (torch-free: export and serve use it too).

A run directory holds config.json (the resolved config), last.pt (the checkpoint of the last
completed epoch) and, once training has finished, results.json with "finished": true.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.names import CHECKPOINT_FILE, CONFIG_FILE, RESULTS_FILE


@dataclass(frozen=True)
class RunInfo:
    path: Path
    config: dict[str, Any]   # config.json ({} when missing or unreadable)
    results: dict[str, Any]  # results.json ({} before the run has finished)

    @property
    def finished(self) -> bool:
        return self.results.get("finished") is True and (self.path / CHECKPOINT_FILE).is_file()

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_run(path: str | Path) -> RunInfo:
    """What a run directory (or a checkpoint file inside one) says about itself."""
    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    return RunInfo(run_dir, _read(run_dir / CONFIG_FILE), _read(run_dir / RESULTS_FILE))


def is_finished(run_dir: str | Path) -> bool:
    return read_run(run_dir).finished


def finished_runs(root: str | Path, where: dict[str, Any] | None = None) -> list[RunInfo]:
    """Finished runs anywhere under root whose config.json has every key/value of `where`, newest first.

    "Newest" is the modification time of results.json (written when the run finished).
    """
    where = where or {}
    runs = []
    for results in Path(root).glob(f"**/{RESULTS_FILE}"):
        run = read_run(results.parent)
        if run.finished and all(run.config.get(k) == v for k, v in where.items()):
            runs.append(run)
    return sorted(runs, key=lambda r: ((r.path / RESULTS_FILE).stat().st_mtime, str(r.path)), reverse=True)


def latest_finished_run(root: str | Path = "runs", where: dict[str, Any] | None = None) -> Path:
    """The newest finished run under root matching `where`; FileNotFoundError says what was looked for."""
    runs = finished_runs(root, where)
    if not runs:
        wanted = ", ".join(f"{k}={v}" for k, v in (where or {}).items())
        raise FileNotFoundError(f"no finished run under {root}/" + (f" with {wanted}" if wanted else "")
                                + f" (a run directory with {RESULTS_FILE} \"finished\": true and {CHECKPOINT_FILE})")
    return runs[0].path
