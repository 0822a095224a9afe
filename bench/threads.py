"""CPU thread settings: one training job alone, and two at once on the same cores.

Runs the quickstart (``examples/quickstart.yml``, shortened with ``max_steps``) as separate ``gym run`` processes
under several environments and prints the wall time of each job (prepared data is cached first, so only training
and start-up are timed). Two jobs at once with torch's defaults oversubscribe the cores: each starts one OpenMP
thread per core and spins while waiting; the rows below show what each setting does about it.

    python bench/threads.py [--steps 120] [--repeat 2] [--jobs 1 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "defaults": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}


def start(workdir: Path, name: str, steps: int, env: dict[str, str]) -> subprocess.Popen:
    overrides = [f"max_steps={steps}", f"output_dir={workdir / name}", f"dataset_prepared_path={workdir / 'prepared'}",
                 "eval_task=null", "overwrite_output_dir=true"]
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    return subprocess.Popen([sys.executable, "-m", "gym.cli", "run", str(REPO / "examples" / "quickstart.yml"),
                             *overrides], env={**clean, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def timed(workdir: Path, jobs: int, steps: int, env: dict[str, str]) -> list[float]:
    began = time.perf_counter()
    processes = [start(workdir, f"job{i}", steps, env) for i in range(jobs)]
    seconds = []
    for process in processes:
        _, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"gym run failed:\n{err[-2000:]}")
        seconds.append(time.perf_counter() - began)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="jobs at once, each in turn")
    args = parser.parse_args()
    print_machine("CPU thread settings")
    with tempfile.TemporaryDirectory(prefix="gym-threads-") as folder:
        workdir = Path(folder)
        timed(workdir, 1, 1, {})  # prepares and caches the data
        print(f"\n{args.steps} steps of the quickstart per job; wall seconds of each job\n")
        print("| setting | jobs at once | round | seconds per job |")
        print("|---|---|---|---|")
        for round_ in range(1, args.repeat + 1):
            for name, env in SETTINGS.items():
                for jobs in args.jobs:
                    seconds = timed(workdir, jobs, args.steps, env)
                    print(f"| {name} | {jobs} | {round_} | {', '.join(f'{s:.1f}' for s in seconds)} |", flush=True)


if __name__ == "__main__":
    main()
