"""Known checkpoints (the zoo) and their downloader.

``ensure_weights(name, allow_download=..., progress=...)`` returns the local
path of a zoo checkpoint (a folder for PULSE's StyleGAN1 pair, the ``.pkl``
file otherwise), downloading it with consent; ``pulse-sr weights`` lists,
downloads and verifies them. No torch import here.
"""
from __future__ import annotations

from pulse_sr.weights.download import (
    ALLOW_ENV,
    Fetched,
    download_consent,
    download_entry,
    ensure_weights,
    fetch,
    read_manifest,
    sha256_file,
    verify_entry,
)
from pulse_sr.weights.zoo import (
    BASE_URL_ENV,
    CARDS,
    WEIGHTS_ENV,
    ZOO,
    ZooEntry,
    ZooFile,
    entry_dir,
    file_url,
    get_entry,
    is_cached,
    is_zoo_name,
    local_path,
    weights_root,
)

__all__ = [
    "ALLOW_ENV", "BASE_URL_ENV", "CARDS", "WEIGHTS_ENV", "ZOO", "Fetched", "ZooEntry", "ZooFile",
    "download_consent", "download_entry", "ensure_weights", "entry_dir", "fetch", "file_url", "get_entry",
    "is_cached", "is_zoo_name", "local_path", "read_manifest", "sha256_file", "verify_entry", "weights_root",
]
