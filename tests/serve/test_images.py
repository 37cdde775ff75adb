"""serve.images: the gateway decodes exactly as training does, fairly, and any one image fails alone."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import serve.images
from serve.app import create_app
from serve.images import Upload, prepare_uploads
from serve.settings import load_settings
from tests.support.images import encode
from tests.support.serving import FakeBackend, files, grey_png


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
    return coarse.resize((width, height), Image.Resampling.BICUBIC)


def _prepare(uploads: list[Upload], size: int, channels: int, **settings):
    with ThreadPoolExecutor(2) as pool:
        return asyncio.run(prepare_uploads(uploads, size, channels, load_settings({}, **settings), pool))


def test_the_gateway_decodes_exactly_as_the_training_loader(tmp_path: Path):
    from train.data.datasets import load_dataset

    originals = {"photo.jpg": encode(_photo(1600, 1200), "JPEG", quality=90),  # decoded at 1/8 scale
                 "wide.png": encode(_photo(900, 96, 1)), "small.gif": encode(_photo(40, 24, 2), "GIF"),
                 "grey.png": encode(_photo(64, 80, 3).convert("L"))}
    folder = tmp_path / "images"
    folder.mkdir()
    for name, data in originals.items():
        (folder / name).write_bytes(data)
    training = load_dataset("folder", folder, 32)
    by_name = {Path(source).name: training.images[i].numpy() for i, source in enumerate(training.sources)}
    uploads = [Upload(i, name, data) for i, (name, data) in enumerate(originals.items())]
    images, ok, errors = _prepare(uploads, 32, 3)
    assert not errors and ok == list(range(len(uploads)))
    for up, image in zip(uploads, images, strict=True):
        np.testing.assert_array_equal(image, by_name[up.filename], err_msg=up.filename)


def test_base64_and_raw_uploads_decode_alike():
    import base64

    data = encode(_photo(120, 90))
    raw, b64, url = _prepare([Upload(0, None, data), Upload(1, None, base64.b64encode(data), base64=True),
                              Upload(2, None, b"data:image/png;base64," + base64.b64encode(data), base64=True)],
                             16, 3)[0]
    np.testing.assert_array_equal(raw, b64)
    np.testing.assert_array_equal(raw, url)


def test_an_image_over_its_decode_budget_fails_alone():
    # 24 Mpx in a small file: about 0.2 s to decode here; the budget leaves the small image room for the
    # interpreter's 5 ms thread switches while the two decode side by side (1 ms failed it now and then)
    slow = encode(Image.new("RGB", (6000, 4000), (10, 20, 30)))
    images, ok, errors = _prepare([Upload(0, "slow.png", slow), Upload(1, "ok.png", grey_png(9))], 8, 1,
                                  decode_timeout_ms=30)
    assert ok == [1] and images.shape == (1, 1, 8, 8)
    assert errors[0].startswith("image 0 (slow.png): decoding took longer than the budget of 30 ms")


def test_out_of_memory_in_one_image_fails_that_image_alone(monkeypatch):
    real = serve.images.prepare_source

    def prepare_source(data, *args, **kwargs):  # noqa: ANN001, ANN202
        if data == b"huge":
            raise MemoryError
        return real(data, *args, **kwargs)

    monkeypatch.setattr(serve.images, "prepare_source", prepare_source)
    images, ok, errors = _prepare([Upload(0, "a.png", grey_png(1)), Upload(1, "b", b"huge"),
                                   Upload(2, "c.png", grey_png(2))], 8, 1)
    assert ok == [0, 2] and errors == {1: "image 1 (b): out of memory while decoding"}


def test_a_big_request_does_not_hold_the_decode_pool():
    """With one decode thread, a one-image request sent after a 24-image one is answered first."""
    big = [(f"{i}.png", encode(Image.new("L", (2500, 2500), i))) for i in range(24)]
    app = create_app(load_settings({}, decode_threads=1), FakeBackend())
    finished: list[str] = []

    async def post(client: httpx.AsyncClient, name: str, items: list[tuple[str, bytes]]) -> httpx.Response:
        r = await client.post("/cluster", files=files(items))
        finished.append(name)
        return r

    async def body() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=120) as client:
                first = asyncio.create_task(post(client, "big", big))
                await asyncio.sleep(0.1)  # the big request is decoding
                second = await post(client, "small", [("one.png", grey_png(7))])
                return [await first, second]

    began = time.perf_counter()
    responses = asyncio.run(body())
    assert [r.status_code for r in responses] == [200, 200]
    assert finished == ["small", "big"], f"{finished} after {time.perf_counter() - began:.1f} s"
    assert all("cluster" in x for r in responses for x in r.json()["results"])


@pytest.mark.parametrize("label, expected", [
    ("cannot identify image file <_io.BytesIO object at 0x7f3a2c1d0e50>", "cannot identify image file <object>"),
    ("repository /srv/models/model_repository does not exist", "repository model_repository does not exist"),
    ("Triton at http://127.0.0.1:8001/v2 is down", "Triton at http://127.0.0.1:8001/v2 is down"),
])
def test_answers_carry_no_heap_addresses_or_host_paths(label, expected):
    from serve.errors import public_text

    assert public_text(label) == expected
