"""A model trained to see the centre of its images (ProPos's test_resized_crop, 224/256) is served that centre:
its metadata records the crop, and the gateway and the bulk worker decode an upload exactly as the trainer's
evaluation sees the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.metadata import ImageInput, ModelMetadata
from contract.preprocess import prepare_source
from serve.bulk.worker import read_image
from tests.support.images import encode
from tests.support.runs import tiny_config
from tests.support.serving import files, gateway, torch_predict
from train.config import EVAL_CROP
from train.data.augment import resize_images

SIZE, STORED = 16, 18  # round(18 * 224 / 256) = 16: the run stores its images at 18 and evaluates their centre 16


def _photos(count: int = 6) -> list[bytes]:
    """Greyscale PNGs of several shapes whose edges differ from their centres."""
    rng = np.random.default_rng(0)
    shapes = [(40, 40), (64, 40), (33, 90), (18, 18), (200, 120), (25, 26)]
    out = []
    for width, height in shapes[:count]:
        coarse = rng.integers(0, 256, (max(2, height // 4), max(2, width // 4)), dtype=np.uint8)
        out.append(encode(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)))
    return out


def _as_training_evaluates(data: bytes) -> np.ndarray:
    """The trainer's path: the image stored at STORED, then evaluation's centre crop at SIZE."""
    stored = torch.from_numpy(prepare_source(data, STORED, 1).copy())[None]
    return resize_images(stored, SIZE, EVAL_CROP)[0].numpy()


def test_prepare_source_with_a_crop_is_the_trainers_evaluation_of_stored_images():
    for data in _photos():
        cropped = prepare_source(data, SIZE, 1, crop=EVAL_CROP)
        np.testing.assert_array_equal(cropped, _as_training_evaluates(data))
        assert not np.array_equal(cropped, prepare_source(data, SIZE, 1))  # the whole square differs
    with pytest.raises(ValueError, match="crop"):
        prepare_source(_photos(1)[0], SIZE, 1, crop=1.5)


def test_the_input_crop_is_recorded_checked_and_one_when_an_older_record_has_none():
    with pytest.raises(ValueError, match="crop"):
        ImageInput(3, 224, 224, crop=0.0)
    record = {"name": "m", "num_clusters": 2, "input": {"channels": 1, "height": 16, "width": 16},
              "outputs": {name: {"dtype": "float32", "shape": [-1, 2]} for name in ("embedding", "probabilities")}
              | {"cluster": {"dtype": "int64", "shape": [-1]}}}
    assert ModelMetadata.from_json(record).input.crop == 1.0
    record["input"]["crop"] = EVAL_CROP
    assert ModelMetadata.from_json(record).input.crop == EVAL_CROP


@pytest.fixture(scope="module")
def cropped_model(tmp_path_factory) -> tuple[Path, Path, str]:
    from export.pipeline import export_run
    from train.trainer import train

    run = tmp_path_factory.mktemp("run-crop")
    train(tiny_config("cc", run, stored_size=STORED, image_size=SIZE, test_resized_crop=True))
    repository = tmp_path_factory.mktemp("export-crop") / "model_repository"
    result = export_run(run, repository, None, log=lambda msg: None)
    return run, repository, result.name


def test_the_gateway_and_the_bulk_worker_answer_on_the_centre_the_model_was_evaluated_on(cropped_model, tmp_path):
    run, repository, name = cropped_model
    (metadata,) = repository.glob(f"{name}/*/metadata.json")
    assert ModelMetadata.read(metadata).input.crop == EVAL_CROP
    photos = _photos()
    expected = torch_predict(run, np.stack([_as_training_evaluates(data) for data in photos]))
    whole = torch_predict(run, np.stack([prepare_source(data, SIZE, 1) for data in photos]))
    assert not np.allclose(whole["embedding"], expected["embedding"], atol=1e-3)  # the crop matters to the model
    with gateway(repository) as client:
        r = client.post("/embed", files=files([(f"{i}.png", data) for i, data in enumerate(photos)]))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([x["embedding"] for x in r.json()["results"]], expected["embedding"], atol=1e-5)
    for i, data in enumerate(photos):  # serve.bulk's worker reads a listed file with the model's crop
        (tmp_path / f"{i}.png").write_bytes(data)
        read = read_image(str(tmp_path / f"{i}.png"), SIZE, 1, crop=ModelMetadata.read(metadata).input.crop)
        np.testing.assert_array_equal(read, _as_training_evaluates(data))
