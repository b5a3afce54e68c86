"""Which generators the web app offers, and one loaded copy of each per server.

Offered: the registry's generators that load without a user-supplied path
(``dcgan-digiface``, ``tiny``) and, through :func:`zoo_generators`, weights the
zoo (:mod:`pulse_sr.weights.zoo`) already holds in its cache. Nothing here
downloads anything.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

#: name -> (resolution, model card URL, what the card says in one line)
BUILTIN: dict[str, tuple[int, str | None, str]] = {
    "dcgan-digiface": (
        64,
        "https://pypi.org/project/gan-face-generate/1.1.1/",
        "DCGAN from gan-face-generate 1.1.1 (MIT), trained on Microsoft's synthetic DigiFace-1M faces.",
    ),
    "tiny": (
        32,
        None,
        "Random-init 32x32 test network: its images are texture, not faces.",
    ),
}


#: offered generators that are not face models (left out of the page's list)
TEST_NETWORKS = frozenset({"tiny"})


def listed(entries: dict[str, "GeneratorEntry"], named: "tuple[str, ...] | None") -> list["GeneratorEntry"]:
    """The entries the page lists: face models, and any the server was told by name to offer."""
    return [e for e in entries.values() if e.face_model or (named is not None and e.name in named)]


@dataclass
class GeneratorEntry:
    """One generator the page can offer. ``load(device)`` returns a FaceGenerator."""

    name: str
    description: str
    resolution: int | None
    model_card: str | None
    card_text: str
    load: Callable[[str], Any]
    available: bool = True
    reason: str = ""
    default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: a face model (shown in the page's list); ``tiny`` is a test network: a request may
    #: still name it, but the list leaves it out unless the server was told to offer it
    face_model: bool = True

    def to_json(self) -> dict[str, Any]:
        from pulse_sr.degradations.bicubic import valid_input_sizes

        return {
            "name": self.name,
            "description": self.description,
            "resolution": self.resolution,
            "input_sizes": valid_input_sizes(self.resolution) if self.resolution else [],
            "model_card": self.model_card,
            "card_text": self.card_text,
            "available": self.available,
            "reason": self.reason,
            "default": self.default,
        }


def _builtin_entries() -> list[GeneratorEntry]:
    from pulse_sr.generators.registry import DEFAULT_GENERATOR, GENERATORS, load_generator

    entries = []
    for name, description in GENERATORS.items():
        if name not in BUILTIN:  # needs --weights: not offered without a path
            continue
        resolution, card, card_text = BUILTIN[name]
        available, reason = True, ""
        if name == "dcgan-digiface":
            from pulse_sr.errors import PulseError
            from pulse_sr.generators.dcgan import find_digiface_weights

            try:
                find_digiface_weights()
            except PulseError as e:
                available, reason = False, str(e)
        entries.append(GeneratorEntry(
            name=name, description=description, resolution=resolution, model_card=card,
            card_text=card_text, load=lambda device, n=name: load_generator(n, device=device),
            available=available, reason=reason, default=name == DEFAULT_GENERATOR,
            face_model=name not in TEST_NETWORKS,
        ))
    return entries


def zoo_generators() -> list[GeneratorEntry]:
    """Weights-zoo checkpoints already in the local weights cache (never downloads).

    Returns ``[]`` when :mod:`pulse_sr.weights.zoo` is missing. Each entry is checked
    (size, SHA-256) and loaded through :func:`pulse_sr.api.load_generator` with its
    local path, as ``--weights`` would.
    """
    try:
        from pulse_sr.weights import zoo
    except ImportError:
        return []
    entries = []
    for card in zoo.ZOO.values():
        if not zoo.is_cached(card):
            continue
        source = card.source.split(",")[0].split()[0]
        entries.append(GeneratorEntry(
            name=card.name, description=f"{card.title} (weights zoo, cached)",
            resolution=int(card.resolution), model_card=f"https://{source}",
            card_text=f"{card.title}. Licence: {card.licence}. {card.biases}",
            load=lambda device, c=card: _load_zoo(c.name, device),
        ))
    return entries


def _load_zoo(name: str, device: str) -> Any:
    from pulse_sr.api import load_generator
    from pulse_sr.weights.download import ensure_weights

    path = ensure_weights(name, allow_download=False, interactive=False, log=None)
    return load_generator(path, device=device)


def list_generators(allowed: tuple[str, ...] | None = None) -> list[GeneratorEntry]:
    """Built-in generators then cached zoo entries, optionally filtered by name."""
    entries = _builtin_entries() + zoo_generators()
    if allowed is not None:
        entries = [e for e in entries if e.name in allowed]
    if entries and not any(e.default and e.available for e in entries):
        for e in entries:
            e.default = False
        for e in entries:
            if e.available:
                e.default = True
                break
    return entries


class GeneratorCache:
    """Each generator loaded once (with its Gaussian fit), shared by all jobs.

    Searches never modify the generator they get (see ``pulse_search``), so
    worker threads can share one copy.
    """

    def __init__(self, entries: list[GeneratorEntry], device: str,
                 allowed: tuple[str, ...] | None = None) -> None:
        self.entries = {e.name: e for e in entries}
        self.device = device
        self.allowed = allowed
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self._locks: dict[str, threading.Lock] = {name: threading.Lock() for name in self.entries}
        self._guard = threading.Lock()

    def refresh(self) -> dict[str, GeneratorEntry]:
        """Offer zoo checkpoints cached since start-up (``pulse-sr weights download`` while serving).

        Entries already offered stay as they are (a loaded generator is kept); new ones are
        appended. Returns the entries by name.
        """
        fresh = list_generators(self.allowed)
        with self._guard:
            for entry in fresh:
                if entry.name not in self.entries:
                    self._locks[entry.name] = threading.Lock()
                    self.entries = {**self.entries, entry.name: entry}
            return self.entries

    def get(self, name: str) -> tuple[Any, Any]:
        """``(generator, gaussian_fit or None)``; raises PulseError/OSError when loading fails."""
        entry = self.entries[name]
        with self._locks[name]:
            if name not in self._loaded:
                from pulse_sr.search.gaussian_fit import cached_gaussian_fit

                gen = entry.load(self.device)
                fit = cached_gaussian_fit(gen) if gen.has_mapping else None
                self._loaded[name] = (gen, fit)
                entry.resolution = int(gen.resolution)
            return self._loaded[name]
