"""One input, start to finish but for the writing: decoded pixels -> input plan -> search.

:func:`search_input` is the per-input step every front end and engine shares: the CLI's local
``pulse-sr run`` calls it with a progress callback, and the engines' workers call it (through
:func:`pulse_sr.engines.local.process_task`) on an input's bytes. It returns a
:class:`~pulse_sr.engines.tasks.TaskResult` holding all the driver needs to write the result
folder with :func:`pulse_sr.io.results.write_result_files` (:func:`write_args`), so every engine
writes the same files. Torch is imported inside the functions.
"""
from __future__ import annotations

import base64
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pulse_sr.engines.tasks import InputTask, TaskOptions, TaskResult

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    from pulse_sr.generators.base import FaceGenerator
    from pulse_sr.search.settings import SearchSettings

#: inputs larger than this many bytes are refused before they are written or decoded
MAX_INPUT_BYTES = 256 * 1024 * 1024


def decode_bytes(name: str, data: bytes, max_pixels: int, *, what: str = "input") -> tuple[Tensor, Any, str]:
    """:func:`pulse_sr.io.images.load_input` of a file's ``data`` (through a private temporary
    file, so exactly the same checks run): ``(image [3, H, W] float32 in [0, 1], known [H, W] bool
    or None, mode)``; errors name ``name``."""
    from pulse_sr.errors import ImageError, PulseError
    from pulse_sr.io.images import load_input

    if len(data) > MAX_INPUT_BYTES:
        raise ImageError(f"{name}: file too large ({len(data):,} bytes; the limit is {MAX_INPUT_BYTES:,})",
                         path=name, problem="too large")
    with tempfile.TemporaryDirectory(prefix="pulse-sr-in-") as tmp:
        path = Path(tmp) / (what + Path(name).suffix.lower()[:16])
        path.write_bytes(data)
        try:
            return load_input(path, max_pixels=max_pixels)
        except PulseError as e:
            raise e.with_message(e.message.replace(str(path), name)) from None


def decode_mask(options: TaskOptions) -> np.ndarray | None:
    """The ``--mask`` file sent in ``options`` (base64 of its bytes) as ``[H, W]`` bool, or None."""
    if not options.mask_data:
        return None
    from pulse_sr.io.images import load_mask

    data = base64.b64decode(options.mask_data)
    with tempfile.TemporaryDirectory(prefix="pulse-sr-mask-") as tmp:
        path = Path(tmp) / ("mask" + Path(options.mask_name).suffix.lower()[:16])
        path.write_bytes(data)
        return load_mask(path, max_pixels=options.max_pixels)


def plan_options(options: TaskOptions) -> dict[str, Any]:
    """The keyword arguments of :func:`pulse_sr.input_plan.plan_input` that ``options`` give."""
    return {"degradation": options.degradation, "noise_sigma": options.noise_sigma,
            "grey_output": options.grey_output, "resize": options.resize, "center_crop": options.center_crop,
            "faithful": options.faithful}


def search_input(name: str, image: Tensor, known: Any, mode: str | None, options: TaskOptions, *,
                 generator: FaceGenerator, settings: SearchSettings | None, n: int, seed: int, device: str,
                 mask: Any = None, gaussian_fit: tuple[Tensor, Tensor] | None = None,
                 callback: Callable[[Any], None] | None = None, callback_images: bool = False,
                 index: int = 0, started: float | None = None) -> TaskResult:
    """Plan (:func:`pulse_sr.input_plan.plan_input`) and search one decoded input ``image``
    ``[3, H, W]`` in [0, 1]; raises :class:`~pulse_sr.errors.PulseError` for a bad input.

    The result's ``target`` is the plan's image (``input.png``), ``matched`` the observation when it
    is not that image (``target.png``), ``input_info`` report.json's ``input``, ``summary`` the
    CLI line's clause and ``threshold`` the match threshold. ``callback``: the search's per-step
    callback (progress, frames)."""
    from pulse_sr.input_plan import grey_faces, plan_input
    from pulse_sr.search.pulse import pulse_search

    started = time.perf_counter() if started is None else started
    plan = plan_input(image, generator.resolution, eps=(settings.eps if settings is not None else _eps()),
                      name=name, mode=mode, known=known, mask=mask, **plan_options(options))
    result = pulse_search(generator, plan.target, n=n, seed=seed, settings=settings, device=device,
                          gaussian_fit=gaussian_fit, callback=callback, callback_images=callback_images,
                          operator=plan.operator, mask=plan.mask, threshold=plan.threshold)
    if plan.grey_output:
        result = grey_faces(result)
    info = {"path": name, "original_size": [int(image.shape[2]), int(image.shape[1])],
            "used_size": [int(plan.image.shape[2]), int(plan.image.shape[1])], "notes": plan.notes,
            **plan.describe()}
    return TaskResult(name, index, target=plan.image, result=result, generator_info=generator.describe(),
                      input_info=info, seconds=time.perf_counter() - started, worker_pid=os.getpid(),
                      matched=plan.matched(), summary=plan.summary(), threshold=float(plan.threshold))


def _eps() -> float:
    from pulse_sr.search.settings import SearchSettings

    return SearchSettings().eps


def search_task(task: InputTask, *, generator: FaceGenerator, settings: SearchSettings | None, n: int,
                seed: int, device: str, gaussian_fit: tuple[Tensor, Tensor] | None = None) -> TaskResult:
    """:func:`search_input` of a task's bytes (and its options' mask); raises for a bad input."""
    from pulse_sr.errors import ImageError

    started = time.perf_counter()
    if task.problem:
        raise ImageError(f"{task.name}: {task.problem}", path=task.name, problem=task.problem)
    image, known, mode = decode_bytes(task.name, task.data, task.options.max_pixels)
    return search_input(task.name, image, known, mode, task.options, generator=generator, settings=settings,
                        n=n, seed=seed, device=device, mask=decode_mask(task.options),
                        gaussian_fit=gaussian_fit, index=task.index, started=started)


def write_args(res: TaskResult, *, n: int, seed: int, device: str) -> dict[str, Any]:
    """Keyword arguments of :func:`pulse_sr.io.results.write_result_files` for a successful
    result (all but ``folder``, ``generator`` and ``frames_dirs``): the same report for every engine."""
    assert res.result is not None
    return {"target": res.target, "result": res.result, "matched": res.matched,
            "settings": {**res.result.settings.to_dict(), "n": n, "seed": seed, "device": device},
            "input_info": res.input_info, "started": time.perf_counter() - res.seconds}
