"""The options ``run`` and ``restore`` share, parsed once into small dataclasses, and the
search with a progress bar that both run.

Every search-settings option defaults to ``None`` (what the user did not give is absent, and
:func:`pulse_sr.front_end.build_settings` fills it); help texts read the defaults from
``SearchSettings`` and ``FRONT_END_SETTINGS``. Torch-free at import time.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pulse_sr.cli.common import UsageError, int_at_least, layer_list, positive_float
from pulse_sr.front_end import FRONT_END_SETTINGS, INPUT_DEFAULTS  # torch-free module
from pulse_sr.search.settings import (  # torch-free module
    COMPILE, MODES, NOISE_TYPES, OPTIMIZERS, RANGES, SCHEDULES, STARTS, SearchSettings,
)

#: images smaller than this (longer side) are taken as aligned faces without detection
TINY_SIDE = 64
PHOTO_MAX_PIXELS = 8192 * 8192
RUN_MAX_PIXELS = 4096 * 4096
DEFAULT_SIZE = 16
DEFAULT_N, DEFAULT_SEED = 4, 0
# Defaults of pulse_sr.io.align / pulse_sr.io.paste, repeated here so building the parser
# imports no torch (tests check they match).
MIN_SCORE, DETECT_MAX_SIDE, FEATHER, MAX_SIDE = 0.3, 1600, 0.1, 4096

_D = SearchSettings()


def _default(name: str) -> Any:
    """The default a front end runs for settings field ``name`` (front-end default, else PULSE's)."""
    return FRONT_END_SETTINGS.get(name, getattr(_D, name))


# -- parsers -------------------------------------------------------------------------------
def add_run_options(p: Any) -> None:
    """Inputs, output, generator, search and I/O options of ``run`` (``restore`` takes them all)."""
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", "--outdir", dest="outdir", required=True, metavar="OUTDIR",
                   help="results go to OUTDIR/<input stem>/ (made if missing)")
    g = p.add_argument_group("generator")
    g.add_argument("--generator", default="dcgan-digiface",
                   help="dcgan-digiface (default, 64x64), stylegan1/2/3 (with --weights), tiny (tests), "
                   "a zoo name (pulse-sr weights list) or a weights path")
    g.add_argument("--weights", metavar="PATH", default=None, help="weights folder or file")
    g.add_argument("--download", action="store_true",
                   help="download a zoo generator that is not in the weights cache yet")
    g.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    _add_search_options(p.add_argument_group("search"))
    i = p.add_argument_group("input and output")
    i.add_argument("--resize", action="store_true",
                   help="resize inputs of an unusable size to the nearest usable one")
    i.add_argument("--center-crop", action="store_true", help="crop non-square inputs to a square")
    i.add_argument("--max-pixels", type=int_at_least(16), default=RUN_MAX_PIXELS,
                   help="refuse larger input images (default 4096*4096)")
    i.add_argument("--degradation", default=None, metavar="auto|bicubic|box|gaussian[:SIGMA]|nearest[:PHASE]",
                   help=f"how the input was made from a face (default {INPUT_DEFAULTS['degradation']}: bicubic for a "
                        "face of a valid size, box for a detected mosaic; the output line and report.json say "
                        "what was decided and why)")
    i.add_argument("--noise-sigma", default=None, metavar="auto|S",
                   help=f"Gaussian noise in the input, S in 8-bit levels (default {INPUT_DEFAULTS['noise_sigma']}: "
                        "estimated); the match threshold becomes sigma^2 + eps (eps below 1/255)")
    i.add_argument("--mask", default=None, metavar="FILE",
                   help="a PNG of the input's size, white = known pixel, black = unknown (fully transparent "
                        "pixels of an RGBA input are unknown too)")
    i.add_argument("--grey-output", action="store_true", default=None,
                   help="grey faces for a black-and-white input (by default they stay in colour)")
    i.add_argument("--overwrite", action="store_true", help="replace existing results")
    i.add_argument("--save-intermediate", action="store_true",
                   help="save every step of each candidate and an animated GIF")
    add_output_options(i)


def add_output_options(i: Any) -> None:
    """How a command talks: ``-q``, ``-v``, ``--json``, ``--recursive`` (run, restore, align)."""
    i.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    i.add_argument("-v", "--verbose", action="store_true", help="per-step detail and timings on stderr")
    i.add_argument("--json", action="store_true",
                   help="one JSON object per input on stdout (path, status, best_l2, converged, output); "
                   "every human line goes to stderr")
    i.add_argument("--recursive", action="store_true", help="also take the images in subfolders of a folder")


