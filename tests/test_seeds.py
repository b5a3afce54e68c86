"""Random streams: the start pool's draws are new draws, not the candidates' own starts again."""
from __future__ import annotations

import torch

from pulse_sr.search.seeds import stream_seed


def test_stream_seeds_are_32_bit_and_distinct() -> None:
    seeds = {stream_seed(tag, s, k) for tag in ("start-pool", "encoder-start") for s in range(20) for k in range(8)}
    assert len(seeds) == 2 * 20 * 8 and all(0 <= s < 2**32 for s in seeds)
    assert stream_seed("start-pool", 3, 1) == stream_seed("start-pool", 3, 1)


def test_start_pool_draws_are_not_the_candidates_own_start(tiny) -> None:
    """Regression: the pool was seeded ``(1 << 40) + seed + k``, which a CPU generator truncates
    to ``seed + k``, the seed of the candidate's own start: its first extra draw repeated the start,
    so a pool of K held K-1 distinct points."""
    from pulse_sr.search.latents import best_of_pool, initial_state
    from pulse_sr.search.settings import SearchSettings

    settings = SearchSettings(start_pool=4)
    start = initial_state(tiny, SearchSettings(), n=2, seed=7, gaussian_fit=None, device=torch.device("cpu"))
    seen: list[torch.Tensor] = []

    def score(latents: torch.Tensor, noise: list, k: int) -> torch.Tensor:
        seen.append(latents.clone())
        return torch.arange(len(latents), dtype=torch.float32)  # keep the own start

    best_of_pool(tiny, start, settings, seed=7, score=score)
    draws = torch.cat(seen)  # candidate 0's 4 draws, then candidate 1's
    flat = draws.reshape(len(draws), -1)
    assert torch.cdist(flat, flat).add(torch.eye(len(flat)) * 1e9).min() > 1e-3  # 8 distinct points
