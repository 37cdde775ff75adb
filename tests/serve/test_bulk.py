"""Bulk clustering on a real local Ray (no mocks): rows equal the gateway's, bad files are error rows,
a job killed with SIGKILL resumes with exactly one row per image, and every refusal comes before Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from contract.files import read_json
from contract.names import IMAGE_EXTENSIONS
from export.versions import main as versions_main
from serve.bulk.job import BulkError, BulkOptions, pool_size, prepare_output
from serve.bulk.source import Manifest, SourceError, list_source, write_manifest
from serve.bulk.worker import no_outputs, read_image, shard_table
from serve.cards import VersionCard
from tests.support.repository import add_shifted_version
from tests.support.serving import digit_pngs, exported, files, gateway

ROOT = Path(__file__).resolve().parents[2]
IMAGES = 2000
CORRUPT = ("class_3/truncated.png", "class_5/not_an_image.png", "class_7/empty.jpg")


@pytest.fixture(scope="module")
def model(tiny_run, tmp_path_factory):
    return exported(tiny_run, tmp_path_factory, "cc")


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """2,000 digit PNGs in 10 nested folders plus 3 files that do not decode."""
    root = tmp_path_factory.mktemp("collection")
    pngs = digit_pngs(IMAGES)
    for i, data in enumerate(pngs):
        folder = root / f"class_{i % 10}" / f"part_{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(data)
    (root / CORRUPT[0]).write_bytes(pngs[0][:60])
    (root / CORRUPT[1]).write_bytes(b"plain text, not a PNG")
    (root / CORRUPT[2]).write_bytes(b"")
    (root / "class_0" / "notes.txt").write_text("not an image file: not listed")
    return root


def bulk(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serve.bulk", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def rows(out: Path) -> pa.Table:
    return pads.dataset(out / "shards", format="parquet").to_table().sort_by("index")


@pytest.fixture(scope="module")
def finished(model, collection, tmp_path_factory) -> Path:
    """One whole job on the collection: 2 actors, blocks of 250."""
    out = tmp_path_factory.mktemp("bulk") / "out"
    done = bulk(str(collection), "--model-repository", str(model.repository), "--output", str(out),
                "--block-size", "250", "--actors", "2", "--embeddings", "true")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2,003/2,003 images (100.0%)" in done.stderr  # progress is shown
    assert_only_the_jobs_lines(done.stderr)
    return out


def assert_only_the_jobs_lines(stderr: str) -> None:
    """Issue 24: Ray's token warning, an error-level "constructor arguments in the object store" line and
    Ray Data's "2 concurrent actors got 1 input" warning were shown among the job's own lines."""
    assert [line for line in stderr.splitlines() if not line.startswith("bulk: ")] == []


def test_rows_equal_the_gateway_and_corrupt_files_are_error_rows(finished, model, collection):
    table = rows(finished)
    assert table.num_rows == IMAGES + len(CORRUPT)
    assert table["index"].to_pylist() == list(range(IMAGES + len(CORRUPT)))
    failed = table.filter(table["error"].is_valid())
    assert sorted(failed["path"].to_pylist()) == sorted(str(collection / c) for c in CORRUPT)
    for path, error in zip(failed["path"].to_pylist(), failed["error"].to_pylist(), strict=True):
        assert error.startswith(f"{path}: ")
    assert failed["cluster"].null_count == failed.num_rows

    good = table.filter(table["error"].is_null()).to_pydict()
    assert len(good["path"]) == IMAGES
    answers = []
    with gateway(model.repository) as client:
        for start in range(0, IMAGES, 250):
            items = [(p, Path(p).read_bytes()) for p in good["path"][start:start + 250]]
            r = client.post("/cluster", files=files(items), params={"top_k": 3})
            assert r.status_code == 200, r.text
            answers += r.json()["results"]
        embedded = []
        for start in range(0, IMAGES, 250):
            items = [(p, Path(p).read_bytes()) for p in good["path"][start:start + 250]]
            embedded += client.post("/embed", files=files(items)).json()["results"]
    assert [a["cluster"] for a in answers] == good["cluster"]
    np.testing.assert_allclose(good["probability"], [a["probability"] for a in answers], atol=1e-6)
    assert good["top_k"] == [[t["cluster"] for t in a["top_k"]] for a in answers]
    np.testing.assert_allclose(good["top_k_probability"], [[t["probability"] for t in a["top_k"]] for a in answers],
                               atol=1e-6)
    np.testing.assert_allclose(good["embedding"], [e["embedding"] for e in embedded], atol=1e-6)
    # the card's names and flags, as the gateway answers them (it rounds ood_score to 4 decimals, and other
    # batches move the embeddings by ~1e-6, the score a little more where the training distances are dense)
    assert good["name"] == [a["name"] for a in answers]
    assert good["low_confidence"] == [a["low_confidence"] for a in answers]
    assert good["ood"] == [a["ood"] for a in answers]
    np.testing.assert_allclose(good["ood_score"], [a["ood_score"] for a in answers], atol=2e-4)
    assert failed["name"].null_count == failed["ood"].null_count == failed.num_rows


def test_summary_and_galleries_describe_the_rows(finished, model):
    table = rows(finished)
    summary = read_json(finished / "summary.json")
    clusters = table["cluster"].drop_null().to_numpy()
    spec_clusters = len(summary["clusters"])
    assert summary["clusters"] == {str(k): int(n) for k, n in enumerate(np.bincount(clusters, minlength=spec_clusters))}
    assert (summary["images"], summary["rows"], summary["clustered"], summary["errors"]) == \
           (IMAGES + len(CORRUPT), IMAGES + len(CORRUPT), IMAGES, len(CORRUPT))
    assert len(summary["error_examples"]) == len(CORRUPT)
    assert summary["ood"] == pc.sum(table["ood"]).as_py() < IMAGES * 0.05
    assert summary["low_confidence"] == pc.sum(table["low_confidence"]).as_py() > 0
    assert summary["run"]["images"] == IMAGES + len(CORRUPT) and summary["run"]["images_per_second"] > 0
    assert (summary["run"]["actors"], summary["run"]["threads_per_actor"]) == (2, 1)
    used = sorted(set(clusters.tolist()))
    # a gallery for each cluster with rows (empty clusters get none: tests/serve/test_levels.py, at 4 of 10)
    assert summary["galleries"] == [str(finished / "gallery" / f"cluster_{k:03d}.png") for k in used]
    assert sorted(p.name for p in (finished / "gallery").iterdir()) == [f"cluster_{k:03d}.png" for k in used]
    biggest = int(np.bincount(clusters).argmax())
    with Image.open(finished / "gallery" / f"cluster_{biggest:03d}.png") as gallery:
        pixels = np.asarray(gallery.convert("L"))
    assert gallery.size == (8 * 96, 18 + 96)
    assert pixels[18:].std() > 10  # thumbnails drawn, not a blank canvas


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), to reap what a SIGKILLed driver leaves behind."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture
def ray_cluster():
    """A Ray cluster owned by this test process (jobs join it with --address); shut down afterwards."""
    import ray

    context = ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def test_a_job_killed_mid_run_resumes_with_exactly_one_row_per_image(model, collection, finished, tmp_path,
                                                                        ray_cluster):
    out = tmp_path / "out"
    args = [str(collection), "--model-repository", str(model.repository), "--output", str(out),
            "--block-size", "10", "--actors", "1", "--embeddings", "true"]
    blocks = -(-(IMAGES + len(CORRUPT)) // 10)
    driver = subprocess.Popen([sys.executable, "-m", "serve.bulk", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    left: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while len(list((out / "shards").glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        left = _descendants(driver.pid)
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
    finally:
        if driver.poll() is None:
            driver.kill()
    done_at_kill = len(list((out / "shards").glob("part-*.parquet")))
    assert 3 <= done_at_kill < blocks, "the job must be stopped part-way"

    # the killed job's actor may still be finishing a block while the new run starts: that is the point
    again = bulk(*args, "--address", ray_cluster)
    for pid in left:  # what the killed driver's local Ray left (it exits by itself within a minute or so)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming:" in again.stderr and f"of {blocks} blocks already done" in again.stderr
    assert not list((out / "shards").glob(".*.tmp"))

    resumed, whole = rows(out), rows(finished)
    assert resumed["index"].to_pylist() == list(range(IMAGES + len(CORRUPT)))  # each image once, none missing
    assert resumed["path"].to_pylist() == whole["path"].to_pylist()
    for column in ("cluster", "top_k", "error"):
        assert resumed[column].to_pylist() == whole[column].to_pylist()
    np.testing.assert_allclose(resumed["probability"].to_numpy(zero_copy_only=False),
                               whole["probability"].to_numpy(zero_copy_only=False), atol=1e-6)
    assert read_json(out / "summary.json")["clusters"] == read_json(finished / "summary.json")["clusters"]


_NO_RAY = """
import sys
sys.modules["ray"] = None  # any `import ray` now raises ImportError
sys.modules["pyarrow"] = None
import serve.app, serve.__main__, serve.backends.embedded
del sys.modules["pyarrow"]
from serve.bulk.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _no_ray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _NO_RAY, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_gateway_needs_no_ray_and_a_missing_model_fails_before_ray(model, collection, tmp_path):
    missing = _no_ray(str(collection), "--model-repository", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o"))
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"error: model repository {tmp_path / 'nowhere'} does not exist (export a model with `python -m export`)"]
    unknown = _no_ray(str(collection), "--model-repository", str(model.repository), "--model", "nope",
                      "--output", str(tmp_path / "o"))
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == f"error: no model 'nope' in {model.repository}; models: ['{model.name}']"
    no_source = _no_ray(str(tmp_path / "nothing"), "--model-repository", str(model.repository),
                        "--output", str(tmp_path / "o"))
    assert no_source.returncode == 2 and "nothing does not exist" in no_source.stderr
    assert not (tmp_path / "o").exists()  # nothing written before the checks pass


