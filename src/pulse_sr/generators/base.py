"""One interface for every face generator pulse-sr can search.

Names follow NVIDIA's StyleGAN code so StyleGAN users feel at home:

- ``z_dim``: size of the prior latent ``z`` (``N(0, I)``).
- ``w_dim``: size of one intermediate latent ``w`` (the vectors the search moves).
- ``num_ws``: how many ``w`` vectors synthesis takes (18 for a 1024 StyleGAN1,
  1 for a plain DCGAN).
- ``resolution``: output side length in pixels.
- ``noise_shapes``: per noise input, its shape ``(1, H, W)`` without the batch
  dimension; empty when the network takes no noise.
- ``has_mapping``: ``False`` when ``w`` *is* ``z`` (no mapping network); the
  search then moves ``z`` on its sphere directly and fits no Gaussian.
- ``mapping(z)``: ``[N, z_dim] -> [N, w_dim]``.
- ``synthesis(ws, noise)``: ``ws [N, num_ws, w_dim]`` and a list of noise
  tensors ``[N, 1, H, W]`` (or ``None`` for all zeros) ``-> [N, 3, R, R]``
  in about ``[-1, 1]`` (not clamped).

Noise is always explicit: no generator keeps hidden random buffers.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from pulse_sr.io.align import FFHQ_FRAMING, Framing


class FaceGenerator(nn.Module):
    """Base class; subclasses set the attributes in ``__init__`` and implement
    ``mapping`` (when ``has_mapping``) and ``synthesis``."""

    #: short backend name, e.g. ``"stylegan1"``
    backend: str = "generator"
    z_dim: int
    w_dim: int
    num_ws: int
    resolution: int
    noise_shapes: list[tuple[int, int, int]]
    has_mapping: bool = True
    #: SHA-256 (hex) of the weight files this generator was loaded from, or a
    #: descriptive tag (``"random-init"``) for untrained test generators.
    weights_hash: str = ""
    #: where the weights came from (path, package), for reports.
    weights_source: str = ""
    #: human name of the weights (``"dcgan-digiface"``, ``"stylegan1"`` ...)
    name: str = ""
    #: where the FFHQ face quad lies in this generator's output (face alignment crops to it);
    #: FFHQ's for StyleGAN backends, set per backend (class) or per weights (instance)
    framing: Framing = FFHQ_FRAMING

    def record_constructor(self, **kwargs: Any) -> None:
        """Remember the keyword arguments that rebuild this module (called by ``__init__``);
        values are made JSON-safe here (numpy scalars -> numbers, tuples -> lists)."""
        self._constructor_args = json.loads(json.dumps(_json_safe(kwargs), allow_nan=False))

    def constructor_args(self) -> dict[str, Any]:
        """The keyword arguments that rebuild a module of this architecture (a JSON-safe copy);
        pulse-sr's own weights format stores them."""
        args = self.__dict__.get("_constructor_args")
        if args is None:
            raise NotImplementedError(f"{type(self).__name__} does not record its constructor arguments")
        return json.loads(json.dumps(args))

    def mapping(self, z: Tensor) -> Tensor:
        """``z [N, z_dim] -> w [N, w_dim]``."""
        if not self.has_mapping:
            return z
        raise NotImplementedError

    def synthesis(self, ws: Tensor, noise: Sequence[Tensor] | None = None) -> Tensor:
        """``ws [N, num_ws, w_dim]``, noise list of ``[N, 1, H, W]`` -> ``[N, 3, R, R]`` in [-1, 1]."""
        raise NotImplementedError

    def forward(self, z: Tensor, noise: Sequence[Tensor] | None = None) -> Tensor:
        """Sample images from prior latents ``z [N, z_dim]`` -> ``[N, 3, R, R]``."""
        w = self.mapping(z)
        ws = w[:, None, :].expand(-1, self.num_ws, -1)
        return self.synthesis(ws, noise)

    # -- helpers shared by all backends ---------------------------------------------------
    def zero_noise(self, batch: int, device: torch.device | str | None = None) -> list[Tensor]:
        """All-zero noise inputs for a batch: list of ``[batch, 1, H, W]``."""
        dev = device if device is not None else self._device()
        return [torch.zeros((batch, *shape), device=dev) for shape in self.noise_shapes]

    def check_ws(self, ws: Tensor) -> None:
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(
                f"{self.backend}: ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}"
            )

    def check_noise(self, noise: Sequence[Tensor] | None, batch: int) -> list[Tensor] | None:
        if noise is None:
            return None
        noise = list(noise)
        if len(noise) != len(self.noise_shapes):
            raise ValueError(
                f"{self.backend}: expected {len(self.noise_shapes)} noise tensors, got {len(noise)}"
            )
        for i, (n, shape) in enumerate(zip(noise, self.noise_shapes)):
            if tuple(n.shape[1:]) != tuple(shape) or n.shape[0] not in (1, batch):
                raise ValueError(
                    f"{self.backend}: noise[{i}] must be [N, {', '.join(map(str, shape))}], "
                    f"got {list(n.shape)}"
                )
        return noise

    def _device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def describe(self) -> dict:
        """Plain-data summary for reports."""
        return {
            "name": self.name or self.backend,
            "backend": self.backend,
            "resolution": self.resolution,
            "z_dim": self.z_dim,
            "w_dim": self.w_dim,
            "num_ws": self.num_ws,
            "num_noise": len(self.noise_shapes),
            "has_mapping": self.has_mapping,
            "weights_sha256": self.weights_hash,
            "weights_source": self.weights_source,
        }


def _json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars -> Python numbers, tuples -> lists, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    item = getattr(value, "item", None)
    if item is not None and not isinstance(value, (bool, int, float, str)):
        return item()
    return value


def state_dict_mismatch(state: "dict[str, Tensor] | object", module: nn.Module) -> str:
    """How ``state`` differs from ``module.state_dict()`` in keys and shapes ("" if it matches).

    One line for error messages: counts and the first few keys of each kind.
    """
    from pulse_sr.generators.limits import shape_mismatch

    found = {k: tuple(v.shape) for k, v in dict(state).items()}  # type: ignore[call-overload]
    return shape_mismatch(found, {k: tuple(v.shape) for k, v in module.state_dict().items()})


def file_sha256(*paths: "str | bytes | object") -> str:
    """SHA-256 over the bytes of one or more files, in the given order (hex); one file's hash is
    remembered while the file is unchanged (:mod:`pulse_sr.io.hashing`)."""
    from pulse_sr.io.hashing import sha256_file, sha256_of_files

    if len(paths) == 1:
        return sha256_file(paths[0])  # type: ignore[arg-type]
    return sha256_of_files(*paths)  # type: ignore[arg-type]
