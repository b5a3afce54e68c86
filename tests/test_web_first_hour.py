"""Issue 15's first-hour problems of the web page, in Debian's Chromium (Playwright): the
live view while queued, and the fit boxes after a photo without a face.

Screenshots go to /tmp/pulse_sr_first_hour_*.png.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pulse_sr.web.app import STATIC_DIR
from pulse_sr.web.jobs import WebSettings

from test_web_api import live_server, upload  # noqa: E402 - the same uvicorn-in-a-thread helper
from test_web_browser import CHROMIUM, FLAGS  # noqa: E402


def _page(p: Any, tmp_path: Path) -> tuple[Any, Any]:
    assert Path(CHROMIUM).is_file(), "Debian chromium is missing (apt-get install chromium)"
    ctx = p.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
        viewport={"width": 1200, "height": 900})
    return ctx, ctx.new_page()


def test_fit_boxes_follow_the_message_after_a_photo_without_a_face(tmp_path: Path) -> None:
    """Regression: after a photo without a face, "centre-crop / resize" stayed ticked while the
    message said to tick them; the next input inherited them."""
    import skimage.data
    from PIL import Image
    from playwright.sync_api import sync_playwright

    coffee = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(coffee)
    errors: list[str] = []
    with live_server(WebSettings()) as (url, _app), sync_playwright() as p:
        ctx, page = _page(p, tmp_path)
        try:
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#generator option[value=dcgan-digiface]", state="attached")
            page.set_input_files("#file", str(coffee))
            page.wait_for_function("document.getElementById('input-text').textContent.includes('600×400')",
                                   timeout=60_000)
            assert page.locator(".faces button").count() == 0  # no false face on a coffee cup
            # not ticked for the user (squashing a whole photo into 16 px is rarely wanted): the
            # message says what ticking does, and follows the boxes
            assert not page.is_checked("#center_crop") and not page.is_checked("#resize")
            assert "To use the whole image anyway, tick" in page.locator("#input-message").inner_text()
            page.check("#center_crop")
            page.check("#resize")
            msg = page.locator("#input-message").inner_text()
            assert "are ticked" in msg and "tick “centre-crop”" not in msg, msg
            page.screenshot(path="/tmp/pulse_sr_first_hour_noface.png", full_page=True)
            # the next input starts unticked
            page.set_input_files("#file", str(STATIC_DIR / "example_face16.png"))
            page.wait_for_function("document.getElementById('input-text').textContent.includes('16×16')")
            assert not page.is_checked("#center_crop") and not page.is_checked("#resize")
            assert page.locator("#input-message").is_hidden()
        finally:
            ctx.close()
    assert not errors, errors


def test_live_view_has_placeholders_while_queued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the live view showed broken-image icons (``<img>`` without a src) while the
    job was queued or loading; its grid wrapped unevenly."""
    from playwright.sync_api import sync_playwright

    import pulse_sr.search.pulse as pulse_mod

    real = pulse_mod.pulse_search

    def slowed(*args: Any, callback: Any = None, **kw: Any) -> Any:
        def cb(info: Any) -> None:
            time.sleep(0.1)
            callback(info)
        return real(*args, callback=cb, **kw)

    monkeypatch.setattr(pulse_mod, "pulse_search", slowed)
    errors: list[str] = []
    face = (STATIC_DIR / "example_face16.png").read_bytes()
    with live_server(WebSettings(preview_every=1)) as (url, _app), sync_playwright() as p, \
            httpx.Client(base_url=url, timeout=60) as c:
        ctx, page = _page(p, tmp_path)
        try:
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#generator option[value=dcgan-digiface]", state="attached")
            # another user's long job holds the only worker
            iid = upload(c, face, "a.png").json()["input_id"]
            first = c.post("/api/jobs", json={"input_id": iid, "n": 1, "steps": 400, "eps": 1e-12})
            assert first.status_code == 201, first.text
            page.set_input_files("#file", str(STATIC_DIR / "example_face16.png"))
            page.wait_for_function("document.getElementById('input-text').textContent.includes('16×16')")
            page.fill("#n", "6")
            page.fill("#steps", "400")
            page.fill("#eps", "1e-12")
            page.click("#start")
            page.wait_for_function("document.getElementById('status-text').textContent.includes('queue')",
                                   timeout=30_000)
            live = "#live-faces"
            assert page.locator(f"{live} img").count() == 0  # nothing that could show as broken
            assert page.locator(f"{live} .placeholder").count() == 6
            assert page.locator(f"{live} .placeholder").nth(0).inner_text() == "queued"
            cols = page.evaluate("getComputedStyle(document.getElementById('live-faces')).gridTemplateColumns")
            assert cols.split() == ["120px"] * 4  # fixed columns: rows of 4, then 2
            page.screenshot(path="/tmp/pulse_sr_first_hour_queued.png", full_page=True)
            c.post(f"/api/jobs/{first.json()['job_id']}/cancel")
            page.wait_for_function(
                "[...document.querySelectorAll('#live-faces img')].length === 6", timeout=120_000)
            assert page.evaluate(
                "[...document.querySelectorAll('#live-faces img')].every(i => i.src.startsWith('data:image/png'))")
            page.wait_for_timeout(200)
            page.screenshot(path="/tmp/pulse_sr_first_hour_running.png", full_page=True)
            page.click("#cancel")
            page.wait_for_function("document.getElementById('status-text').textContent.startsWith('cancelled')",
                                   timeout=60_000)
        finally:
            ctx.close()
    assert not errors, errors