def test_sources_list_in_a_fixed_order(tmp_path):
    for name in ("b/2.png", "b/1.JPG", "a.png", "a/z.webp", ".hidden/x.png", "c/.x.png", "c/readme.md"):
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / name).write_bytes(b"x")
    root = tmp_path / "photos"
    folder = list(list_source(str(root)))
    assert folder == [str(root / p) for p in ("a.png", "a/z.webp", "b/1.JPG", "b/2.png")]
    assert all(Path(p).suffix.lower() in IMAGE_EXTENSIONS for p in folder)
    assert list(list_source(str(root / "b" / "*.png"))) == [str(root / "b" / "2.png")]
    (tmp_path / "list.txt").write_text("# comment\nphotos/b/2.png\n\n/abs/x.jpg\ns3://bucket/y.png\n")
    assert list(list_source(str(tmp_path / "list.txt"))) == [str(root / "b" / "2.png"), "/abs/x.jpg",
                                                              "s3://bucket/y.png"]
    pq.write_table(pa.table({"path": ["photos/a.png", "/abs/y.png"], "other": [1, 2]}), tmp_path / "list.parquet")
    assert list(list_source(str(tmp_path / "list.parquet"))) == [str(root / "a.png"), "/abs/y.png"]
    with pytest.raises(SourceError, match="does not exist"):
        list(list_source(str(tmp_path / "missing")))
    with pytest.raises(SourceError, match="not a .txt or .parquet list"):
        list(list_source(str(root / "c" / "readme.md")))


