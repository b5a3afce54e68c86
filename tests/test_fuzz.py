"""Property tests (Hypothesis): random bytes, odd-but-valid images and random metadata thrown at
the weights loaders and the CLI's input reader. Two outcomes only: a clean result, or a one-line
error of the documented kind (exit 1 for a bad input, 2 for bad weights); never a traceback, an
unexpected exception or a half-written file. (The web API's twin lives in test_web_hostile.py.)
"""
from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from pulse_sr import cli
from pulse_sr.errors import PulseError

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- weights loaders ------------------------------------------------------------------------
SUFFIXES = (".pkl", ".safetensors", ".pt")


def _load(path: Path) -> object:
    from pulse_sr.generators.registry import load_generator

    try:
        return load_generator(weights=str(path))  # as `--weights FILE` alone: backend from the file
    except PulseError as e:  # the documented outcome for a bad file: one line
        assert str(e) and "\n" not in str(e).strip()
    except OSError as e:  # unreadable: the CLI renders it as one line too
        assert "Traceback" not in str(e)
    return None


@pytest.fixture(scope="module")
def own_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A valid pulse-sr .safetensors file of the tiny generator (its bytes)."""
    from pulse_sr.formats.own import save_generator
    from pulse_sr.generators.tiny import make_tiny_generator

    path = tmp_path_factory.mktemp("own") / "tiny.safetensors"
    save_generator(make_tiny_generator(), path)
    return path.read_bytes()


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_as_weights(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"w{suffix}"
    path.write_bytes(data)
    _load(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


def test_untouched_own_file_loads(tmp_path: Path, own_file: bytes) -> None:
    """The mutations below start from a file that loads (so a refusal is the mutation's doing)."""
    path = tmp_path / "ok.safetensors"
    path.write_bytes(own_file)
    assert _load(path) is not None


@FUZZ
@given(key=st.sampled_from(["constructor", "backend", "name", "resolution", "source", "gaussian_fit", "format"]),
       value=json_values)
def test_own_format_with_random_metadata(tmp_path: Path, own_file: bytes, key: str, value: object) -> None:
    """A valid file whose JSON metadata has one random entry: loads, or one WeightsError line."""
    n = struct.unpack("<Q", own_file[:8])[0]
    header = json.loads(own_file[8:8 + n])
    meta_key = next(k for k, v in header.get("__metadata__", {}).items() if v.startswith("{"))
    meta = json.loads(header["__metadata__"][meta_key])
    target = meta["constructor"] if key in ("resolution",) and isinstance(meta.get("constructor"), dict) else meta
    target[key] = value
    header["__metadata__"][meta_key] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + own_file[8 + n:])
    _load(path)


plain_data = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=40,
)


@FUZZ
@given(obj=plain_data, protocol=st.integers(2, 5))
def test_random_plain_pickles_as_nvidia_checkpoints(tmp_path: Path, obj: object, protocol: int) -> None:
    path = tmp_path / "g.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    _load(path)


# -- the CLI's input reader -------------------------------------------------------------------
MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr")
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")


@st.composite
def odd_images(draw: st.DrawFn) -> bytes:
    """Valid images of odd modes, sizes and formats (what Pillow will write)."""
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(FORMATS))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "F" and draw(st.booleans()):
        arr = rng.normal(0.5, 2.0, (h, w)).astype(np.float32)
        arr.flat[draw(st.integers(0, h * w - 1))] = draw(st.sampled_from([np.inf, -np.inf, np.nan, 1e30]))
        im = Image.fromarray(arr, mode="F")
    else:
        try:
            im = base.convert(mode)
        except (ValueError, OSError):
            im = base
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        buf = io.BytesIO()
        base.save(buf, format="PNG")
    data = buf.getvalue()
    if draw(st.booleans()):  # sometimes truncate or corrupt a byte
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] if draw(st.booleans()) else data[:cut] + bytes([draw(st.integers(0, 255))]) + data[cut + 1:]
    return data


def _run_cli(tmp_path: Path, data: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    out = tmp_path / "out"
    src.mkdir(exist_ok=True)
    path = src / "face.png"
    path.write_bytes(data)
    code = cli.main(["run", str(path), "-o", str(out), "--generator", "tiny", "--steps", "1", "--n", "1",
                     "--quiet", "--overwrite"])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code in (0, 1, 3), text  # done / this input failed / done without a candidate within eps
    assert "Traceback" not in text and "unexpected" not in text, text
    if code == 1:
        errors = [ln for ln in captured.err.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and "face.png" in errors[0], text
    partial = [p for p in out.rglob("*") if ".partial-" in p.name or p.name.endswith(".tmp")] if out.exists() else []
    assert partial == []
    result = out / "face"
    if result.exists():
        assert (result / "report.json").is_file()  # a result folder is complete or absent
    if code != 1:
        assert (result / "report.json").is_file()


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=odd_images() | st.binary(max_size=512))
def test_cli_input_reader_on_odd_and_random_files(tmp_path_factory: pytest.TempPathFactory,
                                                 capsys: pytest.CaptureFixture[str], data: bytes) -> None:
    _run_cli(tmp_path_factory.mktemp("fuzz"), data, capsys)


def test_fuzz_helpers_catch_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The property above can fail: an input reader that raises an unexpected error is caught."""
    import pulse_sr.io.images as images

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(images, "load_image", broken)
    monkeypatch.setattr(images, "load_rgb8", broken)
    monkeypatch.setattr(images, "load_input", broken)  # what run reads inputs with
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    with pytest.raises(AssertionError):
        _run_cli(tmp_path, buf.getvalue(), capsys)
    assert torch.tensor(1.0).item() == 1.0
