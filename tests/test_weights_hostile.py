"""Hostile weights files (issue 14): bounded work and memory, validated before allocation,
usable dtypes and finite values only, hashes from the bytes."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from pulse_sr.errors import WeightsError
from pulse_sr.formats import nvidia_pickle
from pulse_sr.formats.nvidia_pickle import load_nvidia_pickle, network_kwargs


def _self_referencing(levels: int) -> list:
    """Each level holds the next one twice: ``2**levels`` leaves, a few bytes per level pickled."""
    node: list = []
    for _ in range(levels):
        node = [node, node]
    return node


def _record_pickle(init_kwargs: dict) -> bytes:
    """A G_ema network record pickle, assembled by opcode (no NVIDIA class needed to write it)."""
    meta = {"type": "class", "version": 4, "module_src": "", "class_name": "Generator",
            "state": {"_init_kwargs": init_kwargs, "_parameters": {}, "_buffers": {}, "_modules": {}}}
    inner = pickle.dumps(meta, protocol=2)[2:-1]  # without PROTO and STOP; memoised sharing kept
    key = b"G_ema"
    return (b"\x80\x02}" + b"X" + len(key).to_bytes(4, "little") + key
            + b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n" + inner + b"\x85R" + b"s.")


def test_pickle_bomb_self_referencing_kwargs_is_refused_by_counting(tmp_path: Path) -> None:
    # Regression: 40 levels referencing the next twice passed the allow-list, and
    # network_kwargs() copied every branch (2**40 nodes). The copy is now counted.
    path = tmp_path / "bomb.pkl"
    path.write_bytes(_record_pickle({"z_dim": _self_referencing(40)}))
    assert path.stat().st_size < 1000
    record = load_nvidia_pickle(path)["G_ema"]  # loading itself is linear (memoised objects)
    budget = nvidia_pickle._CopyBudget(max_nodes=10_000)
    with pytest.raises(WeightsError, match="expand to more than 10,000") as info:
        network_kwargs(record, budget)
    # the work done stops one node past the budget, whatever the data claims to hold
    assert budget.nodes == 10_001 and info.value.data["nodes"] == 10_001
    assert "\n" not in str(info.value)


def test_pickle_bomb_default_budget_through_the_loader(tmp_path: Path) -> None:
    from pulse_sr.generators.registry import load_generator

    path = tmp_path / "bomb.pkl"
    path.write_bytes(_record_pickle({"z_dim": _self_referencing(40)}))
    with pytest.raises(WeightsError) as info:
        load_generator("stylegan2", weights=path)
    assert str(path) in str(info.value) and "1,000,000" in str(info.value)
    assert info.value.data["nodes"] == nvidia_pickle.MAX_PLAIN_NODES + 1


def test_pickle_bomb_small_enough_to_copy_is_still_refused(tmp_path: Path) -> None:
    # 2**21 leaves (4.2M nodes): today's code copies them all and returns; the budget refuses
    path = tmp_path / "bomb21.pkl"
    path.write_bytes(_record_pickle({"z_dim": _self_referencing(21)}))
    record = load_nvidia_pickle(path)["G_ema"]
    with pytest.raises(WeightsError, match="expand to more than"):
        network_kwargs(record)


def test_deeply_nested_kwargs_are_refused(tmp_path: Path) -> None:
    node: list = []
    for _ in range(300):
        node = [node]
    path = tmp_path / "deep.pkl"
    path.write_bytes(_record_pickle({"mapping_kwargs": node}))
    record = load_nvidia_pickle(path)["G_ema"]
    with pytest.raises(WeightsError, match="deeper than 200 levels"):
        network_kwargs(record)


# -- own format: metadata validated before allocation, dtypes, values, hash ---------------------
def _own_file(path: Path, constructor: dict, tensors: dict, backend: str = "stylegan2",
              source_sha: str = "") -> Path:
    """A pulse-sr .safetensors file written directly (whatever its metadata claims)."""
    import json

    from safetensors.torch import save_file

    meta = {"format_version": 1, "backend": backend, "constructor": constructor, "name": "hostile",
            "source": {"path": "x.pkl", "sha256": source_sha}, "gaussian_fit": None, "pulse_sr_version": "0"}
    save_file(tensors, str(path), metadata={"pulse_sr": json.dumps(meta)})
    return path


SMALL_SG2 = {"z_dim": 8, "w_dim": 8, "img_resolution": 8, "channel_base": 64, "channel_max": 8,
             "mapping_kwargs": {"num_layers": 2}}


def _small_state() -> dict:
    import torch

    from pulse_sr.generators.stylegan2 import StyleGAN2Generator

    gen = StyleGAN2Generator(**SMALL_SG2, init_generator=torch.Generator().manual_seed(0))
    return {k: v.clone() for k, v in gen.state_dict().items()}


def _guard_real_builds(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail if a real (not ``meta``) StyleGAN2 module is initialised; returns the list of real builds."""
    from pulse_sr.generators.stylegan2 import StyleGAN2Generator

    real: list = []
    original = StyleGAN2Generator.reset_parameters

    def guarded(self, generator=None):
        if not next(self.parameters()).is_meta:
            real.append(sum(p.numel() for p in self.parameters()))
        return original(self, generator)

    monkeypatch.setattr(StyleGAN2Generator, "reset_parameters", guarded)
    return real


