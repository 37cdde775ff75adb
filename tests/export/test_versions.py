"""Versions in a repository: each export adds one; writes are atomic and locked; bad outputs are refused first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from contract.metadata import ImageInput, ModelMetadata
from contract.repository import complete_versions
from export.__main__ import main as export_main
from export.projection import project_umap
from export.triton import FLAVOURS, TritonOptions, write_repository
from export.versions import IncompatibleVersion, RepositoryBusy, export_lock
from export.versions import main as versions_main
from tests.support.repository import assert_valid, model_set

ROOT = Path(__file__).resolve().parents[2]


def test_each_write_adds_a_version_and_removing_one_rolls_back(cc_model, tmp_path, capsys):
    repo = tmp_path / "repo"
    models = model_set(cc_model.repository, cc_model.name)
    first = write_repository(repo, models, FLAVOURS["onnxruntime"])
    second = write_repository(repo, models, FLAVOURS["onnxruntime"])
    assert (first.name, second.name) == ("1", "2")
    assert assert_valid(repo, cc_model.name) == [1, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left beside it
    assert versions_main(["--repository", str(repo), "--name", cc_model.name, "--remove", "2"]) == 0
    assert "now served: 1" in capsys.readouterr().out
    assert assert_valid(repo, cc_model.name) == [1]
    assert write_repository(repo, models, FLAVOURS["onnxruntime"]).name == "3"  # 2 is never given again
    assert versions_main(["--repository", str(repo), "--name", cc_model.name, "--remove", "9"]) == 2


def test_keep_versions_prunes_the_oldest(cc_model, tmp_path):
    repo = tmp_path / "repo"
    models = model_set(cc_model.repository, cc_model.name)
    for _ in range(4):
        write_repository(repo, models, FLAVOURS["python"], TritonOptions(keep_versions=2))
    assert assert_valid(repo, cc_model.name) == [3, 4]


def test_graphs_left_by_a_killed_export_are_cleaned_up(cc_model, tmp_path):
    repo = tmp_path / "repo"
    models = model_set(cc_model.repository, cc_model.name)
    write_repository(repo, models, FLAVOURS["onnxruntime"])
    shutil.copytree(repo / f"{cc_model.name}_encoder" / "1", repo / f"{cc_model.name}_encoder" / "2")  # killed after it
    assert write_repository(repo, models, FLAVOURS["onnxruntime"]).name == "2"
    assert assert_valid(repo, cc_model.name) == [1, 2]


def test_another_interface_is_refused_unless_forced(cc_model, tmp_path):
    repo = tmp_path / "repo"
    models = model_set(cc_model.repository, cc_model.name)
    write_repository(repo, models, FLAVOURS["onnxruntime"])
    other = model_set(cc_model.repository, cc_model.name)
    other.metadata = other.metadata.replace(input=ImageInput(channels=3, height=32, width=32))
    with pytest.raises(IncompatibleVersion, match="another interface.*--force"):
        write_repository(repo, other, FLAVOURS["onnxruntime"])
    assert assert_valid(repo, cc_model.name) == [1]
    assert write_repository(repo, other, FLAVOURS["onnxruntime"], TritonOptions(force=True)).name == "2"
    assert assert_valid(repo, cc_model.name) == [2]  # the old interface's versions are gone


def test_the_cli_refuses_another_interface_before_the_parity_check(cc_model, tmp_path, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(cc_model.repository, repo)
    meta_file = repo / cc_model.name / "1" / "metadata.json"
    ModelMetadata.read(meta_file).replace(input=ImageInput(channels=3, height=32, width=32)).write(meta_file)
    code = export_main(["--run", str(cc_model.run), "--output", str(repo), "--cpu-output", "none"])
    captured = capsys.readouterr()
    assert code == 2 and "another interface" in captured.err and "Traceback" not in captured.err
    assert "parity" not in captured.out  # refused before the parity check
    assert complete_versions(repo, cc_model.name) == [1]


@pytest.mark.parametrize("which", ["--output", "--cpu-output"])
def test_an_output_path_that_is_a_file_is_refused_before_anything_is_written(cc_model, tmp_path, capsys, which):
    afile = tmp_path / "a-file"
    afile.write_text("not a repository")
    paths = {"--output": tmp_path / "repo", "--cpu-output": tmp_path / "repo_cpu", which: afile}
    code = export_main(["--run", str(cc_model.run), *[x for k, v in paths.items() for x in (k, str(v))]])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert f"{which} {afile}" in captured.err and "is a file" in captured.err and "Traceback" not in captured.err
    assert "parity" not in captured.out
    assert afile.read_text() == "not a repository"
    assert not (tmp_path / "repo").exists() and not (tmp_path / "repo_cpu").exists()
    code = export_main(["--run", str(cc_model.run), "--output", str(afile / "inside"), "--cpu-output", "none"])
    assert code == 2 and "is a file" in capsys.readouterr().err


def test_a_held_lock_makes_a_writer_fail_cleanly_after_its_timeout(cc_model, tmp_path):
    repo = tmp_path / "repo"
    models = model_set(cc_model.repository, cc_model.name)
    write_repository(repo, models, FLAVOURS["onnxruntime"])
    with export_lock(repo), pytest.raises(RepositoryBusy, match="nothing was written"):
        write_repository(repo, models, FLAVOURS["onnxruntime"], TritonOptions(lock_timeout_s=0.3))
    assert assert_valid(repo, cc_model.name) == [1]


def test_two_concurrent_exporters_both_succeed_with_their_own_versions(cc_model, tmp_path):
    repo, cpu = tmp_path / "repo", tmp_path / "repo_cpu"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "export", "--run", str(cc_model.run), "--output", str(repo),
               "--cpu-output", str(cpu)]
    procs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    for repository in (repo, cpu):
        assert assert_valid(repository, cc_model.name) == [1, 2]
    printed = sorted(line.split(" version ")[1].split()[0] for out, _ in outputs for line in out.splitlines()
                     if line.startswith("wrote onnxruntime repository"))
    assert printed == ["1", "2"]  # each exporter got its own version


def test_renamed_clusters_survive_a_new_version_of_the_same_run_and_are_said_dropped_for_another(
        cc_model, tmp_path, capsys):
    """Issue 24: a new export version started with default names, the user's renames gone."""
    repo = shutil.copytree(cc_model.repository, tmp_path / "repo")
    names_file = repo / cc_model.name / "1" / "cluster_names.json"
    defaults = json.loads(names_file.read_text())
    renamed = {**defaults, "0": "round ones", "2": "hooks"}
    names_file.write_text(json.dumps(renamed))  # as the gateway's rename writes it
    args = ["--output", str(repo), "--cpu-output", "none", "--projection", "none"]
    assert export_main(["--run", str(cc_model.run), *args]) == 0
    assert "the 2 cluster name(s) given in version 1 carried over (same run)" in capsys.readouterr().out
    assert json.loads((repo / cc_model.name / "2" / "cluster_names.json").read_text()) == renamed

    other = shutil.copytree(cc_model.run, tmp_path / "other-run")
    assert export_main(["--run", str(other), *args]) == 0
    out = capsys.readouterr().out
    assert "the 2 cluster name(s) given in version 2 are not carried over" in out and str(other.resolve()) in out
    assert json.loads((repo / cc_model.name / "3" / "cluster_names.json").read_text()) == defaults


