"""Peak memory of a measurement, sampled: resident anonymous memory (heap) and file-backed memory (mappings).

``ru_maxrss`` counts memory-mapped Arrow pages the same as heap allocations; the sampler separates them, so
a reader can tell "holds the dataset in memory" (anonymous) from "maps the dataset file" (file-backed, freed
by the kernel under pressure). It sums this process and its child processes (tokenizing workers).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _status_kib(pid: int) -> tuple[int, int]:
    anon = file = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith(("RssFile:", "RssShmem:")):
                file += int(line.split()[1])
    except (OSError, ValueError):
        pass
    return anon, file


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # psutil missing or the process tree changed while reading
        return []


class MemorySampler:
    """``with MemorySampler() as m: ...`` then ``m.peak_anon_mib``, ``m.peak_file_mib``, ``m.peak_total_mib``."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_anon = self.peak_file = self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        pids = [os.getpid(), *_children(os.getpid())]
        anon = file = 0
        for pid in pids:
            a, f = _status_kib(pid)
            anon, file = anon + a, file + f
        self.peak_anon = max(self.peak_anon, anon)
        self.peak_file = max(self.peak_file, file)
        self.peak_total = max(self.peak_total, anon + file)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def peak_anon_mib(self) -> float:
        return self.peak_anon / 1024

    @property
    def peak_file_mib(self) -> float:
        return self.peak_file / 1024

    @property
    def peak_total_mib(self) -> float:
        return self.peak_total / 1024


def current_anon_mib() -> float:
    return _status_kib(os.getpid())[0] / 1024


def current_file_mib() -> float:
    return _status_kib(os.getpid())[1] / 1024
