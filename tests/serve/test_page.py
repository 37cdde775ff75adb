"""The gateway's page in a real headless Chromium (Debian's, driven by playwright) against a real gateway process.

Models: the tiny digits runs of the demo's method (CC) and of CoHiClust, exported with the embedding map
(UMAP), and CC's int8 model beside its fp32 one. Screenshots go to build/page/ so a person can look at them.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.support.images import encode
from tests.support.processes import gateway_process
from tests.support.runs import digit_images

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
def repository(tiny_run, tmp_path_factory) -> Path:
    """CC (the demo's method) and CoHiClust, exported with their embedding maps, and CC at int8, in one repository."""
    from export.agreement import Thresholds
    from export.pipeline import PrecisionOptions, export_run
    from tests.support.serving import TINY_MIN_AGREEMENT

    root = tmp_path_factory.mktemp("page-repository")
    for method in ("cc", "cohiclust"):
        export_run(tiny_run(method), root, None, projection="umap", log=lambda msg: None)
    export_run(tiny_run("cc"), root, None, log=lambda msg: None,
               precision=PrecisionOptions("int8", Thresholds(min_agreement=TINY_MIN_AGREEMENT)))
    return root


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


@pytest.fixture(scope="module")
def url(repository, tmp_path_factory):
    with gateway_process(repository, tmp_path_factory.mktemp("gateway") / "gateway.log",
                         repository_poll_s="0.5") as base:
        yield base


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _open(browser, url: str, model: str, **options):
    page = browser.new_page(**options)
    # what the page's Content-Security-Policy refuses, recorded from before its first script runs
    page.add_init_script("window.refused = []; document.addEventListener('securitypolicyviolation', "
                         "(e) => window.refused.push(`${e.violatedDirective} ${e.blockedURI}`));")
    page.goto(url + "/")
    page.wait_for_selector(f"#model option[value='{model}']", state="attached")
    page.select_option("#model", model)
    page.wait_for_selector(f"#model-info[data-model='{model}']", state="attached")
    return page


def wait_until(page, expression: str, timeout_s: float = 30.0) -> None:
    """Poll a JavaScript expression until it is true. Evaluated from outside the page (playwright's own
    wait_for_function evals it inside, which the page's Content-Security-Policy refuses, as it should)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true after {timeout_s} s: {expression}"
        time.sleep(0.05)


def _upload(page, files: list[Path]) -> None:
    page.evaluate("document.getElementById('results').replaceChildren()")
    page.set_input_files("#files", [str(f) for f in files])
    page.wait_for_selector("#results li")


def test_upload_rename_browse_and_map(browser, url, digits_upload):
    page = _open(browser, url, "cc_digits", viewport={"width": 1280, "height": 900})
    _upload(page, digits_upload)
    answers, errors = page.locator("#results li.answer"), page.locator("#results li.error")
    assert answers.count() == 5 and errors.count() == 1
    error = errors.first.inner_text()
    assert "broken.png" in error and "0x" not in error  # named, with no heap address
    first = int(answers.first.get_attribute("data-cluster"))
    assert answers.first.locator(".cluster-name").inner_text()  # a name from the model card
    assert "%" in answers.first.locator(".probability").inner_text()
    _shot(page, "upload")

    page.click("#tab-clusters")  # the cluster browser: sizes and the training images of each cluster
    card = page.locator(f"#clusters li[data-cluster='{first}']")
    assert "training images" in card.inner_text()
    wait_until(page, f"[...document.querySelectorAll(\"#clusters li[data-cluster='{first}'] img\")]"
                           ".every((i) => i.complete && i.naturalWidth > 0)")
    assert card.locator("img").count() > 0
    card.locator("input").fill("round things")
    card.locator("button").click()
    wait_until(page, "document.getElementById('status').textContent.includes('round things')")
    _shot(page, "clusters")

    page.click("#tab-upload")  # the next upload answers with the new name
    _upload(page, digits_upload[:1])
    assert page.locator("#results li.answer .cluster-name").first.inner_text() == "round things"

    page.click("#tab-map")  # the embedding map, with the dropped image on it
    page.wait_for_selector("#map svg circle.dropped")
    assert page.locator("#map svg circle").count() > 1000
    assert "UMAP" in page.inner_text("#map-note") or "umap" in page.inner_text("#map-note")
    _shot(page, "map")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.click("#tab-upload")
    _shot(page, "upload-phone")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    # issue 24: the page had no Content-Security-Policy; the one it has now refuses nothing the page does
    policy = page.request.get(url + "/").headers["content-security-policy"]
    assert "default-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert page.evaluate("window.refused") == []
    page.close()


def test_the_precision_picker_switches_to_the_int8_model(browser, url, digits_upload):
    page = _open(browser, url, "cc_digits")
    assert page.locator("#precision option").all_inner_texts()[0] == "fp32"
    label = page.locator("#precision option[value='cc_digits_int8']").inner_text()
    assert label.startswith("int8 (") and label.endswith("% agreement)")
    assert page.locator("#model option[value='cc_digits_int8']").count() == 0  # one entry per exported model
    page.select_option("#precision", "cc_digits_int8")
    page.wait_for_selector("#model-info[data-model='cc_digits_int8']", state="attached")
    assert "int8" in page.inner_text("#model-info") and "cluster agreement with fp32" in page.inner_text("#model-info")
    with page.expect_request(lambda request: "/cluster?" in request.url) as sent:
        _upload(page, digits_upload[:2])
    assert "model=cc_digits_int8" in sent.value.url and page.locator("#results li.answer").count() == 2
    page.close()


def test_choosing_how_many_clusters_on_the_page(browser, url, repository, digits_upload):
    """The level control: the suggested k marked; at k the cluster browser shows k clusters, the map k colours,
    an upload answers as /cluster?clusters=k does, and renaming writes that level's names."""
    import httpx

    card = json.loads((repository / "cc_digits" / "1" / "card.json").read_text())
    suggested = card["levels"]["suggested"]
    page = _open(browser, url, "cc_digits", viewport={"width": 1280, "height": 900})
    assert page.locator(f"#level option[value='{suggested}']").inner_text().startswith(f"{suggested} (suggested)")
    reason = {"knee": "where the merge heights bend", "silhouette": "best silhouette"}[card["levels"]["suggested_by"]]
    assert page.inner_text("#level-note").startswith(f"suggested: {suggested} clusters ({reason}; merged by ")
    assert page.input_value("#level") == "10"
    _upload(page, digits_upload)
    k = 3 if suggested != 3 else 4
    page.select_option("#level", str(k))
    page.wait_for_selector(f"#model-info[data-level='{k}']", state="attached")  # re-answered at k
    shown = [(int(a.get_attribute("data-cluster")), a.locator(".cluster-name").inner_text())
             for a in page.locator("#results li.answer").all()]
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in digits_upload]
    answer = httpx.post(f"{url}/cluster", params={"model": "cc_digits", "clusters": k}, files=files).json()
    assert shown == [(r["cluster"], r["name"]) for r in answer["results"] if "error" not in r]

    page.click("#tab-clusters")
    merged = page.locator("#clusters > li")
    assert merged.count() == k and page.inner_text("#clusters-note").startswith(f"{k} clusters")
    ids = sorted(int(c.get_attribute("data-cluster")) for c in merged.all())
    assert ids == sorted(set(card["levels"]["assignments"][str(k)]))
    biggest = page.locator("#clusters > li", has_text="merges clusters").first
    target = int(biggest.get_attribute("data-cluster"))
    biggest.locator("input").fill("many digits")
    biggest.locator("button").click()
    wait_until(page, "document.getElementById('status').textContent.includes('many digits')")
    names = httpx.get(f"{url}/models/cc_digits", params={"clusters": k}).json()["names"]
    assert names[target] == "many digits"
    assert "many digits" not in httpx.get(f"{url}/models/cc_digits").json()["names"]  # level 10 keeps its names
    _shot(page, "clusters-at-k")

    page.click("#tab-map")
    page.wait_for_selector("#map svg circle")
    assert page.locator("#legend li").count() == k
    fills = page.evaluate("new Set([...document.querySelectorAll('#map svg circle:not(.dropped)')]"
                          ".map((c) => c.getAttribute('fill'))).size")
    assert fills <= k
    page.close()