def test_the_manifest_holds_one_row_group_per_block(tmp_path):
    (tmp_path / "list.txt").write_text("".join(f"/p/{i}.png\n" for i in range(23)))
    assert write_manifest(list_source(str(tmp_path / "list.txt")), tmp_path / "m.parquet", 10, "list.txt") == 23
    manifest = Manifest(tmp_path / "m.parquet")
    assert (manifest.num_blocks, manifest.num_images, manifest.block_lengths()) == (3, 23, [10, 10, 3])
    assert manifest.block(2) == ["/p/20.png", "/p/21.png", "/p/22.png"]
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SourceError, match="lists no image"):
        write_manifest(list_source(str(tmp_path / "empty.txt")), tmp_path / "e.parquet", 10, "empty.txt")
    assert not (tmp_path / "e.parquet").exists() and not list(tmp_path.glob(".e.parquet*"))


def test_an_output_of_another_job_is_refused(model, tmp_path):
    from serve.backends.repository import read_repository

    spec = next(iter(read_repository(model.repository).values()))
    (tmp_path / "list.txt").write_text("/p/0.png\n/p/1.png\n")
    opts = BulkOptions(str(tmp_path / "list.txt"), str(tmp_path / "out"), str(model.repository), block_size=1)
    assert prepare_output(opts, spec, spec.num_clusters, lambda msg: None).num_blocks == 2
    (tmp_path / "out" / "shards" / ".part-00000000.parquet.abc.tmp").write_bytes(b"half")
    assert prepare_output(opts, spec, spec.num_clusters, lambda msg: None).num_blocks == 2  # same job: resumes
    assert not list((tmp_path / "out" / "shards").iterdir())  # a stopped job's temporary file is gone
    with pytest.raises(BulkError, match="other settings \\(block_size 1 -> 2\\)"):
        prepare_output(BulkOptions(opts.source, opts.output, opts.model_repository, block_size=2), spec,
                       spec.num_clusters, lambda msg: None)


