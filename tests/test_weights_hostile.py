"""Hostile weights files (issue 14): bounded work and memory, validated before allocation,
usable dtypes and finite values only, hashes from the bytes."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from pulse_sr.errors import WeightsError
from pulse_sr.formats import nvidia_pickle
from pulse_sr.formats.nvidia_pickle import load_nvidia_pickle, network_kwargs


def _self_referencing(levels: int) -> list:
    """Each level holds the next one twice: ``2**levels`` leaves, a few bytes per level pickled."""
    node: list = []
    for _ in range(levels):
        node = [node, node]
    return node


def _record_pickle(init_kwargs: dict) -> bytes:
    """A G_ema network record pickle, assembled by opcode (no NVIDIA class needed to write it)."""
    meta = {"type": "class", "version": 4, "module_src": "", "class_name": "Generator",
            "state": {"_init_kwargs": init_kwargs, "_parameters": {}, "_buffers": {}, "_modules": {}}}
    inner = pickle.dumps(meta, protocol=2)[2:-1]  # without PROTO and STOP; memoised sharing kept
    key = b"G_ema"
    return (b"\x80\x02}" + b"X" + len(key).to_bytes(4, "little") + key
            + b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n" + inner + b"\x85R" + b"s.")


def test_pickle_bomb_self_referencing_kwargs_is_refused_by_counting(tmp_path: Path) -> None:
    # Regression: 40 levels referencing the next twice passed the allow-list, and
    # network_kwargs() copied every branch (2**40 nodes). The copy is now counted.
    path = tmp_path / "bomb.pkl"
    path.write_bytes(_record_pickle({"z_dim": _self_referencing(40)}))
    assert path.stat().st_size < 1000
    record = load_nvidia_pickle(path)["G_ema"]  # loading itself is linear (memoised objects)
    budget = nvidia_pickle._CopyBudget(max_nodes=10_000)
    with pytest.raises(WeightsError, match="expand to more than 10,000") as info:
        network_kwargs(record, budget)
    # the work done stops one node past the budget, whatever the data claims to hold
    assert budget.nodes == 10_001 and info.value.data["nodes"] == 10_001
    assert "\n" not in str(info.value)


def test_pickle_bomb_default_budget_through_the_loader(tmp_path: Path) -> None:
    from pulse_sr.generators.registry import load_generator

    path = tmp_path / "bomb.pkl"
    path.write_bytes(_record_pickle({"z_dim": _self_referencing(40)}))
    with pytest.raises(WeightsError) as info:
        load_generator("stylegan2", weights=path)
    assert str(path) in str(info.value) and "1,000,000" in str(info.value)
    assert info.value.data["nodes"] == nvidia_pickle.MAX_PLAIN_NODES + 1


def test_pickle_bomb_small_enough_to_copy_is_still_refused(tmp_path: Path) -> None:
    # 2**21 leaves (4.2M nodes): today's code copies them all and returns; the budget refuses
    path = tmp_path / "bomb21.pkl"
    path.write_bytes(_record_pickle({"z_dim": _self_referencing(21)}))
    record = load_nvidia_pickle(path)["G_ema"]
    with pytest.raises(WeightsError, match="expand to more than"):
        network_kwargs(record)


def test_deeply_nested_kwargs_are_refused(tmp_path: Path) -> None:
    node: list = []
    for _ in range(300):
        node = [node]
    path = tmp_path / "deep.pkl"
    path.write_bytes(_record_pickle({"mapping_kwargs": node}))
    record = load_nvidia_pickle(path)["G_ema"]
    with pytest.raises(WeightsError, match="deeper than 200 levels"):
        network_kwargs(record)
