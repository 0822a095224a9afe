"""Real kill -9: during a checkpoint's write and during data preparation. Nothing is lost, nothing half-built is read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

KILL_IN_CHECKPOINT = """
import os, signal, sys
import torch
_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)) and "checkpoint-2" in str(f):
        with open(f, "wb") as handle:  # half a file, then the OOM killer's signal
            handle.write(b"\\0" * 64)
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *args, **kwargs)
torch.save = save
sys.argv = ["gym", "run", sys.argv[1]]
from gym.cli import main
main()
"""


def _write_run(tmp_path: Path, rows: int, **extra) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"add {i} and {i}", "input": "", "output": str(2 * i)}) + "\n"
                            for i in range(rows)))
    lines = {"base_model": "builtin:tiny-llama-micro", "datasets": [{"path": str(data), "type": "alpaca"}],
             "sequence_len": 64, "micro_batch_size": 4, "output_dir": str(tmp_path / "out"), **extra}
    config = tmp_path / "c.yml"
    config.write_text(json.dumps(lines))  # JSON is YAML
    return config


def _gym(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gym.cli", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def test_kill_9_while_a_checkpoint_is_written_then_resume_from_the_last_complete_one(tmp_path):
    config = _write_run(tmp_path, 32, max_steps=4, save_steps=1, auto_resume_from_checkpoints=True, logging_steps=1)
    killed = subprocess.run([sys.executable, "-c", KILL_IN_CHECKPOINT, str(config)], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    out = tmp_path / "out"
    assert (out / "checkpoint-1" / "trainer_state.json").exists()
    assert (out / "checkpoint-2").exists() and not (out / "checkpoint-2" / "trainer_state.json").exists()

    resumed = _gym("run", str(config))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert "skipping checkpoint-2" in resumed.stdout
    assert "resumed from" in resumed.stdout and "checkpoint-1" in resumed.stdout
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert (out / "model.safetensors").exists()


def test_kill_9_during_preparation_leaves_nothing_that_is_read_and_the_next_start_cleans_up(tmp_path):
    prepared = tmp_path / "prepared"
    config = _write_run(tmp_path, 20000, dataset_prepared_path=str(prepared), dataset_processes=1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "gym.cli", "preprocess", str(config)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(prepared.glob(".tmp-*")):
        time.sleep(0.05)
    builds = list(prepared.glob(".tmp-*"))
    assert builds, "the build folder never appeared"
    time.sleep(0.3)  # inside the build
    process.kill()  # SIGKILL
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert [p for p in prepared.iterdir() if not p.name.startswith((".tmp-", ".lock", "."))] == [], \
        "a half-built cache was published"

    again = _gym("preprocess", str(config))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "cache: miss" in again.stdout  # rebuilt, never read half-built
    assert not any(build.exists() for build in builds), "the dead run's build folder was not cleaned up"
    third = _gym("preprocess", str(config))
    assert third.returncode == 0 and "cache: hit" in third.stdout