def test_a_block_where_nothing_decodes_keeps_the_columns(model, tmp_path):
    from serve.backends.repository import read_repository

    spec = next(iter(read_repository(model.repository).values()))
    (tmp_path / "bad.png").write_bytes(b"nope")
    paths = [str(tmp_path / "bad.png"), str(tmp_path / "gone.png")]
    decoded = [read_image(p, 16, 1) for p in paths]
    assert decoded[0].startswith(f"{paths[0]}: cannot decode image")
    assert decoded[1] == f"{paths[1]}: no such file"
    card = VersionCard.find(model.repository, spec)
    failed = shard_table(20, paths, decoded, no_outputs(spec), 3, True, card.annotate(no_outputs(spec)))
    assert failed.column("index").to_pylist() == [20, 21]
    assert failed.column("error").to_pylist() == decoded
    assert failed.column("cluster").null_count == 2 and failed.column("embedding").null_count == 2

    one = {name: np.ones((1, *s.shape[1:]), s.dtype) for name, s in spec.outputs.items()}
    one["cluster"] = np.array([1])
    mixed = shard_table(0, paths, [decoded[0], np.zeros((1, 16, 16), np.uint8)], one, 3, True, card.annotate(one))
    assert mixed.schema == failed.schema  # every shard of a job has the same columns and types
    assert {"name", "low_confidence", "ood_score", "ood"} <= set(mixed.schema.names)
    assert mixed.column("cluster").to_pylist() == [None, 1]
    assert mixed.column("name").to_pylist() == [None, card.names()[1]]
    assert mixed.column("top_k").to_pylist()[0] is None and len(mixed.column("top_k").to_pylist()[1]) == 3


