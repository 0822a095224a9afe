"""Shared helpers for the benchmark scripts: machine description, tables, child processes, timing.

Every measurement that reports memory runs in its own child process (``run_child``), so that the peak
resident set size it reports (``ru_maxrss``) belongs to that measurement alone.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
RESULT_MARK = "@@BENCH-RESULT "


# ----------------------------------------------------------------------------------------- machine


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> str:
    try:
        out = subprocess.run(["free", "-h"], capture_output=True, text=True, check=True).stdout.splitlines()
        return out[1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict[str, str]:
    """What docs/benchmarks.md records about the machine (versions read from package metadata, no imports)."""
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": _cpu_model(),
        "nproc": str(os.cpu_count()),
        "usable cores": str(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else "?",
        "memory": _memory_total(),
        "load average at start (1/5/15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "datasets": _version("datasets"),
        "tokenizers": _version("tokenizers"),
        "trl": _version("trl"),
        "gym": f"{_version('gym-llm')} (git {_git_revision()})",
    }


def print_machine(title: str) -> None:
    info = machine_info()
    print(f"## {title}")
    print()
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    for key, value in info.items():
        print(f"{key}: {value}")
    print()


# ------------------------------------------------------------------------------------------- tables


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers to short strings: 3 significant digits, thousands separated; other values as they are."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A Markdown table (pastes into docs/benchmarks.md as it is)."""
    rows = [list(row) for row in rows]
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for raw, row in zip(rows, cells):
        print("| " + " | ".join(
            c.rjust(w) if isinstance(v, (int, float)) and not isinstance(v, bool) else c.ljust(w)
            for v, c, w in zip(raw, row, widths)
        ) + " |")
    print()


# ------------------------------------------------------------------------------------ child processes


def peak_rss_mib() -> float:
    """Peak resident memory of this process and of its finished children (worker processes), in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports KiB


def status_kib(field: str) -> int:
    """One field of ``/proc/self/status`` in KiB (``VmRSS``: resident now; ``VmHWM``: the resident peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def current_rss_mib() -> float:
    try:
        return status_kib("VmRSS") / 1024
    except (OSError, RuntimeError):
        return float("nan")


def emit_result(result: dict[str, Any]) -> None:
    """Called by a child: hand ``result`` to the parent (one marked JSON line on stdout)."""
    sys.stdout.flush()
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_child(script: str | Path, args: Sequence[str], env: dict[str, str] | None = None,
              timeout: float | None = None, echo: bool = False) -> dict[str, Any]:
    """Run ``python script args`` in a fresh process and return the dict it passed to :func:`emit_result`.

    Raises ``RuntimeError`` with the child's output tail when it fails or reports nothing.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    cmd = [sys.executable, str(script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
    if echo:
        sys.stderr.write(proc.stdout + proc.stderr)
    if proc.returncode != 0 or result is None:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"child failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return result


def median_time(fn: Callable[[], Any], repeat: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def dir_size_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def require(paths: Iterable[str]) -> None:
    """Exit with a clear message when a part of gym this benchmark needs is not there yet."""
    missing = [p for p in paths if not (REPO / p).exists()]
    if missing:
        sys.exit(f"this benchmark needs {', '.join(missing)} (not in {REPO} yet)")


# --------------------------------------------------------------------------------------- tokenizer


def quickstart_base_model() -> str:
    """The ``base_model`` of examples/quickstart.yml (its tokenizer is "the quickstart tokenizer")."""
    path = REPO / "examples" / "quickstart.yml"
    if path.exists():
        import yaml

        value = (yaml.safe_load(path.read_text()) or {}).get("base_model")
        if value:
            return str(value)
    return "builtin:tiny-llama"


def quickstart_tokenizer():
    """(tokenizer, where it came from): the quickstart's built-in tokenizer, else ``gym.tiny.build_tokenizer()``."""
    base = quickstart_base_model()
    try:
        from gym.builtin import is_builtin, materialize_model
    except ImportError:
        is_builtin = None
    if is_builtin is not None and is_builtin(base):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(materialize_model(base)), f"{base} (examples/quickstart.yml)"
    from gym.tiny import build_tokenizer

    return build_tokenizer(), "gym.tiny.build_tokenizer()"