def test_metadata_declaring_a_big_network_is_refused_before_allocating(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: the loader built the declared network (NVIDIA's 1024 StyleGAN2: 30M parameters
    # here; 1.4 to 5.4 GB in the review) and only then compared shapes with the file's 8-px tensors.
    from pulse_sr.formats.own import load_own

    path = _own_file(tmp_path / "big.safetensors", {"z_dim": 512, "w_dim": 512, "img_resolution": 1024},
                     _small_state())
    real = _guard_real_builds(monkeypatch)
    with pytest.raises(WeightsError, match="do not match") as info:
        load_own(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert real == []  # shapes were compared on the meta device: nothing allocated


def test_metadata_declaring_a_huge_network_is_refused_by_size(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from pulse_sr.formats.own import load_own

    ctor = {"z_dim": 4096, "w_dim": 4096, "img_resolution": 4096, "channel_base": 1 << 22, "channel_max": 4096}
    path = _own_file(tmp_path / "huge.safetensors", ctor, _small_state())
    real = _guard_real_builds(monkeypatch)
    with pytest.raises(WeightsError, match=r"GiB \(at most 2 GiB\)") as info:
        load_own(path)
    assert info.value.data["bytes"] > 2**31 and real == []


@pytest.mark.parametrize("field, value, fragment", [
    ("z_dim", -5, "z_dim = -5"),
    ("z_dim", 10**12, "z_dim = 1000000000000"),
    ("img_resolution", 48, "power of two"),
    ("channel_max", 1.5, "channel_max"),
    ("conv_clamp", "x", "conv_clamp"),
    ("mapping_kwargs", {"num_layers": 100000}, "mapping_kwargs.num_layers"),
    ("mapping_kwargs", {"lr_multiplier": [[[[1]]]]}, "mapping_kwargs.lr_multiplier"),
    ("resample_filter", [1.0] * 1000, "resample_filter"),
])
def test_bad_constructor_arguments_are_one_line_weights_errors(tmp_path: Path, field: str, value, fragment: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: giant, negative or nested arguments ended in RuntimeError/RecursionError (exit 1)
    from pulse_sr.formats.own import load_own

    path = _own_file(tmp_path / "bad.safetensors", {**SMALL_SG2, field: value}, _small_state())
    real = _guard_real_builds(monkeypatch)
    with pytest.raises(WeightsError) as info:
        load_own(path)
    assert fragment in str(info.value) and "\n" not in str(info.value) and real == []


def test_deeply_nested_metadata_is_a_weights_error_with_exit_2(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from pulse_sr import cli

    import json

    from safetensors.torch import save_file

    # 100,000 nested lists, written as text (json.dumps would itself recurse that deep)
    meta = json.dumps({"format_version": 1, "backend": "stylegan2", "constructor": {**SMALL_SG2, "deep": 0},
                       "name": "x", "source": {"path": "", "sha256": ""}, "gaussian_fit": None})
    meta = meta.replace('"deep": 0', '"deep": ' + "[" * 100_000 + "]" * 100_000)
    path = tmp_path / "deep.safetensors"
    save_file(_small_state(), str(path), metadata={"pulse_sr": meta})
    code = cli.main(["convert", str(path), "-o", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "nested too deeply" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("bad", ["nan", "inf", "int8", "bool", "float8"])
def test_unusable_or_non_finite_tensors_are_refused(tmp_path: Path, bad: str) -> None:
    # Regression: int8, bool, NaN and inf weights were accepted and garbage faces were written
    import torch

    from pulse_sr.formats.own import load_own

    state = _small_state()
    key = "synthesis.b8.conv1.weight"
    t = state[key]
    state[key] = {"nan": t.clone().index_fill_(0, torch.tensor([1]), float("nan")),
                  "inf": t.clone().index_fill_(0, torch.tensor([0]), float("inf")),
                  "int8": t.to(torch.int8), "bool": t > 0,
                  "float8": t.to(torch.float8_e4m3fn)}[bad]
    path = _own_file(tmp_path / f"{bad}.safetensors", SMALL_SG2, state)
    with pytest.raises(WeightsError) as info:
        load_own(path)
    msg = str(info.value)
    assert key in msg and str(path) in msg and "\n" not in msg
    assert ("NaN or infinite" in msg) == (bad in ("nan", "inf"))


def test_half_precision_weights_still_load(tmp_path: Path) -> None:
    import torch

    from pulse_sr.formats.own import load_own

    state = {k: v.to(torch.bfloat16) for k, v in _small_state().items()}
    gen = load_own(_own_file(tmp_path / "bf16.safetensors", SMALL_SG2, state))
    assert all(v.dtype == torch.float32 for v in gen.state_dict().values())
    assert torch.equal(gen.state_dict()["synthesis.b8.conv1.weight"], state["synthesis.b8.conv1.weight"].float())


def test_nvidia_state_dict_with_nan_or_int_weights_is_refused() -> None:
    import torch

    from pulse_sr.generators.stylegan2 import load_stylegan2_state_dict

    state = _small_state()
    key = "mapping.fc0.weight"
    for bad, fragment in ((state[key].clone().fill_(float("nan")), "NaN"), (state[key].to(torch.int8), "int8")):
        with pytest.raises(WeightsError, match=fragment) as info:
            load_stylegan2_state_dict({**state, key: bad}, SMALL_SG2)
        assert key in str(info.value)


def test_dcgan_and_stylegan1_files_with_inf_are_refused(tmp_path: Path) -> None:
    import torch

    from pulse_sr.generators.dcgan import DCGANGenerator, load_dcgan_digiface
    from pulse_sr.generators.stylegan1 import StyleGAN1Generator, load_stylegan1

    state = DCGANGenerator(z_dim=100, base_channels=64).state_dict()
    state["main.3.weight"] = state["main.3.weight"].clone().fill_(float("inf"))
    torch.save({"netG_state_dict": state}, tmp_path / "weights.tar")
    with pytest.raises(WeightsError, match=r"main\.3\.weight: holds NaN or infinite"):
        load_dcgan_digiface(tmp_path / "weights.tar")

    g = StyleGAN1Generator(resolution=8)  # PULSE's files hold no arguments: 8 px inferred, the rest default
    folder = tmp_path / "sg1"
    folder.mkdir()
    torch.save(g.synthesis_net.state_dict(), folder / "synthesis.pt")
    mapping = {k: v.to(torch.bool) if k.endswith("weight") else v for k, v in g.mapping_net.state_dict().items()}
    torch.save(mapping, folder / "mapping.pt")
    with pytest.raises(WeightsError, match=r"mapping\.pt: tensor .*weight: dtype bool cannot be used"):
        load_stylegan1(folder)


def test_metadata_cannot_set_the_weights_hash(tmp_path: Path) -> None:
    # Regression: own.py took weights_hash (report.json's weights_sha256) from the file's metadata
    import hashlib

    from pulse_sr.formats.own import load_own

    path = _own_file(tmp_path / "liar.safetensors", SMALL_SG2, _small_state(), source_sha="00" * 32)
    gen = load_own(path)
    truth = hashlib.sha256(path.read_bytes()).hexdigest()
    assert gen.weights_hash == truth and gen.describe()["weights_sha256"] == truth


def test_nvidia_release_arguments_pass_the_checks() -> None:
    """The init kwargs NVIDIA's released StyleGAN2-ADA and StyleGAN3 pickles carry are accepted
    (numpy scalars, a string fused_modconv_default, None features)."""
    import numpy as np

    from pulse_sr.generators.limits import check_arguments

    check_arguments({"z_dim": 512, "w_dim": 512, "img_resolution": 1024, "img_channels": 3, "c_dim": 0,
                     "mapping_kwargs": {"num_layers": 8, "embed_features": None, "layer_features": None,
                                        "activation": "lrelu", "lr_multiplier": 0.01, "w_avg_beta": 0.995},
                     "synthesis_kwargs": {"channel_base": 32768, "channel_max": 512, "num_fp16_res": 4,
                                          "conv_clamp": 256, "architecture": "skip", "resample_filter": [1, 3, 3, 1],
                                          "use_noise": True, "activation": "lrelu", "fp16_channels_last": False,
                                          "fused_modconv_default": "inference_only"}})
    check_arguments({"z_dim": 512, "w_dim": 512, "img_resolution": np.int64(1024), "img_channels": 3,
                     "channel_base": 65536, "channel_max": 1024, "magnitude_ema_beta": np.float64(0.5 ** (32 / 20000)),
                     "conv_kernel": 1, "use_radial_filters": True, "conv_clamp": 256, "num_fp16_res": 4,
                     "mapping_kwargs": {"num_layers": 2, "freeze_layers": 0}})