def test_listing_a_missing_repository_or_model_is_an_error(cc_model, tmp_path, capsys):
    """Issue 24: `--repository /nonexistent` printed nothing and exited 0."""
    assert versions_main(["--repository", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"error: model repository {tmp_path / 'nowhere'} does not exist\n"
    assert versions_main(["--repository", str(cc_model.repository), "--name", "nope"]) == 2
    assert capsys.readouterr().err == f"error: no model 'nope' in {cc_model.repository} (models: ['{cc_model.name}'])\n"
    (tmp_path / "empty").mkdir()
    assert versions_main(["--repository", str(tmp_path / "empty")]) == 0
    assert "holds no model" in capsys.readouterr().out
    assert versions_main(["--repository", str(cc_model.repository)]) == 0
    assert capsys.readouterr().out == f"{cc_model.name}: versions [1] (latest 1)\n"


def test_an_export_writes_only_where_it_is_told_and_says_where_absolutely(cc_model, tmp_path, monkeypatch, capsys):
    """Issue 24: `--output /elsewhere` still wrote ./model_repository_cpu, and printed it relative."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = export_main(["--run", str(cc_model.run), "--output", "../elsewhere/repo", "--projection", "none"])
    out = capsys.readouterr().out
    assert code == 0 and list(work.iterdir()) == []
    elsewhere = (tmp_path / "elsewhere").resolve()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["repo", "repo_cpu"]
    assert f"under {elsewhere / 'repo'}\n" in out and f"under {elsewhere / 'repo_cpu'}\n" in out


def test_the_embedding_map_is_made_without_a_warning(tmp_path):
    """Issue 24: every export printed UMAP's "n_jobs value 1 overridden to 1 by setting random_state"."""
    embedding = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        points = project_umap(embedding)
    assert points.shape == (200, 2) and 0 <= points.min() and points.max() <= 1
    shown = [w for w in caught if not issubclass(w.category, ImportWarning)]  # ImportWarning: hidden by default
    assert [str(w.message) for w in shown] == []
