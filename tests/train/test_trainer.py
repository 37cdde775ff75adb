"""The shared trainer: resume after a kill, run-directory artefacts, folders of PNGs, clear errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import train.trainer as trainer
from tests.support.runs import digit_folder, tiny_config
from train.__main__ import main
from train.checkpoint import load_run, read_checkpoint
from train.data.datasets import load_dataset


def _state(run_dir):
    return read_checkpoint(run_dir)["model"]


def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfg = dict(epochs=3, batch_size=256)
    trainer.train(tiny_config("cc", tmp_path / "straight", **cfg))

    real_epoch = trainer.train_one_epoch

    def killed_in_third_epoch(*args, **kwargs):
        if args[7] == 2:  # epoch index: die mid-epoch, after epochs 0 and 1 were checkpointed
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", killed_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(tiny_config("cc", tmp_path / "resumed", **cfg))
    assert read_checkpoint(tmp_path / "resumed")["epoch"] == 2
    assert not (tmp_path / "resumed" / "results.json").exists()
    monkeypatch.setattr(trainer, "train_one_epoch", real_epoch)
    trainer.train(tiny_config("cc", tmp_path / "resumed", **cfg))

    straight, resumed = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    epochs = [json.loads(line)["epoch"] for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert epochs == [1, 2, 3]


def test_different_seeds_give_different_weights(tmp_path):
    # The resume check above means something only if training is not a constant function of its config.
    trainer.train(tiny_config("cc", tmp_path / "a", epochs=1, batch_size=256, seed=1))
    trainer.train(tiny_config("cc", tmp_path / "b", epochs=1, batch_size=256, seed=2))
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_finished_run_directory_holds_every_artefact(tiny_run):
    run = tiny_run("cc")
    for name in ("last.pt", "config.json", "results.json", "metrics.jsonl", "assignments.csv", "confusion.png",
                 "gallery.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    results = json.loads((run / "results.json").read_text())
    assert results["finished"] and set(results["metrics"]) >= {"nmi", "acc", "ari"}
    rows = list(csv.DictReader(open(run / "assignments.csv")))
    assert len(rows) == 1797 and {r["class_name"] for r in rows} == {str(d) for d in range(10)}
    loaded = load_run(run)
    assert loaded.meta["num_clusters"] == 10 and loaded.epoch == 2
    images = load_dataset("digits", None, loaded.config.image_size).images
    predicted = loaded.model.predict(images.float() / 255)["cluster"]
    assert [int(r["cluster"]) for r in rows] == predicted.tolist()  # the CSV is the saved model's answer


def test_folder_of_pngs_trains_with_metrics(tmp_path, capsys):
    data = tmp_path / "photos"
    digit_folder(data)
    code = main(["--method", "cc", "--dataset", "folder", "--data-dir", str(data), "--run-dir", str(tmp_path / "run"),
                 "--preset", "fast", "--backbone", "smallcnn", "--image-size", "16", "--epochs", "2",
                 "--batch-size", "32", "--eval-every", "0", "--progress", "false"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "broken.png" in out.out + out.err  # the unreadable image is reported
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["num_images"] == 120 and set(results["metrics"]) >= {"nmi", "acc", "ari"}
    assert any("broken.png" in s for s in results["skipped_images"])
    rows = list(csv.DictReader(open(tmp_path / "run" / "assignments.csv")))
    assert {r["class_name"] for r in rows} == {"class_0", "class_1", "class_2"}
    assert all(r["source"].endswith(".png") for r in rows)


def test_missing_data_directory_fails_at_once_naming_the_files(tmp_path, capsys):
    code = main(["--method", "cc", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"),
                 "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "cifar10" in err and "data_batch_1" in err
    assert not (tmp_path / "r").exists()  # no empty run directory left behind


def test_an_empty_folder_fails_and_leaves_no_run_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["--method", "cc", "--dataset", "folder", "--data-dir", str(tmp_path / "empty"),
                 "--run-dir", str(tmp_path / "r"), "--num-clusters", "3"])
    assert code == 2 and "empty" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_device_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["--method", "cc", "--dataset", "digits", "--device", "cuda", "--run-dir", str(tmp_path / "r")])
    assert code == 2 and "torch sees no CUDA device" in capsys.readouterr().err


def test_unknown_method_and_dataset_list_the_choices(capsys):
    assert main(["--method", "nope"]) == 2
    assert "cc" in capsys.readouterr().err
    assert main(["--method", "cc", "--dataset", "nope"]) == 2
    assert "digits" in capsys.readouterr().err


def test_method_list_prints_every_registered_method(capsys):
    from train.methods import METHODS

    assert main(["--method", "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == sorted(METHODS)


def test_help_explains_every_option_with_the_resolved_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--method", "cc", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--dataset", "--data-dir", "--preset", "--epochs", "--instance-temperature", "--jitter-strength"):
        assert option in out
    # digits (the default data set) with CC's paper preset: smallcnn for 300 epochs, not the dataclass's resnet34/1000
    assert "default: 'smallcnn', from the paper preset / digits defaults" in out
    assert "default: 300, from the paper preset / digits defaults" in out
    with pytest.raises(SystemExit):
        main(["--method", "cc", "--dataset", "cifar10", "--preset", "fast", "--help"])
    assert "default: 'resnet18', from the fast preset / cifar10 defaults" in " ".join(capsys.readouterr().out.split())


def test_a_foreign_checkpoint_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        load_run(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="last.pt"):
        load_run(tmp_path)
