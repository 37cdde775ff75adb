"""The shared trainer: resume after a kill, run-directory artefacts, folders of PNGs, clear errors; images at
their stored side cropped to the model side, 224 px ImageNet-stem steps, splits and STL-10's two-phase epoch."""

from __future__ import annotations

import contextlib
import csv
import json
import math

import pytest
import torch

import train.trainer as trainer
from tests.support.runs import digit_folder, tiny_config
from train.__main__ import main
from train.backbones import Backbone
from train.checkpoint import load_run, read_checkpoint
from train.data.datasets import load_dataset
from train.methods import METHODS


def _state(run_dir):
    return read_checkpoint(run_dir)["model"]


def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfg = dict(epochs=3, batch_size=256)
    trainer.train(tiny_config("cc", tmp_path / "straight", **cfg))

    real_epoch = trainer.train_one_epoch

    def killed_in_third_epoch(*args, **kwargs):
        if args[2] == 2:  # epoch index: die mid-epoch, after epochs 0 and 1 were checkpointed
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


# --- stored side, splits, the instance pass, schedules (issue 12) -------------------------------------------


def test_a_224_px_imagenet_stem_step_on_a_cifar_shaped_batch(tmp_path):
    """CC's paper preset on CIFAR-10: 32 px images stay 32 px in memory, the crop takes them to 224 px,
    ResNet-34 with the ImageNet stem trains on them; evaluation resizes 32 -> 224 on the device."""
    from train.data.augment import AugmentParams, BatchAugment
    from train.methods import get_method, make_config
    from train.methods.base import StepContext

    cfg = make_config("cc", dataset="cifar10", preset="paper", batch_size=2)
    assert (cfg.image_size, cfg.stored_side(), cfg.stem, cfg.backbone) == (224, 32, "imagenet", "resnet34")
    torch.manual_seed(0)
    model = get_method("cc")(cfg, in_channels=3, num_clusters=10)
    conv1, maxpool = model.backbone.trunk.net.conv1, model.backbone.trunk.net.maxpool
    assert conv1.kernel_size == (7, 7) and conv1.stride == (2, 2) and isinstance(maxpool, torch.nn.MaxPool2d)
    g = torch.Generator().manual_seed(1)
    stored = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    augment = BatchAugment(AugmentParams.from_config(cfg))
    x1, x2 = augment(stored, g), augment(stored, g)
    assert x1.shape == (2, 3, 224, 224)
    step = StepContext(0, 1, 0, 1, g, torch.arange(2))
    losses = model.loss(trainer.step_outputs(model, x1, x2, step), step)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and conv1.weight.grad.abs().sum() > 0
    out = trainer.predict_dataset(model, stored, 2, contextlib.nullcontext, cfg.image_size)
    assert out["embedding"].shape == (2, 128) and out["cluster"].shape == (2,)


def test_evaluation_and_the_epoch_hooks_see_the_test_resized_crop(tmp_path, monkeypatch):
    """test_resized_crop (ProPos on ImageNet-Dogs): the final evaluation and the k-means features of the epoch
    hooks take the central 224/256 of each image, resized to the model size; the parity sample export checks
    its graphs on stays what the gateway gives the model (the whole image)."""
    from train.data.augment import resize_images

    cfg = tiny_config("propos", tmp_path, epochs=1, test_resized_crop=True, kmeans_restarts=1)
    seen = []
    real = trainer.map_batches

    def spy(model, fn, images, *args, **kwargs):
        seen.append((kwargs.get("crop"), images.shape[0]))
        return real(model, fn, images, *args, **kwargs)

    monkeypatch.setattr(trainer, "map_batches", spy)
    results = trainer.train(cfg)
    # the k-means before and after the epoch and the final evaluation on all 1797 images; the parity sample's 64
    assert sorted(seen) == [(224 / 256, 1797)] * 3 + [(1.0, 64)]
    run = load_run(tmp_path)
    images = load_dataset("digits", None, 16).images
    with torch.no_grad():
        clusters = run.model.predict(resize_images(images, 16, 224 / 256).float().div(255))["cluster"]
    assert results["metrics"]["clusters_used"] == len(set(clusters.tolist()))
    with open(tmp_path / "assignments.csv") as f:
        assert [int(row["cluster"]) for row in csv.DictReader(f)] == clusters.tolist()