def test_extra_outputs_are_fields_of_the_extras_column_by_their_names():
    """Whatever a method adds to its head (here CoHiClust's path and a scalar) lands in `extras`, typed."""
    paths = ["a.png", "broken.png", "c.png"]
    decoded = [np.zeros((1, 8, 8), np.uint8), "broken.png: cannot decode image", np.zeros((1, 8, 8), np.uint8)]
    outputs = {"embedding": np.ones((2, 4), np.float32), "probabilities": np.full((2, 3), 1 / 3, np.float32),
               "cluster": np.array([2, 0]), "path": np.array([[1, 4], [2, 6]]),
               "margin": np.array([0.5, 0.25], np.float32)}
    table = shard_table(0, paths, decoded, outputs, 2, False)
    assert table.schema.field("extras").type == pa.struct([("path", pa.list_(pa.int64())), ("margin", pa.float32())])
    assert table.column("extras").to_pylist() == [{"path": [1, 4], "margin": 0.5}, None,
                                                  {"path": [2, 6], "margin": 0.25}]
    nothing = {name: values[:0] for name, values in outputs.items()}
    assert shard_table(0, paths[1:2], decoded[1:2], nothing, 2, False).schema == table.schema  # same types
    plain = {k: v for k, v in outputs.items() if k in ("embedding", "probabilities", "cluster")}
    assert "extras" not in shard_table(0, paths, decoded, plain, 2, False).schema.names


def test_the_pool_fits_the_cpus_and_the_blocks():
    assert pool_size(2, 0, 0, 9) == (2, 1)
    assert pool_size(2, 1, 0, 9) == (1, 2)
    assert pool_size(16, 0, 4, 9) == (4, 4)
    assert pool_size(2, 3, 0, 9) == (3, 1)
    assert pool_size(8, 2, 2, 9) == (2, 2)
    # issue 24: one block (a small folder, blocks of 1000) started two actors, one idle
    assert pool_size(2, 0, 0, 1) == (1, 2)
    assert pool_size(8, 4, 2, 2) == (2, 2)
    assert pool_size(16, 0, 4, 3) == (3, 4)


def _job_until_it_runs(args: list[str]) -> subprocess.Popen:
    """A bulk job started in a subprocess, returned once it has resolved its model and listed its source (its
    "blocks to run on" line), before its actors start."""
    job = subprocess.Popen([sys.executable, "-m", "serve.bulk", *args], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    for line in job.stderr:
        if "blocks to run on" in line:
            return job
    job.wait(10)
    raise AssertionError(f"the job ended before it ran (exit {job.returncode})")


def test_a_job_keeps_the_model_version_and_the_names_it_started_with(model, collection, finished, tmp_path):
    """Issue 24: a version exported after the listing was used for every row while job.json recorded the
    first; after a rename and a resume one job had two names for one cluster."""
    repo = shutil.copytree(model.repository, tmp_path / "repo")
    whole = rows(finished).filter(pc.field("error").is_null()).slice(0, 60).to_pydict()
    (tmp_path / "list.txt").write_text("".join(f"{p}\n" for p in whole["path"]))
    args = [str(tmp_path / "list.txt"), "--model-repository", str(repo), "--output", str(tmp_path / "out"),
            "--block-size", "10", "--actors", "1"]
    job = _job_until_it_runs(args)
    add_shifted_version(repo, model.name)  # version 2: every image one cluster further
    _, stderr = job.communicate(timeout=240)
    assert job.returncode == 0, stderr
    table = rows(tmp_path / "out")
    assert table["cluster"].to_pylist() == whole["cluster"]  # version 1's answers, not version 2's
    recorded = read_json(tmp_path / "out" / "job.json")
    assert recorded["model_version"] == read_json(tmp_path / "out" / "summary.json")["model_version"] == 1

    names_file = repo / model.name / "1" / "cluster_names.json"
    names_file.write_text(json.dumps({str(k): f"renamed {k}" for k in range(len(recorded["cluster_names"]))}))
    for shard in sorted((tmp_path / "out" / "shards").glob("part-*.parquet"))[::2]:
        shard.unlink()  # a job stopped part-way
    again = bulk(*args)
    assert again.returncode == 0, again.stderr
    assert "bulk: model cc_digits version 1 (recorded when the job started)" in again.stderr
    assert "resuming: 3 of 6 blocks already done" in again.stderr
    table = rows(tmp_path / "out")
    assert table["cluster"].to_pylist() == whole["cluster"]
    assert table["name"].to_pylist() == [recorded["cluster_names"][c] for c in whole["cluster"]]  # one name each

    assert versions_main(["--repository", str(repo), "--name", model.name, "--remove", "1"]) == 0
    shards = sorted((tmp_path / "out" / "shards").glob("part-*.parquet"))
    shards[0].unlink()
    refused = bulk(*args)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'out'} is a job started with model 'cc_digits' version 1, which {repo} no longer "
        "holds (versions: [2]): put that version back to finish the job, or start it again in another --output")


