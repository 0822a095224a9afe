"""The prepared-data cache: a fingerprint of everything that shapes the tokenized rows, and safe publishing.

A prepared dataset lives in ``dataset_prepared_path/<fingerprint>/``. It is built in a temporary folder
beside it and renamed into place when complete, so a reader never sees half a cache; a file lock makes
a second process preparing the same data wait for the first and then reuse its result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from gym.files import publish

# Bump when the layout or the meaning of prepared rows changes (columns, the report, how the tokenizer is set up).
DATA_FORMAT_VERSION = 2

# Files in a model folder that never change the tokenizer.
_NOT_TOKENIZER_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt", ".onnx")
_NOT_TOKENIZER_NAMES = ("README.md", ".gitattributes", "generation_config.json", "config.json", "gym_builtin.json")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the tokenizer's vocabulary, merges, normalization, special tokens and chat template."""
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        vocab = tokenizer.get_vocab()
        digest.update(json.dumps(sorted(vocab.items())).encode())
    added = {int(i): str(t) for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items()}
    extra = {
        "special": {k: str(v) for k, v in (getattr(tokenizer, "special_tokens_map", {}) or {}).items()},
        "added": sorted(added.items()),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "eos_token_id": getattr(tokenizer, "eos_token_id", None),
    }
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def tokenizer_files_fingerprint(cfg: Any) -> str | None:
    """The tokenizer's part of the cache key from its files and the config keys that change it, without loading
    it (no torch, no transformers); ``None`` when the tokenizer has no local folder (a hub id)."""
    from gym import builtin
    from gym.chat_templates import BUILTIN_CHAT_TEMPLATES
    from gym.files import hash_file

    name = cfg.tokenizer_config or cfg.base_model
    if builtin.is_builtin(name):
        folder = builtin.materialize_model(name)
    else:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            return None
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.name not in _NOT_TOKENIZER_NAMES and not p.name.endswith(_NOT_TOKENIZER_SUFFIXES)
    )
    settings = {
        "files": [[p.name, hash_file(p)] for p in files],
        "special_tokens": cfg.special_tokens,
        "tokens": cfg.tokens,
        "tokenizer_type": cfg.tokenizer_type,
        "chat_template": cfg.chat_template,
        "chat_template_text": BUILTIN_CHAT_TEMPLATES.get((cfg.chat_template or "").rpartition("fallback_")[2]),
        "trust_remote_code": cfg.trust_remote_code,
        "transformers": _major_version("transformers"),
        "chat_template_jinja": cfg.chat_template_jinja,
        "revision": cfg.revision_of_model,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _major_version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution).split(".")[0]
    except PackageNotFoundError:
        return None


def fingerprint_of(parts: dict[str, Any]) -> str:
    text = json.dumps({"gym_data_format": DATA_FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@contextlib.contextmanager
def cache_lock(root: Path, fingerprint: str) -> Iterator[None]:
    """Hold ``root/.<fingerprint>.lock`` while building; other processes wait for it."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{fingerprint}.lock")):
        yield


def owner_tag() -> str:
    """``<host>~<pid>``: who is building a temporary folder, so a later run can tell a dead build from a live one."""
    return f"{socket.gethostname().replace('-', '_').replace('~', '_')}~{os.getpid()}"


def new_build_dir(root: Path, fingerprint: str) -> Path:
    path = root / f".tmp-{fingerprint}-{owner_tag()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_builds(folder: Path, prefix: str) -> list[str]:
    """Remove the temporary build folders under ``folder`` named ``<prefix>...-<host>~<pid>-...`` whose process, on
    this host, is gone (killed with kill -9, say); returns their names. Builds of other hosts are left alone."""
    host = socket.gethostname().replace("-", "_").replace("~", "_")
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.glob(f"{prefix}*"):
        match = re.search(r"-([^-~]+)~(\d+)-", path.name)
        if path.is_dir() and match and match.group(1) == host and not _alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def build_and_publish(root: Path, fingerprint: str, build: Callable[[Path], Any], final: Path) -> Any | None:
    """Run ``build(folder)`` in a fresh temporary folder beside ``final`` and rename it into place.

    Returns what ``build`` returned, or ``None`` when another process published ``final`` first (its copy is
    kept). A failed build leaves nothing behind.
    """
    folder = new_build_dir(root, fingerprint)
    try:
        result = build(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return result if publish(folder, final) else None
