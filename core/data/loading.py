"""Reading one ``datasets:`` entry into a ``datasets.Dataset``, and fingerprinting its content.

``path`` is a local file (json, jsonl, csv, tsv, parquet, arrow, txt, optionally compressed), a local
folder (data files, or a dataset written by ``save_to_disk``), or a hub dataset id. A hub id that is not
in the local cache and cannot be downloaded is a :class:`DataError` that says so.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any, Iterator

from gym.errors import DataError

_FORMATS = {
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


def data_format(path: Path, ds_type: str | None) -> str | None:
    """The ``datasets`` builder for a file: ``ds_type`` if given, else from the extension (``.jsonl.gz`` too)."""
    if ds_type:
        return ds_type
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    return _FORMATS.get(suffixes[-1]) if suffixes else None


def _looks_local(path: str) -> bool:
    """Paths that cannot be hub ids: absolute, ./ ~ prefixed, deeper than owner/name, or with a data extension."""
    if path.startswith(("/", "./", "../", "~", "\\")) or path.count("/") > 1 or os.sep != "/" and os.sep in path:
        return True
    return data_format(Path(path), None) is not None


def describe(entry: Any) -> str:
    extra = f" (split {entry.split})" if entry.split != "train" else ""
    return f"{entry.path}{extra}"


# ------------------------------------------------------------------------------------------ loading


def resolve_path(entry: Any) -> Path:
    """The local path of an entry; ``builtin:`` datasets are generated into gym's cache first."""
    from gym.builtin import is_builtin, materialize_dataset

    if is_builtin(entry.path):
        return Path(materialize_dataset(entry.path))
    return Path(entry.path).expanduser()


def load_entry(entry: Any, num_proc: int | None = None, local_cache_dir: str | None = None):
    """The rows of one dataset entry, sharded as ``shards`` / ``shards_idx`` ask.

    Local files are converted to arrow under ``local_cache_dir`` (a scratch folder: gym keeps its own
    cache of the prepared rows); hub datasets use the usual Hugging Face cache, where offline copies live.
    """
    path = resolve_path(entry)
    if path.exists():
        dataset = _load_local(entry, path, num_proc, local_cache_dir)
    elif _looks_local(entry.path):
        raise DataError(f"dataset {entry.path}: no such file or folder (looked at {path.resolve()})")
    else:
        dataset = _load_hub(entry, num_proc)
    if entry.shards:
        index = entry.shards_idx or 0
        if index >= entry.shards:
            raise DataError(f"dataset {entry.path}: shards_idx {index} must be below shards {entry.shards}")
        dataset = dataset.shard(num_shards=entry.shards, index=index)
    return dataset


def _load_local(entry: Any, path: Path, num_proc: int | None, cache_dir: str | None):
    import datasets

    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        return _pick_split(entry, _guard(entry, lambda: datasets.load_from_disk(str(path))))
    if path.is_file():
        builder = data_format(path, entry.ds_type)
        if builder is None:
            raise DataError(
                f"dataset {entry.path}: cannot tell the file format from its name; set ds_type "
                "(json, csv, parquet, arrow or text)"
            )
        if entry.data_files:
            raise DataError(f"dataset {entry.path}: data_files is for folders and hub datasets, not for a single file")
        split = entry.split or "train"
        if not split.startswith("train"):
            raise DataError(
                f"dataset {entry.path}: a single file holds one split, 'train' (set split: train, or point path "
                "at a folder with one file per split)"
            )
        return _guard(
            entry,
            lambda: datasets.load_dataset(
                builder, data_files={"train": str(path)}, split=split, num_proc=num_proc, cache_dir=cache_dir
            ),
        )
    # a folder of data files
    kwargs: dict[str, Any] = {"split": entry.split, "num_proc": num_proc, "cache_dir": cache_dir}
    if entry.data_files:
        kwargs["data_files"] = entry.data_files
    if entry.ds_type:
        return _guard(entry, lambda: datasets.load_dataset(entry.ds_type, data_dir=str(path), **kwargs))
    if entry.name:
        kwargs["name"] = entry.name
    return _guard(entry, lambda: datasets.load_dataset(str(path), **kwargs))


def _pick_split(entry: Any, loaded: Any):
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        if entry.split not in loaded:
            raise DataError(
                f"dataset {entry.path}: no split {entry.split!r} (it has {', '.join(loaded)}); set split"
            )
        return loaded[entry.split]
    return loaded


def _guard(entry: Any, load):
    """Run a ``datasets`` load and turn its errors into a DataError naming the dataset."""
    try:
        return load()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"dataset {describe(entry)}: file not found: {exc}") from None
    except Exception as exc:  # datasets raises many kinds (DatasetGenerationError, ArrowInvalid, ValueError)
        cause = exc.__cause__ or exc.__context__
        detail = f"{type(exc).__name__}: {exc}"
        if cause is not None and str(cause) and str(cause) not in str(exc):
            detail += f" (caused by {type(cause).__name__}: {str(cause)[:300]})"
        raise DataError(f"dataset {describe(entry)}: cannot be read: {detail}") from None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers at all (a quick TCP connect), unless offline mode is set."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    from urllib.parse import urlparse

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_mode() -> Iterator[None]:
    """Make ``datasets`` and ``huggingface_hub`` read only from the local cache for a while."""
    import datasets.config
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _load_hub(entry: Any, num_proc: int | None):
    import datasets

    kwargs: dict[str, Any] = {"split": entry.split, "num_proc": num_proc}
    if entry.name:
        kwargs["name"] = entry.name
    if entry.data_files:
        kwargs["data_files"] = entry.data_files
    if entry.revision:
        kwargs["revision"] = entry.revision
    online = hub_reachable()
    try:
        if online:
            return datasets.load_dataset(entry.path, **kwargs)
        with offline_mode():
            return datasets.load_dataset(entry.path, **kwargs)
    except Exception as exc:
        if online and not isinstance(exc, (ConnectionError, OSError)):
            raise DataError(f"dataset {describe(entry)} (hub): cannot be loaded: {type(exc).__name__}: {exc}") from None
        raise DataError(
            f"dataset {entry.path}: no local file or folder has this name, and as a hub dataset it is not in the "
            f"local cache and cannot be downloaded ({'the hub did not answer' if online else 'no connection to the hub'}"
            f"{'; offline mode' if _offline_env() else ''}). Point `path` at a local file or folder "
            "(json, jsonl, csv, parquet, arrow)."
        ) from None


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------------------------- fingerprints


def _hash_file(path: Path) -> str:
    try:
        import xxhash

        digest = xxhash.xxh3_128()
    except ImportError:  # pragma: no cover
        import hashlib

        digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def content_fingerprint(entry: Any) -> dict[str, Any]:
    """What identifies the data of an entry: the bytes of its local files, or the hub id and revision."""
    path = resolve_path(entry)
    if path.is_file():
        return {"kind": "file", "size": path.stat().st_size, "hash": _hash_file(path)}
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        return {
            "kind": "folder",
            "files": [[str(p.relative_to(path)), p.stat().st_size, _hash_file(p)] for p in files],
        }
    if _looks_local(entry.path):
        raise DataError(f"dataset {entry.path}: no such file or folder (looked at {path.resolve()})")
    return {"kind": "hub", "id": entry.path, "revision": entry.revision}
