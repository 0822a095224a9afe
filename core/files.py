"""Writing files and folders so that a reader never sees half of one, and hashing file contents."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def publish(build: Path, final: Path) -> bool:
    """Move a finished ``build`` file or folder to ``final`` in one rename.

    Returns ``True`` when this call put it there, ``False`` when another process won the race (its copy is
    kept and ``build`` is removed).
    """
    try:
        if build.is_file():
            os.replace(build, final)
        else:
            os.rename(build, final)
        return True
    except OSError:
        if not final.exists():
            raise
        return False
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True) if build.is_dir() else build.unlink(missing_ok=True)


def hash_file(path: Path) -> str:
    """A fast hash of a file's bytes (xxh3-128 when xxhash is installed, else blake2b)."""
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
