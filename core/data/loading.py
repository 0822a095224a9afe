"""Reading one ``datasets:`` entry into a ``datasets.Dataset``, and fingerprinting its content.

``path`` is a local file (json, jsonl, csv, tsv, parquet, arrow, txt, optionally compressed), a local
folder (data files, or a dataset written by ``save_to_disk``), or a hub dataset id. A hub id that is not
in the local cache and cannot be downloaded is a :class:`DataError` that says so.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from gym.errors import DataError
from gym.files import hash_file
from gym.hub import COMPRESSION_EXTENSIONS, hub_offline, hub_reachable, looks_like_local_path

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


def data_format(path: Path, ds_type: str | None) -> str | None:
    """The ``datasets`` builder for a file: ``ds_type`` if given, else from the extension (``.jsonl.gz`` too)."""
    if ds_type:
        return ds_type
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSION_EXTENSIONS:
        suffixes.pop()
    return _FORMATS.get(suffixes[-1]) if suffixes else None


def describe(entry: Any) -> str:
    extra = f" (split {entry.split})" if entry.split != "train" else ""
    return f"{entry.path}{extra}"


# ------------------------------------------------------------------------------------------ loading


def resolve_path(entry: Any) -> Path:
    """The local path of an entry; ``builtin:`` datasets are generated into gym's cache first."""
    from gym.builtin_data import is_builtin, materialize_dataset

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
    elif looks_like_local_path(entry.path):
        raise DataError(f"dataset {entry.path}: no such file or folder (looked at {path.resolve()})")
    else:
        dataset = _load_hub(entry, num_proc)
    if entry.shards:  # shards_idx < shards was checked at validation
        dataset = dataset.shard(num_shards=entry.shards, index=entry.shards_idx or 0)
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
        if _is_blank(path):
            raise DataError(f"dataset {entry.path}: the file is empty (no rows to read)")
        if builder in ("json", "csv", "text"):
            check_utf8(path, f"dataset {entry.path}")
        split = entry.split or "train"
        if not split.startswith("train"):
            raise DataError(
                f"dataset {entry.path}: a single file holds one split, 'train' (set split: train, or point path "
                "at a folder with one file per split)"
            )
        try:
            return _guard(
                entry,
                lambda: datasets.load_dataset(
                    builder, data_files={"train": str(path)}, split=split, num_proc=num_proc, cache_dir=cache_dir
                ),
            )
        except DataError:
            place = diagnose_json(path) if builder == "json" else None
            if place is None:
                raise
            raise DataError(f"dataset {entry.path}, {place}") from None
    # a folder of data files
    if not entry.data_files and not entry.ds_type:
        formats: dict[str, list[str]] = {}
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            kind = data_format(file, None)
            if kind is not None:
                formats.setdefault(kind, []).append(file.name)
        if len(formats) > 1:
            found = "; ".join(f"{kind}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                              for kind, names in sorted(formats.items()))
            raise DataError(
                f"dataset {entry.path}: the folder holds files of several formats ({found}); only one would be read. "
                "Choose with data_files (or ds_type)"
            )
        for kind, names in formats.items():
            if kind in ("json", "csv", "text"):
                for name in names:
                    check_utf8(next(path.rglob(name)), f"dataset {entry.path}, file {name}")
    kwargs: dict[str, Any] = {"split": entry.split, "num_proc": num_proc, "cache_dir": cache_dir}
    if entry.data_files:
        kwargs["data_files"] = entry.data_files
    if entry.ds_type:
        return _guard(entry, lambda: datasets.load_dataset(entry.ds_type, data_dir=str(path), **kwargs))
    if entry.name:
        kwargs["name"] = entry.name
    return _guard(entry, lambda: datasets.load_dataset(str(path), **kwargs))


def line_of_row(entry: Any, row: int) -> int | None:
    """The 1-based line of row ``row`` (0-based) in a local JSON-lines file, as an editor shows it (blank lines
    are skipped by the reader, so they are skipped here); ``None`` for other files. Read only on the error path."""
    try:
        path = resolve_path(entry)
    except Exception:  # a hub dataset, a bad builtin name: no file lines to name
        return None
    if not path.is_file() or data_format(path, entry.ds_type) != "json" or entry.shards:
        return None
    if path.suffix.lower() in COMPRESSION_EXTENSIONS:
        return None
    seen = -1
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            stripped = line.strip()
            if number == 1 and stripped.startswith(b"["):
                return None  # a JSON array, not JSON lines
            if stripped:
                seen += 1
                if seen == row:
                    return number
    return None


def check_utf8(path: Path, what: str, chunk_size: int = 1 << 22) -> None:
    """Raise a DataError naming the line and column (in characters) of the first byte that is not UTF-8 in a text
    data file; ``what`` names the file in the message.

    The readers would fail later on the whole batch, naming its first row; this reads the file once (on a
    cache miss only) so the error names the place an editor shows. Compressed files are left to the reader."""
    import codecs

    if path.suffix.lower() in COMPRESSION_EXTENSIONS:
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(chunk_size)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                bad = offset - (len(exc.object) - len(chunk)) + exc.start  # the decoder may hold a partial char
                handle.seek(0)
                before = handle.read(bad)
                line = before.count(b"\n") + 1
                column = len(before[before.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1  # in characters
                raise DataError(
                    f"{what}, line {line}, column {column}: the bytes are not valid UTF-8 "
                    f"(byte 0x{exc.object[exc.start]:02x}); save the file as UTF-8"
                ) from None
            if not chunk:
                return
            offset += len(chunk)


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "a mapping"


def diagnose_json(path: Path) -> str | None:
    """Where a JSON / JSON-lines file the reader refused goes wrong, as an editor shows it: the first line that is
    not JSON, or the first value whose type differs from the one its column had so far. Read on the error path only;
    ``None`` when nothing is found (the reader's own message is kept then)."""
    import json

    if path.suffix.lower() in COMPRESSION_EXTENSIONS:
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    rows: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        try:
            rows = [(index, row) for index, row in enumerate(json.loads(text))]
        except json.JSONDecodeError as exc:
            return f"line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})"
        where = "row {}"
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                return f"line {number}, column {exc.colno}: not valid JSON ({exc.msg})"
        where = "line {}"
    first: dict[str, tuple[str, int]] = {}
    for place, row in rows:
        if not isinstance(row, dict):
            return f"{where.format(place)}: each row must be a JSON object of fields, not {_kind(row) or 'null'}"
        for field, value in row.items():
            kind = _kind(value)
            if kind is None:
                continue
            seen = first.setdefault(field, (kind, place))
            if seen[0] != kind:
                return (f"{where.format(place)}, field {field!r}: {kind} here but {seen[0]} at "
                        f"{where.format(seen[1])}; a field must hold one type in every row")
    return None


def _is_blank(path: Path, limit: int = 1 << 20) -> bool:
    """Whether an uncompressed text file holds nothing but whitespace (checked for files up to ``limit`` bytes)."""
    size = path.stat().st_size
    if size == 0:
        return True
    if size > limit or path.suffix.lower() in (*COMPRESSION_EXTENSIONS, ".parquet", ".arrow"):
        return False
    return not path.read_bytes().strip()


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
            f"{'; offline mode' if hub_offline() else ''}). Point `path` at a local file or folder "
            "(json, jsonl, csv, parquet, arrow)."
        ) from None


# ------------------------------------------------------------------------------------- fingerprints


def content_fingerprint(entry: Any) -> dict[str, Any]:
    """What identifies the data of an entry: the bytes of its local files, or the hub id and revision."""
    path = resolve_path(entry)
    if path.is_file():
        return {"kind": "file", "size": path.stat().st_size, "hash": hash_file(path)}
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        return {
            "kind": "folder",
            "files": [[str(p.relative_to(path)), p.stat().st_size, hash_file(p)] for p in files],
        }
    if looks_like_local_path(entry.path):
        raise DataError(f"dataset {entry.path}: no such file or folder (looked at {path.resolve()})")
    return {"kind": "hub", "id": entry.path, "revision": entry.revision}