def test_cohiclust_tree_shows_counts_and_a_nodes_images(browser, url):
    page = _open(browser, url, "cohiclust_digits")
    page.wait_for_selector("#tab-tree:not([hidden])")
    page.click("#tab-tree")
    root = page.locator(".node[data-node='0']")
    assert root.inner_text().endswith(": 1797")  # every training image passes the root
    page.locator(".node[data-node='1']").click()
    page.wait_for_selector("#tree-images img")
    assert "node 1" in page.inner_text("#tree-images")
    _shot(page, "tree")
    page.close()


def test_the_page_is_keyboard_operable(browser, url):
    page = _open(browser, url, "cc_digits")
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


def test_with_an_api_key_the_page_asks_once(browser, repository, tmp_path, digits_upload):
    with gateway_process(repository, tmp_path / "gateway.log", api_key="s3cret") as base:
        page = browser.new_page()
        page.goto(base + "/")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key", "s3cret")
        page.click("#key-form button[value=ok]")
        page.wait_for_selector("#model option[value='cc_digits']", state="attached")
        _upload(page, digits_upload[:2])
        assert page.locator("#results li.answer").count() == 2
        assert not page.locator("#key-dialog[open]").count()  # asked once, not per request
        page.close()


def test_a_bulk_jobs_output_can_be_browsed(browser, repository, tmp_path, digits_upload):
    from serve.bulk.__main__ import main as bulk_main

    images = tmp_path / "collection"
    images.mkdir()
    for path in digits_upload:
        shutil.copy(path, images / path.name)
    out = tmp_path / "bulk"
    assert bulk_main([str(images), "--model-repository", str(repository), "--model", "cc_digits",
                      "--output", str(out), "--actors", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    with gateway_process(repository, tmp_path / "gateway.log", bulk_output=str(out)) as base:
        shown = browser.new_page().request.get(base + "/bulk/summary")
        assert str(tmp_path) not in shown.text() and str(repository) not in shown.text()  # no host paths
        assert shown.json()["clusters"] == summary["clusters"]
        page = browser.new_page()
        page.goto(base + "/")
        page.wait_for_selector("#tab-bulk:not([hidden])")
        page.click("#tab-bulk")
        text = page.inner_text("#bulk-summary")
        assert f"{summary['clustered']} of {summary['images']} images" in text and "1 error" in text
        assert f"{summary['ood']} flagged out of distribution, {summary['low_confidence']} low-confidence" in text
        shown = page.locator("#bulk li")
        assert shown.count() == len(summary["clusters"])
        # the job's own names (issue 24: "cluster 0 (0)" was shown, before the card had loaded, and stayed)
        titles = page.locator("#bulk li h3").all_inner_texts()
        names = summary["cluster_names"]
        assert titles == [f"{names[int(k)]} ({k}): {n} images" for k, n in summary["clusters"].items()]
        wait_until(page, "[...document.querySelectorAll('#bulk img')].every((i) => i.complete)")
        # a gallery per cluster with images, each one shown (an empty cluster has none: no broken image)
        assert page.locator("#bulk img").count() == sum(1 for n in summary["clusters"].values() if n)
        assert page.evaluate("[...document.querySelectorAll('#bulk img')].every((i) => i.naturalWidth > 0)")
        _shot(page, "bulk")
        page.close()
