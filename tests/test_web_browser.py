"""The web page in Debian's Chromium driven by Playwright: upload, watch, results, zip.

Uses /usr/bin/chromium (``scripts/setup --test`` installs it with apt); Playwright never
downloads a browser. Without it the test fails with the install line: it never skips.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

from pulse_sr.web.app import STATIC_DIR
from pulse_sr.web.jobs import WebSettings

from test_web_api import live_server  # noqa: E402 - the same uvicorn-in-a-thread helper

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]
NOTES_COPY = Path("/work/notes/web_results.png")


def test_upload_watch_results_and_zip(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), (f"Debian chromium is missing ({CHROMIUM}): run scripts/setup --test, "
                                      "or: sudo apt-get install -y chromium")
    example = STATIC_DIR / "example_face16.png"
    errors: list[str] = []
    with live_server(WebSettings(preview_every=1)) as (url, _app), sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 900}, accept_downloads=True,
        )
        try:
            page = ctx.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            assert page.locator("#notice").is_visible()
            assert "generated, not recovered" in page.locator("#notice").inner_text()
            page.wait_for_selector("#generator option[value=dcgan-digiface]", state="attached")
            assert page.locator("#card-link").get_attribute("href").startswith("https://")

            # upload a bundled example through the file picker
            page.set_input_files("#file", str(example))
            page.wait_for_function("document.getElementById('input-text').textContent.includes('ready')")
            assert "16×16" in page.locator("#input-text").inner_text()
            page.select_option("#generator", "dcgan-digiface")
            page.fill("#n", "2")
            page.fill("#steps", "8")
            page.fill("#eps", "1e-9")  # no early stop: all 8 steps run, so the face keeps changing
            # record every image the live view shows for candidate 0
            page.evaluate("""() => {
                window.__srcs = [];
                new MutationObserver(() => {
                    const img = document.getElementById('live-0');
                    if (img && img.src && window.__srcs.at(-1) !== img.src) window.__srcs.push(img.src);
                }).observe(document.getElementById('live-faces'),
                           {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
            }""")
            page.click("#start")
            page.wait_for_selector("#live-section:not([hidden])")
            page.wait_for_selector("#results-section:not([hidden])", timeout=120_000)
            srcs = page.evaluate("window.__srcs")
            assert len(set(srcs)) >= 2, "the live image never changed"
            assert page.locator("#progress").get_attribute("value") == "8"
            assert page.locator("#status-text").inner_text().startswith("done")

            cards = page.locator(".card")
            assert cards.count() == 2
            for k in range(2):
                text = cards.nth(k).inner_text()
                assert "L2" in text and "not within eps" in text  # eps 1e-9 is never met
                assert page.evaluate(f"document.querySelectorAll('.card')[{k}].querySelector('img.hr').naturalWidth") == 64
            assert page.evaluate("document.getElementById('spread').naturalWidth") == 64
            page.wait_for_timeout(300)  # let images paint before the screenshot
            shot = tmp_path / "web_results.png"
            page.screenshot(path=str(shot), full_page=True)
            with contextlib.suppress(OSError):
                if NOTES_COPY.parent.is_dir():
                    shutil.copyfile(shot, NOTES_COPY)

            with page.expect_download() as info:
                page.click("#zip")
            data = Path(info.value.path()).read_bytes()
        finally:
            ctx.close()
    assert not errors, errors
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = sorted(Path(n).name for n in z.namelist())
        assert names == ["hr_00.png", "hr_01.png", "input.png", "lr_00.png", "lr_01.png",
                         "report.json", "spread.png"]
        report: dict[str, Any] = json.loads(z.read(next(n for n in z.namelist() if n.endswith("report.json"))))
    assert report["generator"]["name"] == "dcgan-digiface"
    assert [c["steps_run"] for c in report["candidates"]] == [8, 8]
    assert report["input"]["used_size"] == [16, 16]
