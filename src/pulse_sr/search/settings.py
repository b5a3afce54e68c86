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
#: per backend, settings that fast mode uses instead of PULSE's defaults (a field the caller set to
#: something other than PULSE's default keeps the caller's value). dcgan-digiface, 10 planted
#: problems x 4 candidates: lr 0.4 -> 1.5 and the best of 8 starts take the candidates within eps
#: from 20/40 to 31/40 with a third fewer steps (benchmarks/README.md).
FAST_PRESETS: dict[str, dict[str, object]] = {"dcgan": {"lr": 1.5, "start_pool": 8}}
#: where latents start: PULSE's draw mapped through the Gaussian fit, or the mapping's ``w_avg``
STARTS = ("gaussian", "w_avg")
#: full steps through ``torch.compile`` (search/compiled.py): off, on, or auto (on from 512 px)
COMPILE = ("off", "on", "auto")
#: what the command line and the web app run unless told otherwise; the library's
#: ``SearchSettings`` defaults stay the original loop (mode faithful, compile off)
FRONT_END_DEFAULTS: dict[str, str] = {"mode": "auto", "compile": "auto"}


@dataclass(frozen=True)
class SearchSettings:
    """Every knob of the PULSE search. Defaults are the original's (CVPR 2020 code)."""

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
    #: "faithful" (default, the original loop) or "fast" (see MODES)
    mode: str = "faithful"
    #: "gaussian" (PULSE) or "w_avg" (projector-style: every candidate starts at the tracked w_avg)
    start: str = "gaussian"
    #: fast mode: side of the truncated synthesis (0 = auto: twice the input side, at least 32)
    coarse_side: int = 0
    #: fast mode: steps through the truncated synthesis before the full network takes over
    #: (-1 = auto: 80 % of ``steps``)
    coarse_steps: int = -1
    #: fast mode: a true full-resolution evaluation (eps check, head correction) every this many steps
    refresh_every: int = 5
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
    #: each candidate starts at the best (lowest L2 to the input) of this many seeded draws, its own
    #: PULSE draw among them: forward passes only (1 = PULSE's single draw)
    start_pool: int = 1
    given: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bad_noise_layers"] = list(self.bad_noise_layers)
        return d


@dataclass
class Candidate:
    """One face found by the search, with its own proof.

    hr: [3, R, R] in [0, 1]; lr: [3, h, w] in [0, 1] = bicubic_downsample(hr);
    l2: mean squared error between lr and the input (both in [0, 1]);
    converged: l2 <= eps.
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

    def summary(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "steps_run": self.steps,
            "best_step": self.best_step,
            "final_l2": self.l2,
            "converged": self.converged,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class SearchResult:
    """All candidates of one search, batched.

    hr [n, 3, R, R] and lr [n, 3, h, w] in [0, 1]; latents [n, L, w_dim] (the
    search variable on its sphere; L = num_ws, or 1 when tiled); ws [n, num_ws, w_dim]
    (what synthesis received); l2 [n]; converged [n] bool; steps [n];
    loss_history / l2_history [steps_run, n] (nan once a candidate stopped).
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
                )
            )
        return out


@dataclass
class StepInfo:
    """What the progress callback sees after each step.

    step: 1-based step just finished; l2 [n] current per-candidate L2 (best so far);
    converged [n] bool; active [n] bool (still optimising); hr: [n, 3, R, R] in [0, 1]
    current best image of each candidate (detached, on CPU), only when the caller
    asked for images.
    """

    step: int
    total_steps: int
    l2: Tensor
    best_l2: Tensor
    converged: Tensor
    active: Tensor
    hr: Tensor | None = None