def _add_search_options(s: Any) -> None:
    """The search options: ``--n``, ``--seed`` and one option per ``SearchSettings`` field,
    every field option defaulting to ``None`` (see the module docstring)."""
    s.add_argument("--n", type=int_at_least(1), default=DEFAULT_N, help=f"candidates per input (default {DEFAULT_N})")
    s.add_argument("--steps", type=int_at_least(1), default=None, help=f"default {_default('steps')}")
    s.add_argument("--eps", type=positive_float, default=None,
                   help=f"L2 tolerance of a match (default {_default('eps'):g})")
    s.add_argument("--seed", type=int_at_least(0), default=DEFAULT_SEED,
                   help=f"candidate k uses seed + k (default {DEFAULT_SEED})")
    s.add_argument("--loss", default=None, help=f"default {_default('loss')}")
    s.add_argument("--lr", type=positive_float, default=None,
                   help=f"learning rate (default {_default('lr')}, PULSE's; the dcgan fast preset uses 1.5 "
                        "unless you give one)")
    s.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=f"default {_default('optimizer')}")
    s.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help=f"lr schedule (default PULSE's {_default('schedule')}; cosine_restart: not PULSE's, "
                        "reached eps in fewer steps on the 1024 benchmarks, see benchmarks/README.md)")
    s.add_argument("--noise", choices=NOISE_TYPES, default=None, help=f"default {_default('noise')}")
    s.add_argument("--num-trainable-noise", type=int_at_least(0), default=None,
                   help=f"default {_default('num_trainable_noise')}")
    s.add_argument("--bad-noise-layers", type=layer_list, default=None,
                   help=f'comma or dot separated (default "{",".join(map(str, _default("bad_noise_layers")))}"; '
                        '"" for none)')
    s.add_argument("--tile-latent", action="store_true", default=None, help="one latent for all layers")
    s.add_argument("--run-all-steps", action="store_true", default=None,
                   help="keep optimising candidates already within eps")
    s.add_argument("--mode", choices=MODES, default=None,
                   help=f"{_default('mode')} (default): fast where benchmarks/run.py shows it pays (dcgan), else "
                        "faithful; faithful: the original loop; fast: StyleGAN1-type generators run most steps "
                        "through a truncated synthesis, dcgan uses lr 1.5 and --start-pool 8 (settings you "
                        "give win); eps is always checked on the full network's output")
    s.add_argument("--faithful", action="store_true",
                   help="the original PULSE loop, bit for bit (same as --mode faithful --compile off)")
    s.add_argument("--start-pool", type=int_at_least(1), default=None,
                   help="start each candidate at the best of this many seeded draws, by L2 to the input "
                        f"(forward passes only; default {_default('start_pool')}: PULSE's single draw)")
    s.add_argument("--lean-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="keep freed memory in the process: same results, far fewer page faults, more "
                        f"resident memory (default {'on' if _default('lean_memory') else 'off'}; always on "
                        "with --mode fast)")
    s.add_argument("--max-batch", type=int_at_least(0), default=None,
                   help=f"candidates per forward+backward (default {_default('max_batch')}: one at a time "
                        "from 512 px on, else all at once); 1 caps memory at one candidate's with the same "
                        "gradients")
    s.add_argument("--compile", choices=COMPILE, default=None,
                   help="full steps through torch.compile: the same loop, float rounding aside, after a "
                        f"one-off compile cached on disk (default {_default('compile')}: on from 512 px; "
                        "--faithful turns it off)")
    s.add_argument("--range", choices=RANGES, default=None,
                   help=f"{_default('range')} (default): extend the search past the generator's own faces "
                        "(ILO, at an intermediate activation within a ball around the latent's) only for an "
                        "input no candidate matched; latent: PULSE's; extended: always; report.json says per "
                        "candidate whether it left the range and how far")
    s.add_argument("--range-radius", type=float, default=None,
                   help=f"extended range: l1 radius relative to the activation's norm (default {_default('range_radius')})")
    s.add_argument("--range-layer", type=int_at_least(0), default=None,
                   help="extended range: split layer (default 0: the generator's default)")
    s.add_argument("--start", choices=STARTS, default=None,
                   help=f"{_default('start')} (default, PULSE): random draws through the Gaussian fit; w_avg: "
                        "start every candidate at the mapping network's tracked average w (StyleGAN2/3 weights); encoder "
                        "(opt-in): seeded starts around a learned encoder's prediction from the input, where one "
                        "ships for the generator, operator and factor (dcgan-digiface: bicubic and box, x2/x4/x8), "
                        "else PULSE's start (report.json says which, per candidate)")


