"""Telling a local path from a Hugging Face hub id, and whether the hub can be reached (no torch imports).

One home for these rules: model loading, data loading and the model card all ask here.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

# File extensions that mark a dataset path as a local file, never a hub id.
DATA_EXTENSIONS = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".arrow", ".txt")
COMPRESSION_EXTENSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


def looks_like_local_path(name: str) -> bool:
    """Paths that cannot be hub ids: absolute, ``./`` ``../`` ``~`` prefixed, deeper than ``owner/name``, ``.``,
    or ending in a data file extension."""
    if name in (".", "..") or name.startswith(("/", "./", "../", "~", "\\", ".\\")) or name.count("/") > 1:
        return True
    if os.sep != "/" and os.sep in name:
        return True
    suffixes = [s.lower() for s in Path(name).suffixes]
    while suffixes and suffixes[-1] in COMPRESSION_EXTENSIONS:
        suffixes.pop()
    return bool(suffixes) and suffixes[-1] in DATA_EXTENSIONS


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` names something on the hub: not built in, not an existing path, not path-like."""
    if not name or name.startswith("builtin:") or Path(name).expanduser().exists():
        return False
    return not looks_like_local_path(name)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """Whether offline mode is asked for (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    if _flag("HF_HUB_OFFLINE") or _flag("TRANSFORMERS_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return False
    return bool(constants.HF_HUB_OFFLINE)


def push_problem(repo_id: str) -> str | None:
    """Why a push to ``repo_id`` at the end of a run would fail, found before the run starts, or ``None``."""
    if hub_offline():
        return "the hub is offline here (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set)"
    from huggingface_hub import get_token

    if not get_token():
        return "no hub token is set (HF_TOKEN, or `hf auth login`)"
    if not hub_reachable():
        return "the hub cannot be reached from here"
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers at all (a quick TCP connect), unless offline mode is set."""
    if hub_offline():
        return False
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
