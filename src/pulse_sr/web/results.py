"""Result files of a web job that only the web app writes: the restored photos (with
provenance), and the results of a cancelled job (its candidates already within eps).

The files ``pulse-sr run`` writes for a finished search come from the shared writer
(:func:`pulse_sr.io.results.write_result_files`); this
module writes the rest. Every generated image carries provenance
(:mod:`pulse_sr.io.provenance`): faces ``"generated"``, restored photos ``"composite"``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

CANCELLED_NOTE = ("cancelled: only the candidates already within eps when the job was "
                  "cancelled are kept; the others were stopped and are not written")


def save_marked(img: "Tensor", path: Path, kind: str, generator: str) -> None:
    """``img [3, H, W]`` in [0, 1] as an 8-bit PNG with provenance, written atomically."""
    from pulse_sr.io.files import atomic_write_bytes
    from pulse_sr.io.images import png_bytes
    from pulse_sr.io.provenance import png_with_provenance

    atomic_write_bytes(path, png_with_provenance(png_bytes(img), kind, generator))  # type: ignore[arg-type]


@dataclass
class Kept:
    """A candidate of a cancelled job kept as a result: ``hr [3, R, R]``, ``lr [3, h, w]``
    (its own bicubic downscale), both in [0, 1]; ``l2`` against the target, <= eps."""

    index: int
    hr: "Tensor"
    lr: "Tensor"
    l2: float
    step: int


def within_eps(info: Any, target: "Tensor", eps: float) -> list[Kept]:
    """The candidates of the search's last progress report (``info.hr [n, 3, R, R]``: each
    candidate's best face once it stopped) whose own downscale is within ``eps`` of
    ``target [3, h, w]``, checked again here from the images, not taken from the flags."""
    import torch

    from pulse_sr.degradations.bicubic import BicubicDownsample
    from pulse_sr.search.losses import l2_per_image

    if info is None or info.hr is None:
        return []
    hr = info.hr.detach().to("cpu", torch.float32).clamp(0, 1)
    factor = int(hr.shape[-1]) // int(target.shape[-1])
    with torch.no_grad():
        lr = BicubicDownsample(factor)(hr)
        l2 = l2_per_image(lr, target[None].to(lr))
    return [Kept(k, hr[k], lr[k], float(l2[k]), int(info.step))
            for k in range(hr.shape[0]) if float(l2[k]) <= eps]


def write_cancelled(folder: Path, *, target: "Tensor", kept: list[Kept], generator: Any,
                    params: dict[str, Any], settings: dict[str, Any], input_info: dict[str, Any],
                    started: float) -> dict[str, Any]:
    """``input.png``, ``hr_KK.png`` / ``lr_KK.png`` of each kept candidate (KK: its index in the
    search) and ``report.json`` (``"cancelled": true``), as ``pulse-sr run`` lays them out."""
    from pulse_sr import __version__
    from pulse_sr.io.files import atomic_write_json
    from pulse_sr.io.images import save_png

    name = params["generator"]
    save_png(target, folder / "input.png")  # the user's target: not marked
    cw = max(2, len(str(params["n"] - 1)))
    entries = []
    for c in kept:
        files = {"hr": f"hr_{c.index:0{cw}d}.png", "lr": f"lr_{c.index:0{cw}d}.png"}
        save_marked(c.hr, folder / files["hr"], "generated", name)
        save_marked(c.lr, folder / files["lr"], "generated", name)
        entries.append({"index": c.index, "seed": params["seed"] + c.index, "final_l2": c.l2,
                        "converged": True, "cancelled": True, "kept_at_step": c.step,
                        "files": files})
    report = {
        "pulse_sr_version": __version__, "input": input_info, "generator": generator.describe(),
        "settings": settings, "cancelled": True, "cancelled_note": CANCELLED_NOTE,
        "candidates": entries, "any_converged": bool(entries),
        "best_index": min(range(len(entries)), key=lambda i: entries[i]["final_l2"]) if entries else None,
        "seconds": round(time.perf_counter() - started, 3),
        "notice": ("Every face is invented, not recovered: its downscale matches the input "
                   "within eps; it is not a photo of the person."),
    }
    atomic_write_json(folder / "report.json", report)
    return report


def write_restored(folder: Path, *, photo: Any, face: Any, hr: "Tensor", indices: list[int],
                   generator: str) -> dict[int, str]:
    """The photo enlarged (``photo.png``, the user's pixels: not marked) and, per candidate,
    ``restored_KK.png`` with that face pasted back (marked ``"composite"``). ``hr [n, 3, R,
    R]``; ``indices``: each row's candidate index. Returns index -> file name."""
    from pulse_sr.io.images import save_png
    from pulse_sr.web import photos

    before, after = photos.paste_back(photo, face, hr)
    save_png(before, folder / "photo.png")
    names: dict[int, str] = {}
    for k, img in zip(indices, after):
        names[k] = f"restored_{k:02d}.png"
        save_marked(img, folder / names[k], "composite", generator)
    return names
