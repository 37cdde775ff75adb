"""Screenshots of the gateway's page for the README: python scripts/page_screenshot.py REPOSITORY OUT_DIR

Starts `python -m serve` on REPOSITORY, opens the page in Debian's headless chromium (playwright),
drops 8 digits of scikit-learn's data set, and saves the upload, cluster and map views as PNGs.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.serve.test_page import ARGS, wait_until  # noqa: E402
from tests.support.processes import gateway_process  # noqa: E402
from tests.support.runs import digit_images  # noqa: E402


def main(repository: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pngs = []
        for i, img in enumerate(digit_images(8, 8)):
            path = Path(tmp) / f"digit_{i}.png"
            Image.fromarray(img[0], "L").resize((64, 64), Image.NEAREST).save(path)
            pngs.append(str(path))
        with gateway_process(repository, Path(tmp) / "gateway.log") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url + "/")
            page.wait_for_selector("#model-info[data-model]", state="attached")
            page.set_input_files("#files", pngs)
            page.wait_for_selector("#results li")
            page.screenshot(path=str(out / "page-upload.png"))
            page.click("#tab-clusters")
            wait_until(page, "[...document.querySelectorAll('#clusters img')].every((i) => i.complete)")
            page.screenshot(path=str(out / "page-clusters.png"))
            page.click("#tab-map")
            page.wait_for_selector("#map svg circle.dropped")
            page.screenshot(path=str(out / "page-map.png"))
            browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
