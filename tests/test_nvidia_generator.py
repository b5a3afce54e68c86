"""An NVIDIA StyleGAN2 .pkl, laid out as the real files are, through load_generator and the CLI."""
from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import pulse_sr
from pulse_sr import cli
from pulse_sr.errors import WeightsError
from pulse_sr.generators.base import file_sha256
from pulse_sr.generators.stylegan2 import StyleGAN2Generator
from test_nvidia_pickle import fake_nvidia_modules

KWARGS = dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3, channel_base=512,
              channel_max=32, num_fp16_res=0, conv_clamp=None, architecture="skip",
              resample_filter=[1, 3, 3, 1], use_noise=True, activation="lrelu",
              mapping_kwargs=dict(num_layers=2, embed_features=None, layer_features=None,
                                  activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995))


class _Record:
    """Pickles like a module of NVIDIA's persistence: (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, reconstruct, module: torch.nn.Module, init_kwargs: dict | None) -> None:
        self.reconstruct = reconstruct
        self.state = {
            "training": False,
            "_parameters": OrderedDict(module._parameters),
            "_buffers": OrderedDict(module._buffers),
            "_non_persistent_buffers_set": set(module._non_persistent_buffers_set),
            "_modules": OrderedDict((k, _Record(reconstruct, m, None)) for k, m in module._modules.items()),
            "_init_args": (),
            "_init_kwargs": init_kwargs or {},
        }

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "module_src": "raise SystemExit('never run')\n",
                "class_name": "Generator", "state": self.state}
        return (self.reconstruct, (meta,))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StyleGAN2Generator]:
    gen = StyleGAN2Generator(**{k: v for k, v in KWARGS.items() if k != "c_dim"},
                             init_generator=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    folder = tmp_path_factory.mktemp("nvidia")
    path = folder / "network-snapshot-000000.pkl"
    with fake_nvidia_modules(folder / "marker") as (persistence, easydict):
        record = _Record(persistence._reconstruct_persistent_obj, gen, easydict(KWARGS))
        with open(path, "wb") as f:
            pickle.dump({"G": record, "D": None, "G_ema": record, "augment_pipe": None,
                         "training_set_kwargs": easydict(resolution=32)}, f, protocol=4)
    assert not (folder / "marker").exists()
    return path, gen


def test_load_generator_reads_the_pickle(snapshot) -> None:
    path, original = snapshot
    for loaded in (pulse_sr.load_generator(str(path)), pulse_sr.load_generator("stylegan2", weights=path),
                   pulse_sr.load_generator(weights=path)):
        assert loaded.backend == "stylegan2" and loaded.resolution == 32 and loaded.num_ws == 8
        assert loaded.weights_hash == file_sha256(path)
        assert list(loaded.state_dict()) == list(original.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), original.state_dict().values()))
        z = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
        noise = [torch.randn(1, *s) for s in loaded.noise_shapes]
        with torch.no_grad():
            ws = loaded.mapping(z)[:, None].expand(-1, loaded.num_ws, -1)
            assert torch.equal(loaded.synthesis(ws, noise), original.synthesis(ws, noise))


def test_stylegan2_needs_weights_and_checks_what_the_file_holds(tmp_path: Path, snapshot) -> None:
    with pytest.raises(WeightsError, match="--weights FILE.pkl"):
        pulse_sr.load_generator("stylegan2")
    with pytest.raises(WeightsError, match="holds a stylegan2 generator, not stylegan1"):
        pulse_sr.load_generator("stylegan1", weights=snapshot[0])
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"G": 1}))
    with pytest.raises(WeightsError, match="no G_ema"):
        pulse_sr.load_generator(str(bad))


def test_cli_search_with_pickle(tmp_path: Path, snapshot, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_SR_CACHE", str(tmp_path / "cache"))
    path, _ = snapshot
    from PIL import Image
    import numpy as np

    Image.fromarray(np.full((8, 8, 3), 120, dtype=np.uint8)).save(tmp_path / "face.png")
    code = cli.main(["run", str(tmp_path / "face.png"), "-o", str(tmp_path / "out"), "--weights", str(path),
                     "--n", "2", "--steps", "3", "--quiet"])
    _, err = capsys.readouterr()
    assert code in (0, 3), err
    report = json.loads((tmp_path / "out" / "face" / "report.json").read_text())
    assert report["generator"]["backend"] == "stylegan2" and report["generator"]["num_noise"] == 7  # b4: 1, b8-b32: 2 each
    assert len(report["candidates"]) == 2