def add_engine_options(p: Any) -> None:
    """``run``'s engine: ``--engine local|ray`` and the Ray pool's size (the ``ray`` extra)."""
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default): inputs one after the other in this process; ray: a pool of Ray "
                   "workers (pip install 'pulse-sr[ray]'), a local Ray started inside the command unless "
                   "--ray-address; only this machine writes OUTDIR, workers get the inputs' bytes")
    g.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="join an existing Ray cluster (its workers need pulse-sr, and --weights at the same path)")
    g.add_argument("--ray-workers", type=int_at_least(1), default=None,
                   help="Ray workers, each loading the generator once (default: one per CPU of this process)")
    g.add_argument("--threads-per-worker", type=int_at_least(1), default=1,
                   help="CPUs and torch threads per Ray worker (default 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="GPUs each Ray worker asks for (default 0; use with --device cuda)")


def check_local_engine_flags(args: Any) -> None:
    """The Ray pool's options make sense only with ``--engine ray``: a UsageError otherwise."""
    for flag, value in (("--ray-address", getattr(args, "ray_address", None)),
                        ("--ray-workers", getattr(args, "ray_workers", None)),
                        ("--gpus-per-worker", getattr(args, "gpus_per_worker", 0) or None)):
        if value is not None:
            raise UsageError(f"{flag}: only with --engine ray")


def add_face_options(p: Any) -> None:
    """Options that choose and align faces (``align``, ``restore``, ``run --align``)."""
    g = p.add_argument_group("faces")
    g.add_argument("--size", type=int_at_least(4), default=None,
                   help=f"side of each low-resolution face (default {DEFAULT_SIZE}, or the nearest "
                   "size the generator takes)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--aligned", dest="face_mode", action="store_const", const="aligned",
                      help="inputs are already aligned faces: no detection")
    mode.add_argument("--detect", dest="face_mode", action="store_const", const="detect",
                      help=f"always detect faces (by default images under {TINY_SIDE} pixels are "
                      "taken as aligned faces, and so are valid-size squares without a detected face)")
    g.add_argument("--max-faces", type=int_at_least(1), default=None,
                   help="keep the K largest faces of each photo (default all)")
    g.add_argument("--min-score", type=float, default=MIN_SCORE,
                   help=f"dlib detector score a face needs (default {MIN_SCORE}; lower finds "
                   "more faces and more false ones)")
    g.add_argument("--detect-max-side", type=int_at_least(64), default=DETECT_MAX_SIDE,
                   help=f"detect on a copy at most this many pixels wide/high (default "
                   f"{DETECT_MAX_SIDE}); faces are cropped from the full photo")
    p.set_defaults(face_mode="auto")


def add_paste_options(p: Any) -> None:
    """Options for pasting faces back (``restore``, ``run --align``)."""
    g = p.add_argument_group("paste back")
    g.add_argument("--pick", type=int_at_least(0), default=None,
                   help="paste candidate K of each face (default: the one with the lowest L2)")
    g.add_argument("--feather", type=float, default=FEATHER,
                   help=f"soft edge of the pasted face, as a fraction of its side (default {FEATHER})")
    g.add_argument("--scale", type=float, default=None,
                   help="enlarge the photo by this factor (default: so the smallest face gets "
                   "the generator's full resolution, at least 1)")
    g.add_argument("--max-side", type=int_at_least(16), default=MAX_SIDE,
                   help=f"cap on the restored photo's longer side (default {MAX_SIDE})")
    g.add_argument("--force", action="store_true",
                   help="also restore faces already at least the generator's resolution (by default "
                   "they are left untouched: restoring would only replace them with an invented face)")


# -- parsed options ------------------------------------------------------------------------
def _get(args: argparse.Namespace, name: str, default: Any) -> Any:
    value = getattr(args, name, None)
    return default if value is None else value


@dataclass(frozen=True)
class RunOptions:
    """What ``run``, ``restore`` and ``align`` do with their inputs and outputs (not the search
    settings: those are :func:`~pulse_sr.cli.common.settings_from_args`)."""

    inputs: tuple[str, ...]
    outdir: Path
    n: int = DEFAULT_N
    seed: int = DEFAULT_SEED
    device: str = "cpu"
    resize: bool = False
    center_crop: bool = False
    max_pixels: int = RUN_MAX_PIXELS
    overwrite: bool = False
    save_intermediate: bool = False
    quiet: bool = False
    degradation: str = INPUT_DEFAULTS["degradation"]
    noise_sigma: str = INPUT_DEFAULTS["noise_sigma"]
    mask: str | None = None
    grey_output: bool = INPUT_DEFAULTS["grey_output"]
    faithful: bool = False
    verbose: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunOptions":
        d = cls(inputs=(), outdir=Path("."))
        return cls(inputs=tuple(args.inputs), outdir=Path(args.outdir),
                   **{k: _get(args, k, getattr(d, k)) for k in (
                       "n", "seed", "device", "resize", "center_crop", "max_pixels", "overwrite",
                       "save_intermediate", "quiet", "verbose", "degradation", "noise_sigma", "mask", "grey_output",
                       "faithful")})

    def check_input_choices(self) -> None:
        """``--degradation`` and ``--noise-sigma`` checked up front: a bad value is a UsageError."""
        from pulse_sr.degradations.registry import parse_spec
        from pulse_sr.errors import SettingsError
        from pulse_sr.input_plan import parse_noise_sigma

        try:
            if self.degradation != "auto":
                parse_spec(self.degradation)
            parse_noise_sigma(self.noise_sigma)
        except SettingsError as e:
            raise UsageError(f"--{e.data.get('field', 'degradation').replace('_', '-')}: {e}") from None

    def task_options(self, *, with_mask: bool = True) -> Any:
        """These options as an engine's :class:`~pulse_sr.engines.tasks.TaskOptions` (with
        ``with_mask``, the ``--mask`` file's bytes read here and sent along; an unreadable mask is a
        UsageError)."""
        import base64
        import os

        from pulse_sr.engines.tasks import TaskOptions

        mask_data = ""
        if self.mask is not None and with_mask:
            try:
                if os.path.getsize(self.mask) > 64 * 1024 * 1024:  # a mask PNG of 4096x4096 is far smaller
                    raise UsageError(f"--mask {self.mask}: file too large")
                mask_data = base64.b64encode(Path(self.mask).read_bytes()).decode("ascii")
            except OSError as e:
                raise UsageError(f"--mask {self.mask}: cannot read ({e.strerror or e})") from None
        return TaskOptions(resize=self.resize, center_crop=self.center_crop, max_pixels=self.max_pixels,
                           degradation=self.degradation, noise_sigma=self.noise_sigma, grey_output=self.grey_output,
                           faithful=self.faithful, mask_data=mask_data, mask_name=self.mask or "")

    def input_choices(self) -> dict[str, Any]:
        """The keyword arguments of :func:`pulse_sr.input_plan.plan_input` these options give."""
        return {"degradation": self.degradation, "noise_sigma": self.noise_sigma, "grey_output": self.grey_output,
                "resize": self.resize, "center_crop": self.center_crop, "faithful": self.faithful}


@dataclass(frozen=True)
class FaceOptions:
    """How faces are found (``--size``, ``--aligned`` / ``--detect``, ``--max-faces`` ...)."""

    size: int | None = None
    mode: str = "auto"  # auto | aligned | detect
    max_faces: int | None = None
    min_score: float = MIN_SCORE
    detect_max_side: int = DETECT_MAX_SIDE

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "FaceOptions":
        return cls(size=getattr(args, "size", None), mode=_get(args, "face_mode", "auto"),
                   max_faces=getattr(args, "max_faces", None),
                   min_score=float(_get(args, "min_score", MIN_SCORE)),
                   detect_max_side=int(_get(args, "detect_max_side", DETECT_MAX_SIDE)))


@dataclass(frozen=True)
class PasteOptions:
    """How the chosen faces are pasted back (``--pick``, ``--feather``, ``--scale``, ``--max-side``)."""

    pick: int | None = None
    feather: float = FEATHER
    scale: float | None = None
    max_side: int = MAX_SIDE

    @classmethod
    def from_args(cls, args: argparse.Namespace, n: int) -> "PasteOptions":
        """Checked against ``n`` candidates per face; a bad value is a UsageError."""
        opts = cls(pick=getattr(args, "pick", None), feather=float(_get(args, "feather", FEATHER)),
                   scale=getattr(args, "scale", None), max_side=int(_get(args, "max_side", MAX_SIDE)))
        if opts.pick is not None and opts.pick >= n:
            raise UsageError(f"--pick {opts.pick}: only {n} candidates per face (--n); use 0 ... {n - 1}")
        if not 0.0 <= opts.feather <= 0.5:
            raise UsageError(f"--feather {opts.feather:g}: must be between 0 and 0.5")
        if opts.scale is not None and not 0 < opts.scale <= 64:
            raise UsageError(f"--scale {opts.scale:g}: must be > 0 and <= 64")
        return opts


# -- searching -----------------------------------------------------------------------------
def check_start(settings: Any, generator: Any) -> None:
    """``--start w_avg`` needs a mapping network that tracks ``w_avg``: a UsageError up front
    (``--faithful`` refuses ``--start encoder``: :func:`pulse_sr.front_end.build_settings`)."""
    if settings.start == "w_avg":
        from pulse_sr.search.latents import w_avg_latent

        try:
            w_avg_latent(generator, None)
        except ValueError as e:
            raise UsageError(f"--start w_avg: {e}") from None


def frame_dirs(root: Path, n: int, enabled: bool) -> list[Path]:
    """``root/intermediate/cand_KK`` for each of ``n`` candidates (made), or none when not
    ``enabled`` (``--save-intermediate``)."""
    if not enabled:
        return []
    cw = max(2, len(str(n - 1)))
    dirs = [root / "intermediate" / f"cand_{k:0{cw}d}" for k in range(n)]
    for d in dirs:
        d.mkdir(parents=True)
    return dirs


@contextlib.contextmanager
def progress(label: str, opts: RunOptions, settings: Any, frames: list[Path]) -> Iterator[Any]:
    """A search callback showing a progress bar on stderr (none with ``--quiet``) named ``label``,
    per-step lines with ``--verbose``, and each step's images saved to ``frames`` (one folder per
    candidate) when given; the bar is closed on leaving."""
    import time

    from tqdm import tqdm

    from pulse_sr.cli.common import err, printable
    from pulse_sr.io.images import to_pil

    sw = max(3, len(str(settings.steps)))
    every, started = max(1, settings.steps // 20), time.perf_counter()  # about 20 lines per search
    bar = tqdm(total=settings.steps, desc=printable(label, getattr(sys.stderr, "encoding", None)),
               unit="step", file=sys.stderr, disable=True if opts.quiet or opts.verbose else None, leave=False,
               dynamic_ncols=True)

    def callback(info: Any) -> None:
        if info.step > bar.n:
            bar.update(info.step - bar.n)
        bar.set_postfix_str(
            f"best L2 {float(info.best_l2.min()):.2e}, converged "
            f"{int(info.converged.sum())}/{int(info.converged.numel())}",
            refresh=False,
        )
        if opts.verbose and (info.step % every == 0 or info.step == settings.steps):
            err(f"  {printable(label)} step {info.step}/{settings.steps}: best L2 {float(info.best_l2.min()):.3e}, "
                f"converged {int(info.converged.sum())}/{int(info.converged.numel())}, "
                f"{time.perf_counter() - started:.1f} s")
        if frames and info.hr is not None:
            for k, d in enumerate(frames):
                to_pil(info.hr[k]).save(d / f"step_{info.step:0{sw}d}.png")

    try:
        yield callback
    finally:
        bar.close()


def search_with_progress(label: str, opts: RunOptions, generator: Any, target: Any, settings: Any,
                         frames: list[Path], plan: Any = None) -> Any:
    """:func:`pulse_sr.search.pulse.pulse_search` of ``target [3, h, w]`` in [0, 1] (or of ``plan``,
    an :class:`~pulse_sr.input_plan.InputPlan`: its target, operator, mask and threshold) with
    :func:`progress`. Returns the ``SearchResult`` (grey faces with the plan's ``grey_output``)."""
    from pulse_sr.search import pulse

    extra: dict[str, Any] = {}
    if plan is not None:
        target = plan.target
        extra = {"operator": plan.operator, "mask": plan.mask, "threshold": plan.threshold}
    with progress(label, opts, settings, frames) as callback:
        result = pulse.pulse_search(
            generator, target, n=opts.n, seed=opts.seed, settings=settings, device=opts.device,
            callback=callback, callback_images=bool(frames), **extra,
        )
    if plan is not None and plan.grey_output:
        from pulse_sr.input_plan import grey_faces

        result = grey_faces(result)
    return result
