"""Latency of the commands that do not train, and whether they imported the training stack.

    python bench/cli_latency.py [--repeat 10] [--config examples/quickstart.yml]

Each command runs ``--repeat`` times as a fresh process (after one unmeasured warm-up run that fills the
file cache); the table gives the median and the spread. ``python -c pass`` is timed in the same runs as
the floor that no Python command can beat. A separate run of each command under ``-X importtime``
records which heavy modules were imported and the largest imports. Target: median under 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, print_machine, print_table  # noqa: E402

HEAVY = ("torch", "transformers", "datasets", "pyarrow", "numpy", "pandas", "trl", "peft", "accelerate", "omegaconf")

# Runs gym's CLI like the console script does, and writes the heavy modules it imported to a file at exit.
WRAPPER = r"""
import atexit, json, os, sys
def _report():
    with open(os.environ["GYM_BENCH_MODULES"], "w") as f:
        json.dump([m for m in %r if m in sys.modules], f)
atexit.register(_report)
sys.argv = ["gym", *sys.argv[1:]]
from gym.cli import main
main()
""" % (HEAVY,)

TARGET_S = 0.3


def gym_executable() -> str:
    candidate = Path(sys.executable).with_name("gym")
    found = str(candidate) if candidate.exists() else shutil.which("gym")
    if not found:
        sys.exit("the `gym` command is not installed (pip install -e .)")
    return found


def time_runs(cmd: list[str], repeat: int) -> list[float]:
    subprocess.run(cmd, capture_output=True, cwd=REPO)  # warm-up: file cache, .pyc files
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return times


def import_report(args: list[str]) -> tuple[list[str], list[tuple[str, float]]]:
    """Heavy modules imported by ``gym args``, and the largest top-level imports (name, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "modules.json"
        env = dict(os.environ, GYM_BENCH_MODULES=str(marker))
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", WRAPPER, *args],
            capture_output=True, text=True, cwd=REPO, env=env,
        )
        heavy = json.loads(marker.read_text()) if marker.exists() else ["(no report: the command crashed)"]
    top: list[tuple[str, float]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cumulative_us, name = line.split(":", 1)[1].split("|")
        if name.startswith("  "):  # nested import (indented): already in its parent's cumulative time
            continue
        top.append((name.strip(), int(cumulative_us) / 1e6))
    top.sort(key=lambda item: -item[1])
    return heavy, top[:4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per command (default 10)")
    parser.add_argument("--config", default="examples/quickstart.yml", help="config for `gym validate`")
    parser.add_argument("--extra", action="store_true", help="also time `gym config schema` and `gym --version`")
    opts = parser.parse_args()
    if not (REPO / opts.config).exists() and not Path(opts.config).exists():
        sys.exit(f"config {opts.config} not found")

    gym = gym_executable()
    commands = [["--help"], ["validate", opts.config], ["plugins", "list"]]
    if opts.extra:
        commands += [["config", "schema"], ["--version"]]

    print_machine("Command latency")
    rows, details = [], []
    floor = time_runs([sys.executable, "-c", "pass"], opts.repeat)
    rows.append(["python -c pass (floor)", statistics.median(floor), min(floor), max(floor), "-", "-"])
    for args in commands:
        times = time_runs([gym, *args], opts.repeat)
        heavy, top = import_report(args)
        median = statistics.median(times)
        rows.append([
            "gym " + " ".join(args), median, min(times), max(times),
            "torch" in heavy, "yes" if median < TARGET_S else "MISSED",
        ])
        details.append(("gym " + " ".join(args), heavy, top))
    print(f"{opts.repeat} runs each, seconds of wall time per process (target: median < {TARGET_S} s)")
    print()
    print_table(["command", "median s", "min s", "max s", "torch imported", "target met"], rows)
    print("heavy modules imported, and the largest top-level imports (python -X importtime):")
    print()
    print_table(
        ["command", "heavy modules", "largest imports (cumulative s)"],
        [[cmd, ", ".join(heavy) or "none", ", ".join(f"{n} {s:.3f}" for n, s in top)] for cmd, heavy, top in details],
    )


if __name__ == "__main__":
    main()
