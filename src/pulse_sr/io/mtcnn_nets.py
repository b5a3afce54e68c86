"""The three networks of MTCNN (Zhang et al., "Joint Face Detection and Alignment
using Multitask Cascaded Convolutional Networks", IEEE SPL 2016), as plain modules.

- :class:`PNet`: fully convolutional proposal net; a ``12 x 12`` window maps to one
  output cell (stride 2): face probability and a box offset per cell.
- :class:`RNet`: ``24 x 24`` crops -> face probability and box offset.
- :class:`ONet`: ``48 x 48`` crops -> face probability, box offset and 5 landmarks.

Inputs are ``[N, 3, H, W]`` float32 RGB normalised as ``(pixel - 127.5) / 128``
(pixels in [0, 255]). Box offsets are fractions of the window's side; landmarks are
fractions of the crop's side, all 5 x coordinates then all 5 y coordinates.

The parameter names match the state dicts shipped in the MIT-licensed
``facenet-pytorch`` wheel (``facenet_pytorch/data/{pnet,rnet,onet}.pt``), which are
read with ``torch.load(..., weights_only=True)`` by :func:`load_mtcnn_nets`; the
``facenet_pytorch`` package itself is never imported (it imports torchvision).
Those weights come from the authors' Caffe models: their fully connected layers
read the last feature map column by column (width before height), which
:func:`_flatten_wh` reproduces.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from pulse_sr.errors import WeightsError

INSTALL_LINE = "pip install --no-deps facenet-pytorch==2.6.0"
NET_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
#: the shipped files are 28 KB to 1.6 MB; anything far larger is not one of them
MAX_FILE_BYTES = 16 * 2**20


def _conv_prelu(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k), nn.PReLU(cout)]


def _flatten_wh(x: Tensor) -> Tensor:
    """``[N, C, H, W]`` -> ``[N, W * H * C]``, in the Caffe models' (W, H, C) order."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal net: ``[N, 3, H, W]`` -> (probabilities ``[N, H', W']`` in [0, 1],
    offsets ``[N, 4, H', W']``) with ``H' = ceil((H - 2) / 2) - 4``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 10, 3)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(10, 16, 3)
        self.conv3, self.prelu3 = _conv_prelu(16, 32, 3)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        prob = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return prob, self.conv4_2(x)


class RNet(nn.Module):
    """Refinement net: ``[N, 3, 24, 24]`` -> (probabilities ``[N]``, offsets ``[N, 4]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 28, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(28, 48, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _conv_prelu(48, 64, 2)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_wh(self.prelu3(self.conv3(x)))))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net: ``[N, 3, 48, 48]`` -> (probabilities ``[N]``, offsets ``[N, 4]``,
    landmarks ``[N, 10]``: x of left eye, right eye, nose, left and right mouth
    corner, then their y; fractions of the crop)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _conv_prelu(3, 32, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _conv_prelu(32, 64, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _conv_prelu(64, 64, 3)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = _conv_prelu(64, 128, 2)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_wh(self.prelu4(self.conv4(x)))))
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def weights_dir() -> Path | None:
    """The folder of the MTCNN state dicts inside the installed ``facenet_pytorch``
    package, found without importing it; ``None`` when it is not installed."""
    try:
        spec = importlib.util.find_spec("facenet_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "data"
        if all((d / f).is_file() for f in NET_FILES):
            return d
    return None


def load_mtcnn_nets(folder: Path | None = None) -> tuple[PNet, RNet, ONet]:
    """The three nets with their weights, in eval mode, gradients off.

    Raises :class:`WeightsError` (with the install line) when the files are missing,
    or when a file is not a state dict matching its net.
    """
    folder = weights_dir() if folder is None else Path(folder)
    if folder is None or not all((folder / f).is_file() for f in NET_FILES):
        raise WeightsError(f"the MTCNN face detector needs its weights: {INSTALL_LINE}",
                           install=INSTALL_LINE)
    nets = (PNet(), RNet(), ONet())
    for net, name in zip(nets, NET_FILES):
        path = folder / name
        if path.stat().st_size > MAX_FILE_BYTES:
            raise WeightsError(f"{path}: too large for an MTCNN state dict", path=str(path))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        except Exception as e:  # noqa: BLE001 - any unreadable or mismatched file
            raise WeightsError(f"{path}: not an MTCNN state dict ({type(e).__name__})",
                               path=str(path)) from None
        net.eval().requires_grad_(False)
    return nets
