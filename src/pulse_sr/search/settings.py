"""Search settings and results: plain dataclasses, no behaviour beyond summaries."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of import time, so the CLI's --help is fast
    from torch import Tensor

OPTIMIZERS = ("adam", "sgd", "sgdm", "adamax")
#: the original code's lr schedules
PULSE_SCHEDULES = ("fixed", "linear1cycle", "linear1cycledrop")
#: PULSE's and ``cosine_restart`` (opt-in; see search/schedules.py)
SCHEDULES = (*PULSE_SCHEDULES, "cosine_restart")
NOISE_TYPES = ("trainable", "fixed", "zero")
#: ``faithful``: the original loop, every step through the full network. ``fast``: coarse-to-fine
#: (most steps through a synthesis truncated at ``coarse_side`` plus a fitted linear head, the
#: true network checked every ``refresh_every`` steps and run for the last steps) and lean memory;
#: for backends in ``FAST_PRESETS`` also their preset. ``auto``: ``fast`` for the backends in
#: ``FAST_PRESETS`` (where benchmarks/run.py shows it at least as often within eps, and faster),
#: else ``faithful``.
MODES = ("faithful", "fast", "auto")
#: per backend, settings that fast mode uses instead of PULSE's defaults. A field the caller gave
#: (``SearchSettings.given``) keeps the caller's value, and so, for callers of the library that
#: do not fill ``given``, does a field set to something other than PULSE's default. Chosen with
#: ``benchmarks/run.py`` on dcgan-digiface; its record ``benchmarks/results/run-dcgan.json``
#: (5 planted problems x 4 candidates, 100 steps): lr 1.5 and the best of 8 starts bring the
#: candidates within eps from 13/20 (PULSE's lr 0.4, single start) to 18/20, and the median steps
#: from 71 to 45.5.
FAST_PRESETS: dict[str, dict[str, object]] = {"dcgan": {"lr": 1.5, "start_pool": 8}}
#: where latents start: PULSE's draw mapped through the Gaussian fit, the mapping's ``w_avg``, or
#: seeded points around a learned encoder's prediction (search/encoder.py; PULSE's start where none ships)
STARTS = ("gaussian", "w_avg", "encoder")
#: full steps through ``torch.compile`` (search/compiled.py): off, on, or auto (on from 512 px)
COMPILE = ("off", "on", "auto")
#: what the command line and the web app run unless told otherwise; the library's
#: ``SearchSettings`` defaults stay the original loop (mode faithful, compile off)
FRONT_END_DEFAULTS: dict[str, str] = {"mode": "auto", "compile": "auto", "range": "auto"}
#: where faces are searched: ``latent`` (PULSE: the generator's own outputs), ``extended`` (after the
#: latent search, every candidate continues ILO-style at an intermediate activation within a ball
#: around the latent's: search/extended.py), ``auto`` (extended only for an input none of whose
#: candidates came within its threshold in the latent search)
RANGES = ("latent", "extended", "auto")


#: report.json's key order of the settings (the order the fields had before they were grouped)
_REPORT_ORDER = (
    "steps", "eps", "loss", "lr", "optimizer", "schedule", "noise", "num_trainable_noise",
    "bad_noise_layers", "tile_latent", "run_all_steps", "mode", "start", "coarse_side", "coarse_steps",
    "refresh_every", "lean_memory", "max_batch", "compile", "start_pool", "range", "range_layer",
    "range_radius", "range_steps", "given",
)


@dataclass(frozen=True)
class SearchSettings:
    """Every knob of the PULSE search, flat. Defaults are the original's (CVPR 2020 code).

    Three groups: the algorithm (what is searched and how: changes the results), the mode
    (faithful loop or coarse-to-fine, and the coarse phase's knobs), and execution (how the
    same arithmetic runs: memory, chunks, compiling; results equal up to float rounding).
    ``given`` names the fields the caller set explicitly: a preset never changes those.
    """

    # -- the algorithm ---------------------------------------------------------------------
    steps: int = 100
    eps: float = 2e-3
    loss: str = "100*L2+0.05*GEOCROSS"
    lr: float = 0.4
    optimizer: str = "adam"
    schedule: str = "linear1cycledrop"
    noise: str = "trainable"
    num_trainable_noise: int = 5
    bad_noise_layers: tuple[int, ...] = (17,)
    tile_latent: bool = False
    #: keep optimising a candidate after it is within eps (the original always ran all steps)
    run_all_steps: bool = False
    #: "gaussian" (PULSE), "w_avg" (projector-style: every candidate starts at the tracked w_avg) or
    #: "encoder" (opt-in: around the shipped encoder's prediction from the input; else PULSE's)
    start: str = "gaussian"
    #: each candidate starts at the best (lowest L2 to the input) of this many seeded draws, its own
    #: PULSE draw among them: forward passes only (1 = PULSE's single draw)
    start_pool: int = 1
    #: ``latent`` (PULSE), ``extended`` or ``auto``: see ``RANGES``
    range: str = "latent"
    #: extended range: the split point (0 = the generator's default: generators/split.py)
    range_layer: int = 0
    #: extended range: l1 radius of the ball, relative to the activation's l1 norm (default chosen by
    #: benchmarks/real_inputs.py on lfw_subset faces: faces stay faces at 0.3)
    range_radius: float = 0.3
    #: extended range: its steps (0 = as many as ``steps``)
    range_steps: int = 0

    # -- the mode ----------------------------------------------------------------------------
    #: "faithful" (default, the original loop) or "fast" (see MODES)
    mode: str = "faithful"
    #: fast mode: side of the truncated synthesis (0 = auto: twice the input side, at least 32)
    coarse_side: int = 0
    #: fast mode: steps through the truncated synthesis before the full network takes over
    #: (-1 = auto: 80 % of ``steps``)
    coarse_steps: int = -1
    #: fast mode: a true full-resolution evaluation (eps check, head correction) every this many steps
    refresh_every: int = 5

    # -- execution ---------------------------------------------------------------------------
    #: keep freed memory in the process instead of returning it to the OS (same numbers, fewer
    #: page faults; process-wide, see search/lean.py). Always on in fast mode.
    lean_memory: bool = False
    #: candidates per forward+backward of a full step (0 = auto: one at a time from 512 px on,
    #: else all at once). The same gradients, and the peak memory of ``max_batch`` candidates
    #: instead of ``n``.
    max_batch: int = 0
    #: "off" (default, eager), "on" (full steps through torch.compile: the same function up to float
    #: rounding, faster and leaner at 1024, a one-off compile cached on disk) or "auto" (on from 512 px)
    compile: str = "off"

    # -- provenance --------------------------------------------------------------------------
    #: the fields the caller set explicitly (the front ends: the flags or JSON fields the user gave).
    #: A preset (``FAST_PRESETS``) never changes these, whatever their value.
    given: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, in report.json's key order."""
        d = dataclasses.asdict(self)
        d["bad_noise_layers"] = list(self.bad_noise_layers)
        d["given"] = list(self.given)
        return {k: d[k] for k in _REPORT_ORDER}


