"""Adam without ``torch.optim``: the same arithmetic, none of its start-up cost.

Constructing any ``torch.optim`` optimizer imports ``torch._dynamo`` (its step is wrapped for
``torch.compile``), which takes about as long as ``import torch`` itself (measured by
``benchmarks/startup.py``: 4.4 s each on this loaded 2-core machine). The search needs none of
it. :class:`Adam` runs the update of ``torch.optim.Adam``'s single-tensor path (the one it uses
for CPU tensors; betas 0.9/0.999, eps 1e-8, no weight decay, no amsgrad) op for op, so
results are bit for bit those of ``torch.optim.Adam`` (tested in tests/test_batched.py).

It offers what the search uses: ``param_groups`` (one group; its ``"lr"`` may change between
steps) and ``step()`` over the parameters' ``.grad`` (None: skipped, as torch does).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Adam:
    """Adam over ``params`` (tensors updated in place from their ``.grad``) at learning rate ``lr``."""

    def __init__(self, params: list[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.param_groups: list[dict[str, Any]] = [{"params": list(params), "lr": float(lr)}]
        self.betas, self.eps = betas, eps
        #: per parameter: (step count, first moment, second moment), made at its first step
        self.state: dict[int, tuple[list[float], Tensor, Tensor]] = {}

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        beta1, beta2 = self.betas
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if id(p) not in self.state:
                    self.state[id(p)] = ([0.0], torch.zeros_like(p, memory_format=torch.preserve_format),
                                         torch.zeros_like(p, memory_format=torch.preserve_format))
                count, exp_avg, exp_avg_sq = self.state[id(p)]
                count[0] += 1.0
                # torch.optim.Adam's single-tensor update, in its order of operations
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1 ** count[0]
                bias_correction2 = 1 - beta2 ** count[0]
                step_size = lr / bias_correction1
                denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(self.eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)