def test_images_stay_at_the_stored_side_and_the_parity_sample_is_at_the_model_side(tmp_path):
    """CIFAR files at 32 px, model input 24 px: crops and evaluation resize on the device; export checks
    its graphs on 24 px images (what the gateway gives the model)."""
    import numpy as np

    from export.pipeline import export_run
    from tests.train.formats import write_cifar10

    write_cifar10(tmp_path / "data", np.random.default_rng(0), per_file=20)
    seen = []
    real = trainer.train_one_epoch

    def spy(*args, **kwargs):
        seen.append(tuple(args[1].shape))
        return real(*args, **kwargs)

    cfg = tiny_config("cc", tmp_path / "run", dataset="cifar10", data_dir=str(tmp_path / "data"), backbone="smallcnn",
                      image_size=24, batch_size=40, epochs=1)
    assert cfg.stored_side() == 32
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "train_one_epoch", spy)
        trainer.train(cfg)
    assert seen == [(120, 3, 32, 32)]  # trained from the 32 px images
    with np.load(tmp_path / "run" / "parity_sample.npz") as sample:
        assert sample["images"].shape == (64, 3, 24, 24) and sample["images"].dtype == np.uint8
    with np.load(tmp_path / "run" / "calibration_sample.npz") as sample:  # all 120 training images, shuffled
        assert sample["images"].shape == (120, 3, 24, 24) and sample["images"].dtype == np.uint8
        assert sorted(sample["index"].tolist()) == list(range(120)) and sample["index"].tolist() != list(range(120))
    result = export_run(tmp_path / "run", tmp_path / "repo", None, log=lambda message: None)
    assert result.parity["passed"] and result.models.metadata.input.height == 24


def test_stl10_two_phase_epoch_on_files_in_the_real_format(tmp_path, monkeypatch):
    """CC's train_STL10.py: every epoch an instance-loss-only pass over the unlabelled split, then both
    losses on train+test; evaluation on train+test."""
    import numpy as np

    from tests.train.formats import write_stl10
    from train.methods.cc import CC

    rng = np.random.default_rng(1)
    images = {split: rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
              for split, n in (("train", 8), ("test", 8), ("unlabeled", 24))}
    write_stl10(tmp_path / "stl10_binary", images, {"train": list(range(8)), "test": list(range(8))})
    calls = []
    real_loss = CC.loss

    def loss(self, outputs, step):
        values = real_loss(self, outputs, step)
        calls.append((step.phase, step.step, step.steps_per_epoch, values["loss"].item(), values["instance"].item()))
        return values

    monkeypatch.setattr(CC, "loss", loss)
    cfg = tiny_config("cc", tmp_path / "run", dataset="stl10", data_dir=str(tmp_path), preset="paper",
                      backbone="smallcnn", stem="cifar", image_size=16, batch_size=8, epochs=2)
    assert (cfg.train_splits, cfg.instance_splits) == ("train,test", "unlabelled")
    results = trainer.train(cfg)
    # per epoch 3 instance steps (24 unlabelled images), then 2 steps on the 16 labelled ones; steps numbered on
    phases = [(phase, step, per_epoch) for phase, step, per_epoch, _, _ in calls]
    assert phases == [("instance", 0, 5), ("instance", 1, 5), ("instance", 2, 5), ("train", 3, 5), ("train", 4, 5),
                      ("instance", 5, 5), ("instance", 6, 5), ("instance", 7, 5), ("train", 8, 5), ("train", 9, 5)]
    for phase, _, _, total, instance in calls:  # the instance pass minimises the instance loss alone
        assert (total == pytest.approx(instance)) == (phase == "instance")
    assert results["num_images"] == 16 and {"nmi", "acc", "ari"} <= set(results["metrics"])
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert {"instance_pass_loss", "loss", "cluster"} <= set(records[0])
    state = read_checkpoint(tmp_path / "run")
    assert state["scheduler"]["last_epoch"] == 10  # the schedule counts both passes


def test_cohiclust_trains_on_the_unlabelled_split_and_scores_the_test_split(tmp_path):
    import numpy as np

    from tests.train.formats import write_stl10

    rng = np.random.default_rng(2)
    images = {split: rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
              for split, n in (("train", 4), ("test", 12), ("unlabeled", 32))}
    write_stl10(tmp_path / "stl10_binary", images, {"train": [0, 1, 2, 3], "test": [k % 10 for k in range(12)]})
    cfg = tiny_config("cohiclust", tmp_path / "run", dataset="stl10", data_dir=str(tmp_path), preset="paper",
                      backbone="smallcnn", stem="cifar", image_size=16, batch_size=16, epochs=2, simclr_epochs=0,
                      prune_start_epoch=1)
    assert (cfg.train_splits, cfg.eval_splits) == ("unlabelled", "test")
    results = trainer.train(cfg)
    assert results["num_images"] == 12 and "nmi" in results["metrics"]
    rows = list(csv.DictReader(open(tmp_path / "run" / "assignments.csv")))
    assert len(rows) == 12 and all("test_X.bin" in row["source"] for row in rows)