@dataclass
class Candidate:
    """One face found by the search, with its own proof.

    hr: [3, R, R] in [0, 1]; lr: [C, h, w] in [0, 1] = the search's operator applied to hr
    (PULSE's bicubic downscale by default); l2: mean squared error between lr and the input
    (both in [0, 1]; over the known pixels when the search had a mask); converged: l2 <= the
    match threshold (``SearchResult.eps``).
    """

    index: int
    seed: int
    hr: Tensor
    lr: Tensor
    l2: float
    converged: bool
    steps: int
    best_step: int
    seconds: float
    latent: Tensor
    ws: Tensor
    noise: list[Tensor]
    loss_history: list[float]
    l2_history: list[float]
    #: where the face came from: ``range`` (latent | extended), ``left_range``, ``radius_used``
    #: (relative to the activation's l1 norm), ``chroma_distance`` (grey inputs) ...
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "steps_run": self.steps,
            "best_step": self.best_step,
            "final_l2": self.l2,
            "converged": self.converged,
            "seconds": round(self.seconds, 3),
            **self.extra,
        }


@dataclass
class SearchResult:
    """All candidates of one search, batched.

    hr [n, 3, R, R] and lr [n, C, h, w] in [0, 1] (lr = the operator applied to hr); target
    [C, h, w]; latents [n, L, w_dim] (the search variable on its sphere; L = num_ws, or 1 when
    tiled); ws [n, num_ws, w_dim] (what synthesis received); l2 [n]; converged [n] bool
    (l2 <= eps, the input's match threshold: ``settings.eps`` unless a noise model raised it);
    steps [n]; loss_history / l2_history [steps_run, n] (nan where a candidate did not run or its
    true L2 was not measured: after it stopped, and between the coarse phase's refreshes).
    """

    target: Tensor
    hr: Tensor
    lr: Tensor
    latents: Tensor
    ws: Tensor
    noise: list[Tensor]
    l2: Tensor
    converged: Tensor
    steps: Tensor
    best_step: Tensor
    seconds: Tensor
    seeds: list[int]
    loss_history: Tensor
    l2_history: Tensor
    eps: float
    settings: SearchSettings = field(default_factory=SearchSettings)
    #: per candidate, how many of its steps ran the full network (== steps in faithful mode)
    full_steps: Tensor | None = None
    #: per candidate, report entries beside the L2 (``Candidate.extra``): the range it was found in
    #: (search/ranged.py) and, for grey inputs, its chroma distance; empty dicts when none
    extras: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.hr.shape[0]

    def candidates(self) -> list[Candidate]:
        import torch

        out = []
        for k in range(self.n):
            alive = ~torch.isnan(self.l2_history[:, k])
            out.append(
                Candidate(
                    index=k,
                    seed=self.seeds[k],
                    hr=self.hr[k],
                    lr=self.lr[k],
                    l2=float(self.l2[k]),
                    converged=bool(self.converged[k]),
                    steps=int(self.steps[k]),
                    best_step=int(self.best_step[k]),
                    seconds=float(self.seconds[k]),
                    latent=self.latents[k],
                    ws=self.ws[k],
                    noise=[t[k] for t in self.noise],
                    loss_history=self.loss_history[alive, k].tolist(),
                    l2_history=self.l2_history[alive, k].tolist(),
                    extra=dict(self.extras[k]) if k < len(self.extras) else {},
                )
            )
        return out


@dataclass
class StepInfo:
    """What the progress callback sees after each step.

    step: 1-based step just finished; l2 [n]: each candidate's L2 *at this step* (of the clamped
    full-network image; not the best so far, and not monotone), nan where it was not measured this
    step (candidates that stopped before it, and coarse steps between refreshes); best_l2 [n]: the
    L2 of each candidate's best state so far (inf before its first measurement); converged [n]
    bool: best state within the threshold; active [n] bool (still optimising); hr: [n, 3, R, R] in
    [0, 1], only when the caller asked for images: this step's image for candidates measured at
    this step, else the best so far (detached, on CPU).
    """

    step: int
    total_steps: int
    l2: Tensor
    best_l2: Tensor
    converged: Tensor
    active: Tensor
    hr: Tensor | None = None