def test_odd_file_names_special_files_and_huge_files_are_rows_not_crashes(model, tmp_path):
    """Issue 24: a file name with invalid UTF-8 crashed the job at listing, a FIFO in a list hung it forever,
    a sparse 2 GB file was read whole (actor RSS 2.2 GB) where the gateway caps an image at 10 MiB."""
    folder = tmp_path / "odd"
    folder.mkdir()
    png = digit_pngs(1)[0]
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    with open(latin1, "wb") as f:
        f.write(png)
    (folder / "ok.png").write_bytes(png)
    os.mkfifo(folder / "pipe.png")
    with open(folder / "big.png", "wb") as f:
        f.truncate(2 * 2**30)  # sparse: no disk used
    # a folder with an undecodable name lists, and the manifest keeps the name's bytes
    write_manifest(list_source(str(folder)), tmp_path / "m.parquet", 10, str(folder))
    assert os.fsencode(Manifest(tmp_path / "m.parquet").block(0)[1]) == latin1
    (tmp_path / "list.txt").write_bytes(b"odd/caf\xe9.png\nodd/ok.png\nodd/pipe.png\n/dev/zero\nodd/big.png\n")
    done = bulk(str(tmp_path / "list.txt"), "--model-repository", str(model.repository), "--output",
                str(tmp_path / "out"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert_only_the_jobs_lines(done.stderr)
    table = rows(tmp_path / "out").to_pydict()
    assert table["path"] == [f"{folder}/caf\\xe9.png", f"{folder}/ok.png", f"{folder}/pipe.png", "/dev/zero",
                             f"{folder}/big.png"]
    assert table["error"][:2] == [None, None] and table["cluster"][0] == table["cluster"][1]  # the same image
    assert table["error"][2:] == [
        f"{folder}/pipe.png: not a regular file (a FIFO, socket or device is not read)",
        "/dev/zero: not a regular file (a FIFO, socket or device is not read)",
        f"{folder}/big.png: 2,147,483,648 bytes, more than the limit of 10,485,760 per image"]


def test_a_listed_file_is_read_only_when_it_is_a_regular_file_within_the_limit(tmp_path):
    """Issue 24, without Ray: a FIFO named in a list hung the job forever; a sparse 2 GB file was read whole."""
    import resource
    import threading

    os.mkfifo(tmp_path / "pipe.png")
    answer: list[object] = []
    reader = threading.Thread(target=lambda: answer.append(read_image(str(tmp_path / "pipe.png"), 16, 1)),
                              daemon=True)
    reader.start()
    reader.join(10)
    hung = reader.is_alive()
    if hung:  # the old code waits in open() for a writer: give it one, so that the thread ends
        os.close(os.open(tmp_path / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
    assert not hung, "reading a FIFO waited for a writer"
    assert answer == [f"{tmp_path}/pipe.png: not a regular file (a FIFO, socket or device is not read)"]

    with open(tmp_path / "big.png", "wb") as f:
        f.truncate(2 * 2**30)  # sparse: no disk used
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    assert read_image(str(tmp_path / "big.png"), 16, 1) == \
        f"{tmp_path}/big.png: 2,147,483,648 bytes, more than the limit of 10,485,760 per image"
    assert read_image(str(tmp_path / "big.png"), 16, 1, max_bytes=1000) == \
        f"{tmp_path}/big.png: 2,147,483,648 bytes, more than the limit of 1,000 per image"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 * 1024  # not read into memory
