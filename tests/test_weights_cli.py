"""``pulse-sr weights``: list/info output, download/verify/path exit codes and messages.

Downloads go to a local HTTP server (from test_weights_download) through
``$PULSE_SR_ZOO_BASE_URL``, into a temporary ``$PULSE_SR_WEIGHTS``.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_weights_download import QUOTA_PAGE, ServerState, card, payload, server  # noqa: F401 - fixture

from pulse_sr import cli
from pulse_sr.weights import zoo

SG2 = "stylegan2-ffhq-1024"
SG2_FILE = "stylegan2-ffhq-1024x1024.pkl"


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "weights"
    monkeypatch.setenv(zoo.WEIGHTS_ENV, str(root))
    monkeypatch.delenv(zoo.BASE_URL_ENV, raising=False)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    return root


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_card(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["weights", "list"], capsys)
    assert code == 0 and err == ""
    blocks = out.split("\n\n")
    names = list(zoo.ZOO)
    assert names[:4] == ["pulse-stylegan1-ffhq-1024", "stylegan2-ffhq-1024", "stylegan3-t-ffhq-1024",
                         "stylegan3-r-ffhq-1024"]
    for name in names:
        entry = zoo.ZOO[name]
        block = next(b for b in blocks if b.startswith(f"{name}  [not downloaded]"))
        flat = " ".join(block.split())
        assert f"backend: {entry.backend}" in flat and f"resolution: {entry.resolution}x{entry.resolution}" in flat
        assert f"licence: {' '.join(entry.licence.split())}" in flat
        assert f"training data: {' '.join(entry.training_data.split())}" in flat
        assert f"known biases: {' '.join(entry.biases.split())}" in flat
        assert "SHA-256: not published; recorded at the first download" in flat
    assert "non-commercial" in out and "white faces" in out and "CC BY-NC-SA 4.0" in out


def test_list_json_is_the_table(capsys: pytest.CaptureFixture[str], _env: Path) -> None:
    code, out, _ = run(["weights", "list", "--json"], capsys)
    assert code == 0
    cards = json.loads(out)
    assert [c["name"] for c in cards] == list(zoo.ZOO)
    by_name = {c["name"]: c for c in cards}
    sg1 = by_name["pulse-stylegan1-ffhq-1024"]
    assert [f["name"] for f in sg1["files"]] == ["synthesis.pt", "mapping.pt"]
    assert sg1["files"][0]["url"] == "https://drive.google.com/uc?id=1TCViX1YpQyRsklTVYEJwdbmK91vklCo8"
    assert sg1["files"][1]["url"] == "https://drive.google.com/uc?id=14R6iHGf5iuVx3DMNsACAl7eBr7Vdpd0k"
    assert sg1["path"] == str(_env / "pulse-stylegan1-ffhq-1024") and sg1["downloaded"] is False
    ngc = "https://api.ngc.nvidia.com/v2/models/nvidia/research/"
    for name, url in [(SG2, ngc + "stylegan2/versions/1/files/stylegan2-ffhq-1024x1024.pkl"),
                      ("stylegan3-t-ffhq-1024", ngc + "stylegan3/versions/1/files/stylegan3-t-ffhq-1024x1024.pkl"),
                      ("stylegan3-r-ffhq-1024", ngc + "stylegan3/versions/1/files/stylegan3-r-ffhq-1024x1024.pkl")]:
        (f,) = by_name[name]["files"]
        assert f["url"] == url and f["download_url"] == url
        assert f["size"] is None and f["sha256"] is None  # not published: recorded at first download


def test_info_and_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["weights", "info", "pulse-stylegan1-ffhq-1024"], capsys)
    assert code == 0
    assert "url: https://drive.google.com/uc?id=1TCViX1YpQyRsklTVYEJwdbmK91vklCo8" in out
    assert "sha256: - [not published; recorded at first download]" in out
    assert "quota" in out and "--weights DIR" in " ".join(out.split())
    code, out, err = run(["weights", "info", "stylegan9"], capsys)
    assert code == 2 and out == ""
    assert err == "error: unknown zoo checkpoint 'stylegan9'; known: " + ", ".join(zoo.ZOO) + "\n"
    code, _, err = run(["weights", "download", "stylegan9"], capsys)
    assert code == 2 and "unknown zoo checkpoint 'stylegan9'" in err


def test_info_dcgan_digiface_shows_the_default_generators_card(capsys: pytest.CaptureFixture[str]) -> None:
    """issue 15: the default generator had no card ("unknown zoo checkpoint"); it now shows
    one like the zoo's: synthetic DigiFace-1M training data, what that means, MIT."""
    from pulse_sr.generators.dcgan import find_digiface_weights

    code, out, err = run(["weights", "info", "dcgan-digiface"], capsys)
    text = " ".join(out.split())
    assert code == 0, err
    assert text.startswith("dcgan-digiface: ") and "resolution: 64x64" in text
    assert "licence: MIT" in text and "DigiFace-1M" in text and "synthetic" in text
    assert "what it means for real faces:" in text and "not a photo" in text
    assert f"installed: {find_digiface_weights()}" in text
    code, out, _ = run(["weights", "info", "dcgan-digiface", "--json"], capsys)
    card = json.loads(out)
    assert code == 0 and card["name"] == "dcgan-digiface" and card["resolution"] == 64 and card["installed"]
    assert card["licence"].startswith("MIT") and card["files"] == []
    assert "dcgan-digiface" not in zoo.ZOO  # not a download: list/download/path stay the zoo's


