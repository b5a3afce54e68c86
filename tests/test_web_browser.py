"""The web page in Debian's Chromium driven by Playwright: upload, watch, results, zip.

Uses /usr/bin/chromium (CI installs it with apt); Playwright never downloads a browser.
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

    assert Path(CHROMIUM).is_file(), "Debian chromium is missing (apt-get install chromium)"
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

            # a bundled example button: the browser's own POST passes the cross-site checks
            page.click("button[data-example=face32]")
            page.wait_for_function("document.getElementById('input-text').textContent.includes('32×32')")
            # upload a bundled example through the file picker
            page.set_input_files("#file", str(example))
            page.wait_for_function("document.getElementById('input-text').textContent.includes('16×16')")
            assert "ready" in page.locator("#input-text").inner_text()
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


def group_photo() -> bytes:
    """scikit-image's astronaut at full size (face ~135 px) and at 1/5 (face ~27 px), side by side."""
    import numpy as np
    import skimage.data
    from PIL import Image

    big = Image.fromarray(skimage.data.astronaut())
    small = big.resize((102, 102), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (700, 512), (200, 200, 200))
    canvas.paste(big, (0, 0))
    canvas.paste(small, (560, 200))
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    assert np.asarray(canvas).std() > 10
    return buf.getvalue()


def test_photo_skip_cancel_keeps_and_provenance(tmp_path: Path, monkeypatch: Any) -> None:
    """Issue 15 in the browser: a large face shown as skipped (with "restore anyway"), a small
    one restored; a cancel keeps the candidates already within eps; a downloaded face
    carries provenance. Screenshots go to /tmp/pulse_sr_web_*.png."""
    import time

    from playwright.sync_api import sync_playwright

    import pulse_sr.search.pulse as pulse_mod
    from pulse_sr.io.provenance import read_provenance

    real = pulse_mod.pulse_search

    def slowed(*args: Any, callback: Any = None, **kw: Any) -> Any:
        def cb(info: Any) -> None:  # 0.15 s a step: time to see candidates converge and cancel
            time.sleep(0.15)
            callback(info)
        return real(*args, callback=cb, **kw)

    monkeypatch.setattr(pulse_mod, "pulse_search", slowed)
    photo = tmp_path / "group.png"
    photo.write_bytes(group_photo())
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
            page.wait_for_selector("#generator option[value=dcgan-digiface]", state="attached")
            assert page.locator("#generator option[value=tiny]").count() == 0  # not a face model
            page.set_input_files("#file", str(photo))
            page.wait_for_selector(".faces button >> nth=1", timeout=60_000)
            assert page.locator(".faces button").count() == 2
            big = page.locator(".faces button.skipped")
            assert big.count() == 1 and "skipped" in big.locator(".gain").inner_text()
            chosen = page.locator(".faces button.chosen")
            assert "skipped" not in (chosen.get_attribute("class") or "")  # the small face is chosen
            assert page.locator("#force-label").is_hidden()
            big.click()
            assert page.locator("#force-label").is_visible()
            assert "nothing to gain" in page.locator("#input-message").inner_text()
            page.screenshot(path="/tmp/pulse_sr_web_skipped.png", full_page=True)
            page.locator(".faces button:not(.skipped)").click()
            assert page.locator("#force-label").is_hidden()

            page.fill("#n", "4")
            page.fill("#steps", "400")
            page.fill("#eps", "0.01")  # loose: some of 4 candidates get there early
            page.click("#start")
            page.wait_for_selector("#live-section:not([hidden])")
            # while queued or loading: placeholders, never an <img> without a src
            assert page.evaluate("[...document.querySelectorAll('#live-faces img')].every(i => i.getAttribute('src'))")
            page.wait_for_function(
                "/ [1-3]\\/4 within eps/.test(document.getElementById('status-text').textContent)",
                timeout=200_000)
            page.click("#cancel")
            page.wait_for_selector("#results-section:not([hidden])", timeout=60_000)
            assert page.locator("#status-text").inner_text().startswith("cancelled")
            assert "Cancelled" in page.locator("#results-summary").inner_text()
            cards = page.locator(".card")
            assert 1 <= cards.count() <= 3
            for k in range(cards.count()):
                text = cards.nth(k).inner_text()
                assert "within eps" in text and "not within eps" not in text and "cancelled" in text
            cols = page.evaluate("getComputedStyle(document.getElementById('candidates')).gridTemplateColumns")
            assert cols.split()[0] == "214px"  # fixed columns
            page.wait_for_timeout(300)
            page.screenshot(path="/tmp/pulse_sr_web_cancelled.png", full_page=True)
            with page.expect_download() as info:
                cards.nth(0).locator("a", has_text="download").click()
            face = Path(info.value.path())
            prov = read_provenance(face)
        finally:
            ctx.close()
    assert not errors, errors
    assert prov["kind"] == "generated" and prov["generator"] == "dcgan-digiface" and prov["not_recovered"]
