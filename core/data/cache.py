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
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

# Bump when the layout or the meaning of prepared rows changes (labels, packing, columns).
DATA_FORMAT_VERSION = 1


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


def new_build_dir(root: Path, fingerprint: str) -> Path:
    path = root / f".tmp-{fingerprint}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def publish(build_dir: Path, final: Path) -> bool:
    """Rename the finished build into place; ``False`` (and the build removed) if another process won."""
    try:
        os.rename(build_dir, final)
        return True
    except OSError:
        if final.exists():
            shutil.rmtree(build_dir, ignore_errors=True)
            return False
        raise