def test_download_path_verify_force(server: tuple[ServerState, str], capsys: pytest.CaptureFixture[str],  # noqa: F811
                                    monkeypatch: pytest.MonkeyPatch, _env: Path) -> None:
    state, base = server
    data = payload(80_000)
    state.files[SG2_FILE] = data
    monkeypatch.setenv(zoo.BASE_URL_ENV, base)
    target = _env / SG2 / SG2_FILE

    code, out, err = run(["weights", "path", SG2], capsys)
    assert code == 1 and out == "" and err == f"error: {SG2} is not downloaded; run `pulse-sr weights download {SG2}`\n"

    code, out, err = run(["weights", "download", SG2, "--no-progress"], capsys)
    assert code == 0, err
    assert out == f"{SG2}: {target}\n"
    assert "Source Code License-NC" in err and hashlib.sha256(data).hexdigest() in err
    assert target.read_bytes() == data
    manifest = json.loads((_env / SG2 / "manifest.json").read_text())
    assert manifest["files"][SG2_FILE]["hash_source"] == "first download"

    code, out, _ = run(["weights", "path", SG2], capsys)
    assert code == 0 and out == f"{target}\n"
    code, out, _ = run(["weights", "list"], capsys)
    assert f"{SG2}  [downloaded: {target}]" in out
    code, out, _ = run(["weights", "verify"], capsys)
    assert code == 0 and out == f"{SG2}: ok ({target})\n"

    damaged = bytearray(data)
    damaged[-1] ^= 1
    target.write_bytes(bytes(damaged))
    code, out, err = run(["weights", "verify", SG2], capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"error: {target}: SHA-256 {hashlib.sha256(damaged).hexdigest()} differs from the hash "
                          "recorded at its first download") and err.count("\n") == 1
    code, _, err = run(["weights", "download", SG2, "--no-progress"], capsys)  # cached but damaged: refuses
    assert code == 1 and "--force" in err
    code, out, err = run(["weights", "download", SG2, "--force", "--no-progress"], capsys)
    assert code == 0 and target.read_bytes() == data
    code, _, _ = run(["weights", "verify", SG2], capsys)
    assert code == 0


def test_download_quota_page_fails_cleanly(server: tuple[ServerState, str], capsys: pytest.CaptureFixture[str],  # noqa: F811
                                           monkeypatch: pytest.MonkeyPatch, _env: Path) -> None:
    state, base = server
    state.files["synthesis.pt"] = payload(5000)
    state.files["mapping.pt"] = payload(4000)
    state.plans["synthesis.pt"] = ["html"]
    monkeypatch.setenv(zoo.BASE_URL_ENV, base)
    code, out, err = run(["weights", "download", "pulse-stylegan1-ffhq-1024", "--no-progress"], capsys)
    assert code == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 127.0.0.1 sent a web page (HTML) instead of pulse-stylegan1-ffhq-1024/synthesis.pt")
    assert "Traceback" not in err
    folder = _env / "pulse-stylegan1-ffhq-1024"
    assert not (folder / "synthesis.pt").exists() and not (folder / "synthesis.pt.part").exists()
    assert QUOTA_PAGE not in b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())


def test_download_wrong_hash_and_unwritable_cache(server: tuple[ServerState, str],  # noqa: F811
                                                  capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    state, base = server
    good, bad = payload(3000, 1), payload(3000, 2)
    state.files["g.pkl"] = bad
    monkeypatch.setitem(zoo.ZOO, "test-ckpt", card({"g.pkl": good}))
    monkeypatch.setenv(zoo.BASE_URL_ENV, base)
    code, out, err = run(["weights", "download", "test-ckpt", "--no-progress"], capsys)
    assert code == 1 and out == ""
    assert f"error: test-ckpt/g.pkl: SHA-256 {hashlib.sha256(bad).hexdigest()} does not match" in err

    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    monkeypatch.setenv(zoo.WEIGHTS_ENV, str(blocker / "w"))
    code, out, err = run(["weights", "download", "test-ckpt", "--no-progress"], capsys)
    assert code == 1 and out == ""
    assert err.endswith(f"error: cannot create the weights folder {blocker / 'w' / 'test-ckpt'}: Not a directory; "
                        "set PULSE_SR_WEIGHTS to a writable folder\n")


def test_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["weights", "download", SG2, "--retries", "0"], capsys)
    assert code == 2 and "--retries must be >= 1" in err
    code, _, _ = run(["weights"], capsys)
    assert code == 2


def test_cli_modules_do_not_import_torch() -> None:
    code = ("import sys, pulse_sr.cli, pulse_sr.cli.weights, pulse_sr.weights; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:1])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
