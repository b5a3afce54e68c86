"""``load_generator``: one entry point from a name or a path to a ready generator."""
from __future__ import annotations

from pathlib import Path

import torch

from pulse_sr.errors import WeightsError
from pulse_sr.generators.base import FaceGenerator

#: name -> one-line description, in the order users see them
GENERATORS: dict[str, str] = {
    "dcgan-digiface": "64x64 DCGAN trained on DigiFace-1M, z in R^100 (embedded default; MIT, gan-face-generate 1.1.1)",
    "stylegan1": "PULSE's StyleGAN1 FFHQ 1024 (bring synthesis.pt and mapping.pt: --weights DIR)",
    "stylegan2": "NVIDIA StyleGAN2 / StyleGAN2-ADA .pkl or rosinality stylegan2-pytorch .pt (--weights FILE; read without running its code)",
    "stylegan3": "NVIDIA StyleGAN3-T / StyleGAN3-R (bring a .pkl: --weights FILE; read without running its code)",
    "tiny": "32x32 random-init StyleGAN-like network for tests (not a face model)",
}
DEFAULT_GENERATOR = "dcgan-digiface"
#: weight files whose contents name their backend
SELF_DESCRIBING = (".pkl", ".safetensors", ".pt", ".pth")


def load_generator(
    name_or_path: str | Path = DEFAULT_GENERATOR,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    progress: bool = True,
) -> FaceGenerator:
    """Load a generator by name (see :data:`GENERATORS`) or from a weights path.

    A path may be a folder with PULSE's ``synthesis.pt`` and ``mapping.pt``
    (StyleGAN1), a ``gan-face-generate`` ``weights.tar`` (DCGAN), an NVIDIA
    ``.pkl``, a rosinality stylegan2-pytorch ``.pt`` or pulse-sr's own ``.safetensors``
    (``pulse-sr convert``). A zoo name (``pulse-sr weights list``) loads the cached
    download; one not downloaded yet is fetched only with ``allow_download`` (or the
    consent the zoo asks for on a terminal). The result is in eval mode with frozen
    parameters.
    """
    name = str(name_or_path)
    if weights is not None and name != "tiny":
        # Files that say what they hold (.pkl, .safetensors) load by path whatever the name;
        # with the default name, --weights alone picks the backend from the path.
        path = Path(weights)
        if path.suffix in SELF_DESCRIBING or (name == DEFAULT_GENERATOR and path.suffix != ".tar"):
            gen = _load_from_path(path, device)
            if name != DEFAULT_GENERATOR and gen.backend != name:
                raise WeightsError(f"{weights}: holds a {gen.backend} generator, not {name}")
            return gen
    if name == "dcgan-digiface":
        from pulse_sr.generators.dcgan import load_dcgan_digiface

        return load_dcgan_digiface(weights, device=device)
    if name == "stylegan1":
        if weights is None:
            raise WeightsError(
                "stylegan1 needs its weights: --weights DIR with PULSE's synthesis.pt and mapping.pt"
            )
        from pulse_sr.generators.stylegan1 import load_stylegan1

        return load_stylegan1(weights, device=device)
    if name == "stylegan2":
        if weights is None:
            raise WeightsError("stylegan2 needs its weights: --weights FILE.pkl (NVIDIA stylegan2-ada / stylegan3 repo)")
        return load_nvidia_generator(Path(weights), device)
    if name == "stylegan3":
        if weights is None:
            raise WeightsError("stylegan3 needs its weights: --weights FILE.pkl (NVIDIA stylegan3 repo)")
        return load_nvidia_generator(Path(weights), device)
    if name == "tiny":
        if weights is not None:
            raise WeightsError("tiny is generated from a seed and takes no weights")
        from pulse_sr.generators.tiny import make_tiny_generator

        return make_tiny_generator(device=device)
    from pulse_sr.weights.zoo import ZOO  # torch-free table

    if weights is None and name in ZOO:
        return _load_zoo(name, device, allow_download=allow_download, progress=progress)
    path = Path(name)
    if weights is None and (path.exists() or "/" in name or name.endswith((".pt", ".tar", *SELF_DESCRIBING))):
        return _load_from_path(path, device)
    raise WeightsError(f"unknown generator {name!r}; known: {', '.join(GENERATORS)}, a zoo name "
                       "(pulse-sr weights list) or a weights path")


def _load_zoo(name: str, device: str | torch.device, *, allow_download: bool, progress: bool) -> FaceGenerator:
    """A zoo checkpoint from the weights cache (verified against its recorded size and hash)."""
    from pulse_sr.weights import ensure_weights

    path = ensure_weights(name, allow_download=allow_download, progress=progress)
    gen = _load_from_path(Path(path), device)
    gen.name = name
    gen.weights_source = f"zoo:{name} ({path})"
    return gen


def _load_from_path(path: Path, device: str | torch.device) -> FaceGenerator:
    if path.is_dir():
        if (path / "synthesis.pt").exists() or (path / "mapping.pt").exists():
            from pulse_sr.generators.stylegan1 import load_stylegan1

            return load_stylegan1(path, device=device)
        raise WeightsError(f"{path}: folder holds no synthesis.pt / mapping.pt (PULSE StyleGAN1 weights)")
    if not path.exists():
        raise WeightsError(f"{path}: no such file or folder")
    if path.suffix == ".safetensors":
        return _load_own(path, device)
    if path.suffix == ".pkl":
        return load_nvidia_generator(path, device)
    if path.suffix == ".tar":
        from pulse_sr.generators.dcgan import load_dcgan_digiface

        return load_dcgan_digiface(path, device=device)
    if path.suffix in (".pt", ".pth"):
        if path.name in ("synthesis.pt", "mapping.pt"):  # one file of PULSE's StyleGAN1 pair
            from pulse_sr.generators.stylegan1 import load_stylegan1

            return load_stylegan1(path.parent, device=device)
        from pulse_sr.formats.rosinality import load_rosinality

        return load_rosinality(path, device)
    raise WeightsError(f"{path}: unsupported weights format (expected a StyleGAN1 folder, an NVIDIA .pkl, a rosinality "
                       ".pt, a DCGAN weights.tar or a pulse-sr .safetensors)")


def _load_own(path: Path, device: str | torch.device) -> FaceGenerator:
    """A generator in pulse-sr's own ``.safetensors`` format (see :mod:`pulse_sr.formats.own`)."""
    from pulse_sr.formats.own import load_own

    return load_own(path, device=device)


def load_nvidia_generator(path: Path, device: str | torch.device = "cpu") -> FaceGenerator:
    """``G_ema`` of an NVIDIA StyleGAN2(-ADA) or StyleGAN3 ``.pkl``, read with the restricted unpickler."""
    from pulse_sr.formats.nvidia_pickle import load_nvidia_pickle, network_kwargs, network_state_dict
    from pulse_sr.generators.base import file_sha256

    data = load_nvidia_pickle(path)
    record = data.get("G_ema")
    if record is None:
        raise WeightsError(f"{path}: no G_ema network in this pickle (keys: {', '.join(map(str, data))})")
    try:
        state, kwargs = network_state_dict(record), network_kwargs(record)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}", **exc.data) from None
    if "synthesis.input.freqs" in state:  # StyleGAN3's Fourier-feature input layer
        from pulse_sr.generators.stylegan3 import load_stylegan3_state_dict as load_state_dict
    else:
        from pulse_sr.generators.stylegan2 import load_stylegan2_state_dict as load_state_dict
    try:
        gen = load_state_dict(state, kwargs, device=device)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    gen.weights_hash = file_sha256(path)
    gen.weights_source = str(path)
    return gen