def test_the_official_propos_learning_rate_schedule():
    """models/basic_template.py cosine_annealing_LR: linear warm-up over 50 epochs, then
    eta_min + 0.5 (lr - eta_min)(1 + cos(pi (epoch - warmup) / epochs)): the cosine spans `epochs`."""
    from train.methods import make_config

    cfg = make_config("propos", dataset="cifar10", preset="paper")
    steps = 10
    for step in (0, 100, 499, 500, 3000, 9999):
        epoch = (step + 1) / steps  # the official n_iter counts from 1
        official = epoch / 50 if epoch < 50 else 0.5 * (1 + math.cos((epoch - 50) * math.pi / 1000))
        assert trainer.lr_factor(cfg, step, steps) == pytest.approx(official, abs=1e-3)
    last = trainer.lr_factor(cfg, 1000 * steps - 1, steps)
    assert last == pytest.approx(0.0062, abs=1e-4)  # the official run ends at 0.6% of lr, short of eta_min 0
    native = make_config("propos", dataset="cifar10", preset="native")
    assert trainer.lr_factor(native, 1000 * steps - 1, steps) == pytest.approx(0.0, abs=1e-5)


def test_instance_splits_need_a_method_with_an_instance_loss(tmp_path, capsys):
    code = main(["--method", "drc", "--dataset", "digits", "--instance-splits", "all",
                 "--run-dir", str(tmp_path / "r")])
    assert code == 2 and "drc has no instance loss" in capsys.readouterr().err


def test_channel_stats_in_chunks_equal_the_whole_at_once():
    images = torch.randint(0, 256, (300, 3, 8, 8), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    mean, std = trainer.channel_stats(images, chunk=64)
    whole = images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(whole.mean(1).tolist(), abs=1e-12)
    assert std == pytest.approx(whole.std(1).tolist(), abs=1e-9)


def test_the_calibration_sample_is_seeded_random_training_images_within_its_byte_budget(tmp_path, monkeypatch):
    import numpy as np
    import torch

    from train.data.datasets import ImageData

    images = torch.randint(0, 256, (3000, 3, 32, 32), dtype=torch.uint8)
    data = ImageData(images, None, None, [f"{i}.png" for i in range(3000)], "folder", [])

    def sample(name: str, seed: int) -> dict:
        trainer.save_calibration_sample(tmp_path / name, data, 16, seed)
        with np.load(tmp_path / name) as saved:
            return {k: saved[k] for k in saved.files}

    first, again, other = sample("a.npz", 0), sample("b.npz", 0), sample("c.npz", 1)
    assert first["images"].shape == (trainer.CALIBRATION_IMAGES, 3, 16, 16)  # at the model's side
    assert all(np.array_equal(first[k], again[k]) for k in first) and not np.array_equal(first["index"], other["index"])
    assert len(set(first["index"].tolist())) == trainer.CALIBRATION_IMAGES and first["index"].max() > 2000
    assert first["sources"][0] == f"{first['index'][0]}.png"
    np.testing.assert_array_equal(first["images"][5], trainer.resize_images(images[first["index"][5:6]], 16)[0])
    monkeypatch.setattr(trainer, "CALIBRATION_BYTES", 100 * 3 * 16 * 16)  # room for 100 images at 16 px
    assert sample("d.npz", 0)["images"].shape[0] == 100


@pytest.mark.parametrize("method", sorted(METHODS))
def test_amp_trains_every_method_in_bf16_on_the_cpu(method, tmp_path, tiny_run, monkeypatch):
    """--amp true: bf16 autocast on the CPU too (the path a GPU run takes, exercised without one); the
    default is fp32, as every official code trains."""
    parent = METHODS[method].parent
    extra = {"init": str(tiny_run(parent))} if parent else {}  # trained before the recording starts
    assert tiny_config(method, tmp_path).amp is False
    dtypes = []
    forward = Backbone.forward

    def recording(self, x):
        out = forward(self, x)
        if self.training:
            dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(Backbone, "forward", recording)
    results = trainer.train(tiny_config(method, tmp_path, epochs=1, amp=True, **extra))
    assert dtypes and set(dtypes) == {torch.bfloat16}  # every training forward ran in bf16
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["loss"])
    assert results["finished"] and results["metrics"]["clusters_used"] >= 1
