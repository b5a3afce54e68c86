"""The range phase after the latent search: which candidates continue in the extended range.

``settings.range``: ``latent`` (PULSE: nothing happens here), ``extended`` (every candidate
continues with the ILO-style search of :mod:`pulse_sr.search.extended` from its latent result),
``auto`` (only the candidates of an input none of whose candidates came within its threshold:
a face the generator can make keeps the generator's own face). A continued candidate's entry
in the result is replaced by the extended one (its image, downscale, L2, convergence) and its
``extras`` say so: ``range``, ``left_range`` and ``radius_used`` (l1 distance of the activation
from the latent's, relative to the latter's l1 norm; never above ``range_radius``).

For a grey input (a :class:`~pulse_sr.degradations.grey.Grey` operator: luma alone leaves
chroma free) the generator's chroma prior (:mod:`pulse_sr.search.chroma`) is a penalty of the
extended search, and every candidate's chroma distance is reported.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from pulse_sr.degradations.grey import Grey
from pulse_sr.generators.base import FaceGenerator
from pulse_sr.search.observations import Observation
from pulse_sr.search.settings import SearchResult, SearchSettings


def wanted(settings: SearchSettings, result: SearchResult) -> Tensor:
    """``[n]`` bool: the candidates the range phase continues."""
    n = result.n
    if settings.range == "extended":
        return torch.ones(n, dtype=torch.bool)
    if settings.range == "auto" and not bool(result.converged.any()):
        return torch.ones(n, dtype=torch.bool)
    return torch.zeros(n, dtype=torch.bool)


def is_grey(observation: Observation) -> bool:
    """Whether the input is matched on luma only."""
    return isinstance(observation.operator, Grey)


def chroma_prior_for(G: FaceGenerator, observation: Observation) -> Any:
    """The generator's chroma prior for a grey input (cached per weights), else None."""
    if not is_grey(observation):
        return None
    from pulse_sr.search.chroma import cached_chroma_prior

    return cached_chroma_prior(G)


def extend_result(G: FaceGenerator, result: SearchResult, observation: Observation, *,
                  settings: SearchSettings, seed: int, device: torch.device) -> SearchResult:
    """``result`` (the latent search of one input) after the range phase (see the module docstring).
    ``G``: the generator the search ran (eval mode, on ``device``)."""
    prior = chroma_prior_for(G, observation)
    extras: list[dict[str, Any]] = [{"range": "latent", "left_range": False, "radius_used": 0.0}
                                    for _ in range(result.n)]
    rows = wanted(settings, result).nonzero().flatten()
    if rows.numel():
        result = _extend_rows(G, result, observation, rows, prior, extras, settings=settings, seed=seed,
                              device=device)
    if prior is not None:
        with torch.no_grad():
            dist = prior.distance(result.hr.to(device)).cpu()
        for k, e in enumerate(extras):
            e["chroma_distance"] = float(dist[k])
            e["chroma_plausible"] = bool(dist[k] <= prior.radius)
    return dataclasses.replace(result, extras=extras)


def _extend_rows(G: FaceGenerator, result: SearchResult, observation: Observation, rows: Tensor, prior: Any,
                 extras: list[dict[str, Any]], *, settings: SearchSettings, seed: int,
                 device: torch.device) -> SearchResult:
    """Run the extended search for candidates ``rows`` from their latent results; a candidate takes
    the extended face unless that is worse (outside the threshold with a higher L2) than its latent one."""
    from pulse_sr.generators.split import default_layer
    from pulse_sr.search.extended import extended_search

    layer = settings.range_layer or default_layer(G)
    ext = extended_search(
        G, observation.target, operator=observation.operator, start_ws=result.ws[rows].to(device),
        start_noise=[t[rows].to(device) for t in result.noise] or None, layer=layer,
        radius=settings.range_radius, steps=settings.range_steps or settings.steps,
        threshold=observation.threshold, mask=observation.mask, seed=seed, chroma=prior,
    )
    hr, lr, l2, conv = result.hr.clone(), result.lr.clone(), result.l2.clone(), result.converged.clone()
    for j, k in enumerate(rows.tolist()):
        entry = {key: v for key, v in ext.summary(j).items() if key not in ("final_l2", "converged")}
        entry["range_steps_run"] = entry.pop("steps_run", None)
        entry["latent_l2"] = float(result.l2[k])
        keep_latent = not bool(ext.converged[j]) and float(ext.l2[j]) >= float(result.l2[k])
        if keep_latent:
            extras[k].update({**entry, "range": "latent", "left_range": False, "radius_used": 0.0,
                              "extended_l2": float(ext.l2[j]), "note": "the extended search did not improve"})
            continue
        extras[k].update(entry)
        hr[k], lr[k], l2[k], conv[k] = ext.hr[j], ext.lr[j], ext.l2[j], bool(ext.converged[j])
    return dataclasses.replace(result, hr=hr, lr=lr, l2=l2, converged=conv)
