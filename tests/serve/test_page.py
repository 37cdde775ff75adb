"""The gateway's page in a real headless Chromium (Debian's, driven by playwright) against a real gateway.

Screenshots go to build/page/ so a person can look at them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.support.images import encode
from tests.support.processes import gateway_process
from tests.support.runs import digit_images
from tests.support.serving import exported

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "page"
CHROMIUM = shutil.which("chromium")
# Chromium on a closed network: no background connections, no first-run work.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: make browser (scripts/setup_browser.sh)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def digits_upload(tmp_path_factory) -> list[Path]:
    """5 digit PNGs and one file that is no image."""
    folder = tmp_path_factory.mktemp("upload")
    paths = []
    for i, img in enumerate(digit_images(5, 16)):
        path = folder / f"digit_{i}.png"
        path.write_bytes(encode(Image.fromarray(img[0], "L")))
        paths.append(path)
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return [*paths, broken]


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _upload(page, files: list[Path]) -> None:
    page.set_input_files("#files", [str(f) for f in files])
    page.wait_for_selector("#results li")


def test_upload_shows_each_answer_and_names_the_broken_file(browser, tiny_run, tmp_path_factory, tmp_path,
                                                            digits_upload):
    model = exported(tiny_run, tmp_path_factory, "cc")
    with gateway_process(model.repository, tmp_path / "gateway.log") as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/")
        page.wait_for_selector(f"#model option[value='{model.name}']", state="attached")
        _upload(page, digits_upload)
        answers, errors = page.locator("#results li.answer"), page.locator("#results li.error")
        assert answers.count() == 5 and errors.count() == 1
        assert "broken.png" in errors.first.inner_text()
        clusters = [int(answers.nth(i).get_attribute("data-cluster")) for i in range(5)]
        assert all(0 <= c < 10 for c in clusters)
        assert "%" in answers.first.locator(".probability").inner_text()
        _shot(page, "upload")
        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        _shot(page, "upload-phone")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
        page.close()


def test_with_an_api_key_the_page_asks_once(browser, tiny_run, tmp_path_factory, tmp_path, digits_upload):
    model = exported(tiny_run, tmp_path_factory, "cc")
    with gateway_process(model.repository, tmp_path / "gateway.log", api_key="s3cret") as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key", "s3cret")
        page.click("#key-form button[value=ok]")
        page.wait_for_selector(f"#model option[value='{model.name}']", state="attached")
        _upload(page, digits_upload[:2])
        assert page.locator("#results li.answer").count() == 2
        assert not page.locator("#key-dialog[open]").count()  # asked once, not per request
        page.close()


def test_the_page_is_keyboard_operable(browser, tiny_run, tmp_path_factory, tmp_path):
    model = exported(tiny_run, tmp_path_factory, "cc")
    with gateway_process(model.repository, tmp_path / "gateway.log") as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.focus("#tab-upload")
        page.keyboard.press("ArrowRight")
        assert page.evaluate("document.activeElement.id") == "tab-clusters"
        assert page.is_visible("#view-clusters") and not page.is_visible("#view-upload")
        page.keyboard.press("ArrowLeft")
        assert page.is_visible("#view-upload")
        with page.expect_file_chooser() as chooser:  # Enter on the drop zone opens the file picker
            page.focus("#drop")
            page.keyboard.press("Enter")
        assert chooser.value.is_multiple()
        page.close()
