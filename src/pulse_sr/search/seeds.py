"""Named random streams: seeds for independent draws derived from one user seed."""
from __future__ import annotations

import hashlib


def stream_seed(tag: str, seed: int, k: int = 0) -> int:
    """A 32-bit seed for the named random stream of (seed, k).

    ``torch.Generator().manual_seed`` keeps only the low 32 bits of a CPU seed (``1 << 40`` and
    ``0`` give the same draws), so streams are told apart by hashing, not by adding large offsets.
    """
    digest = hashlib.sha256(f"pulse-sr/{tag}/{seed}/{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
