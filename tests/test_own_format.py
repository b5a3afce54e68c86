"""pulse-sr's own ``.safetensors`` weights format: round trips, no pickle, errors, Gaussian fit."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

import pulse_sr
from pulse_sr import cli
from pulse_sr.errors import WeightsError
from pulse_sr.formats.own import METADATA_KEY, generator_constructor, load_own, read_metadata, save_generator
from pulse_sr.generators.base import FaceGenerator
from pulse_sr.generators.stylegan2 import StyleGAN2Generator
from pulse_sr.search import gaussian_fit as gf


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("PULSE_SR_CACHE", str(cache))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    return cache


def small_stylegan2() -> StyleGAN2Generator:
    gen = StyleGAN2Generator(z_dim=32, w_dim=32, img_resolution=32, channel_base=512, channel_max=32,
                             mapping_kwargs=dict(num_layers=2), init_generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # non-trivial values everywhere (w_avg, noise strengths, biases start at 0)
        g = torch.Generator().manual_seed(1)
        for t in gen.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.01)
    gen.name = "small-stylegan2"
    gen.weights_hash = "ab" * 32
    gen.weights_source = "/somewhere/small.pkl"
    return gen.eval().requires_grad_(False)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), k


def run(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("which", ["dcgan", "tiny", "stylegan2"])
def test_round_trip(which: str, dcgan, tmp_path: Path) -> None:
    gen: FaceGenerator = {"dcgan": lambda: dcgan, "tiny": lambda: pulse_sr.load_generator("tiny"),
                          "stylegan2": small_stylegan2}[which]()
    path = save_generator(gen, tmp_path / f"{which}.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == [f"{which}.safetensors"]
    rng_before = torch.get_rng_state()
    loaded = load_own(path)
    assert torch.equal(torch.get_rng_state(), rng_before)  # building the module draws from no global RNG
    assert type(loaded) is type(gen)
    assert_same_state(gen, loaded)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    want, got = gen.describe(), loaded.describe()
    assert got.pop("weights_source") == str(path)
    want.pop("weights_source")
    # issue 14: the hash is always the loaded file's own bytes; the original's is provenance
    assert got.pop("weights_sha256") == hashlib.sha256(path.read_bytes()).hexdigest()
    want.pop("weights_sha256")
    assert got == want
    meta = read_metadata(path)
    assert meta["source"]["sha256"] == gen.weights_hash and "/" not in meta["source"]["path"]

    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, gen.z_dim, generator=g)
    noise = [torch.randn(2, *s, generator=g) for s in gen.noise_shapes] or None
    with torch.inference_mode():
        assert torch.equal(gen.synthesis(gen.mapping(z)[:, None].expand(-1, gen.num_ws, -1), noise),
                           loaded.synthesis(loaded.mapping(z)[:, None].expand(-1, gen.num_ws, -1), noise))

    via_registry = pulse_sr.load_generator(path)
    assert type(via_registry) is type(gen) and via_registry.weights_source == str(path)
    assert_same_state(gen, via_registry)


def test_registry_weights_option(tmp_path: Path) -> None:
    path = save_generator(small_stylegan2(), tmp_path / "g.safetensors")
    assert pulse_sr.load_generator(weights=path).backend == "stylegan2"
    assert pulse_sr.load_generator("stylegan2", weights=path).backend == "stylegan2"
    with pytest.raises(WeightsError, match="holds a stylegan2 generator, not stylegan1"):
        pulse_sr.load_generator("stylegan1", weights=path)


def test_loading_reads_no_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = pulse_sr.load_generator("tiny")
    fit = {"mean": torch.zeros(32), "std": torch.ones(32), "samples": 10, "seed": 0}
    path = save_generator(gen, tmp_path / "tiny.safetensors", gaussian_fit=fit)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading")

    class NoUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_own(path)
    assert_same_state(gen, loaded)


# -- errors ----------------------------------------------------------------------------------
def _rewrite(path: Path, dest: Path, *, meta_text: str | None = None, drop: str | None = None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != drop}
        meta = dict(f.metadata())
    if meta_text is not None:
        meta[METADATA_KEY] = meta_text
    save_file(tensors, str(dest), metadata=meta)
    return dest


def test_errors(tmp_path: Path) -> None:
    good = save_generator(pulse_sr.load_generator("tiny"), tmp_path / "good.safetensors")
    meta = read_metadata(good)

    def error(path: Path) -> str:
        with pytest.raises(WeightsError) as info:
            load_own(path)
        msg = str(info.value)
        assert str(path) in msg and "\n" not in msg
        return msg

    assert "no such file" in error(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:100])
    assert "not a safetensors file" in error(corrupt)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    assert "not a safetensors file" in error(garbage)
    assert "not JSON" in error(_rewrite(good, tmp_path / "json.safetensors", meta_text="{nope"))
    assert "expected a JSON object" in error(_rewrite(good, tmp_path / "list.safetensors", meta_text="[1]"))
    assert "unknown backend 'stylegan9'" in error(
        _rewrite(good, tmp_path / "backend.safetensors", meta_text=json.dumps({**meta, "backend": "stylegan9"})))
    assert "format version 2" in error(
        _rewrite(good, tmp_path / "version.safetensors", meta_text=json.dumps({**meta, "format_version": 2})))
    bad_ctor = {**meta, "constructor": {**meta["constructor"], "bogus": 1}}
    assert "cannot build" in error(_rewrite(good, tmp_path / "ctor.safetensors", meta_text=json.dumps(bad_ctor)))
    msg = error(_rewrite(good, tmp_path / "drop.safetensors", drop="synthesis_net.torgb.weight"))
    assert "missing 1 key (synthesis_net.torgb.weight)" in msg
    bad_fit = {**meta, "gaussian_fit": {"samples": 10, "seed": 0, "mean": [0.0], "std": [1.0]}}
    assert "gaussian_fit" in error(_rewrite(good, tmp_path / "fit.safetensors", meta_text=json.dumps(bad_fit)))

    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    assert "without pulse-sr metadata" in error(plain)


def test_cli_convert_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "t.safetensors"
    code, out, err = run(["convert", "tiny", "-o", dst], capsys)
    assert code == 0 and f"wrote {dst} (backend stylegan1, " in out and "tensors" in out
    before = dst.read_bytes()
    code, out, err = run(["convert", "tiny", "-o", dst], capsys)
    assert code == 2 and "exists; use --overwrite" in err and len(err.strip().splitlines()) == 1
    assert dst.read_bytes() == before
    code, out, err = run(["convert", "tiny", "-o", dst, "--overwrite"], capsys)
    assert code == 0
    code, out, err = run(["convert", "tiny", "-o", tmp_path / "t.pt"], capsys)
    assert code == 2 and "must end with .safetensors" in err and not (tmp_path / "t.pt").exists()
    code, out, err = run(["convert", tmp_path / "nothing", "-o", tmp_path / "n.safetensors"], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_convert_stylegan1_weights(weights_dir: Path, gen, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "sg1.safetensors"
    code, out, err = run(["convert", weights_dir, "-o", dst, "--generator", "stylegan1"], capsys)
    assert code == 0, err
    assert f"backend stylegan1, {len(gen.state_dict())} tensors" in out
    loaded = pulse_sr.load_generator(dst)
    assert_same_state(gen, loaded)
    assert loaded.weights_hash == hashlib.sha256(dst.read_bytes()).hexdigest() and loaded.name == "stylegan1"
    assert read_metadata(dst)["source"] == {"path": weights_dir.name, "sha256": gen.weights_hash}


def test_gaussian_fit_carried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "tiny.safetensors"
    code, out, err = run(["convert", "tiny", "-o", dst, "--with-gaussian-fit"], capsys)
    assert code == 0 and "Gaussian fit" in out, err
    tiny = pulse_sr.load_generator("tiny")
    want_mean, want_std = gf.cached_gaussian_fit(tiny)  # from the first cache (computed by convert)

    fresh = tmp_path / "fresh-cache"
    monkeypatch.setenv("PULSE_SR_CACHE", str(fresh))

    def no_fit(*args, **kwargs):
        raise AssertionError("fit_gaussian called")

    monkeypatch.setattr(gf, "fit_gaussian", no_fit)
    loaded = load_own(dst)
    own_hash = hashlib.sha256(dst.read_bytes()).hexdigest()  # the stored fit is cached under the file's hash
    assert loaded.weights_hash == own_hash != tiny.weights_hash
    cache = gf.gaussian_fit_cache_path(own_hash, gf.DEFAULT_SAMPLES, gf.DEFAULT_SEED)
    assert cache.parent.parent == fresh and cache.is_file()
    payload = torch.load(cache, weights_only=True)
    assert set(payload) == {"mean", "std", "samples", "seed", "weights_hash"}
    assert payload["weights_hash"] == own_hash and payload["samples"] == gf.DEFAULT_SAMPLES
    mean, std = gf.cached_gaussian_fit(loaded)
    assert torch.equal(mean, want_mean) and torch.equal(std, want_std)

    # an existing cache entry is left alone
    sentinel = {**payload, "mean": payload["mean"] + 1}
    torch.save(sentinel, cache)
    load_own(dst)
    assert torch.equal(torch.load(cache, weights_only=True)["mean"], sentinel["mean"])

    # backends without a mapping network: nothing stored, said so
    dc = tmp_path / "dcgan.safetensors"
    code, out, err = run(["convert", "dcgan-digiface", "-o", dc, "--with-gaussian-fit"], capsys)
    assert code == 0 and "no Gaussian fit (dcgan has no mapping network)" in out, err
    assert read_metadata(dc)["gaussian_fit"] is None


# -- constructor arguments recorded by the generators (issue 12) ------------------------------
OLD_FILES = Path(__file__).parent / "data" / "own_v1"


@pytest.mark.parametrize("name", ["stylegan1-8px", "stylegan2-8px"])
def test_files_written_by_the_isinstance_ladder_still_load(name: str) -> None:
    """Files written before generators recorded their constructor arguments (commit 0978df6)
    load and compute the function they were written from."""
    path = OLD_FILES / f"{name}.safetensors"
    expected = torch.load(OLD_FILES / f"{name}.expected.pt", weights_only=True)
    gen = load_own(path)
    assert gen.weights_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    with torch.inference_mode():
        ws = gen.mapping(expected["z"])[:, None].expand(-1, gen.num_ws, -1)
        out = gen.synthesis(ws, expected["noise"] or None)
    # Same code path and operation order as when the file was written; another CPU's kernels may
    # round differently: a few hundred float32 operations per output value (8 mapping/synthesis
    # layers, 3x3 convs over <= 8 channels), each within 2**-24 relative, conditioned near 1:
    # 1e-5 of the output's scale bounds that sum with a wide margin.
    scale = expected["out"].abs().max()
    assert (out - expected["out"]).abs().max() <= 1e-5 * scale
    # saving the loaded generator again writes the generator's own record of its arguments
    again = generator_constructor(gen)[1]
    assert type(gen)(**again).state_dict().keys() == gen.state_dict().keys()


@pytest.mark.parametrize("which", ["dcgan", "tiny", "stylegan2"])
def test_every_backend_records_json_safe_constructor_args(which: str, dcgan) -> None:
    gen: FaceGenerator = {"dcgan": lambda: dcgan, "tiny": lambda: pulse_sr.load_generator("tiny"),
                          "stylegan2": small_stylegan2}[which]()
    args = gen.constructor_args()
    assert json.loads(json.dumps(args)) == args
    rebuilt = type(gen)(**args)
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in gen.state_dict().items()}
    args["z_dim"] = -1  # a copy: the generator's record is unchanged
    assert gen.constructor_args()["z_dim"] == gen.z_dim


def test_stylegan2_records_its_current_modconv_form() -> None:
    gen = small_stylegan2()
    gen.set_fused_modconv(False)
    assert gen.constructor_args()["fused_modconv"] is False


def test_framing_is_an_attribute_of_the_generator(dcgan) -> None:
    from pulse_sr.io.align import DIGIFACE_FRAMING, FFHQ_FRAMING, framing_for

    tiny = pulse_sr.load_generator("tiny")
    assert dcgan.framing == DIGIFACE_FRAMING and DIGIFACE_FRAMING.side == 1.28
    assert tiny.framing == FFHQ_FRAMING and small_stylegan2().framing == FFHQ_FRAMING
    assert framing_for(dcgan) is dcgan.framing and framing_for(tiny) is FFHQ_FRAMING
    # the deprecated lookup by name still answers as before for callers holding only a name
    assert framing_for("dcgan-digiface") == DIGIFACE_FRAMING and framing_for("stylegan2") == FFHQ_FRAMING
    # per backend, not per name: a DCGAN renamed (or loaded from the own format) keeps its framing
    dcgan_like = type(dcgan)()
    dcgan_like.name = "renamed"
    assert framing_for(dcgan_like) == DIGIFACE_FRAMING
