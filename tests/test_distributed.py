"""Runs of several processes: launching, DDP's equivalence with one process, a failing rank, two nodes.

The multi-process runs use gloo on this machine's CPU (2 processes, one torch thread each)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gym import testing
from gym.cli import main
from gym.plugins import launch

# The same data, seed and global batch of 4 rows: one process x 4 rows, or two processes x 2 rows.
CONFIG = {
    "base_model": "builtin:tiny-llama-micro",
    "datasets": [{"path": "builtin:addition?rows=400", "type": "chat_template"}],
    "chat_template": "tokenizer_default",
    "sequence_len": 64,
    "micro_batch_size": 2,
    "max_steps": 6,
    "seed": 7,
}
# Weights after 6 steps on 2 processes and on 1 differ only by the order of float32 additions in the gradient
# average: measured up to ~1e-7; the test allows 1e-5.
WEIGHT_TOLERANCE = 1e-5


def _weights(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output_dir / "model.safetensors"))


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- fast


def test_run_help_lists_the_launch_options():
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port"):
        assert option in result.output


def test_one_machine_uses_a_free_port_and_many_machines_the_master(monkeypatch):
    single = launch.torchrun_arguments(["run", "c.yml"], 2, 1, {})
    assert single[:1] == ["--standalone"] and single[-4:] == ["-m", "gym.cli", "run", "c.yml"]
    multi = launch.torchrun_arguments(["run", "c.yml"], 4, 2, {"node_rank": 1, "master_addr": "10.0.0.1"})
    assert multi[:8] == ["--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29500"]
    assert multi[multi.index("--nproc-per-node") + 1] == "4"


@pytest.mark.parametrize("env, launcher", [
    ({"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}, "torchrun"),
    ({"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"}, "a launcher (LOCAL_RANK is set)"),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "4"}, "srun"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),
    ({}, None),
])
def test_a_worker_knows_its_launcher(monkeypatch, env, launcher):
    monkeypatch.setattr(os, "environ", dict(env))  # this test's environment only, undone afterwards
    assert launch.launched_by() == launcher
    # a worker trains where it is, whatever the options say
    if launcher and launcher != "srun":
        assert launch.gym_launch(cfg=None, argv=["run", "c.yml"], options={"nproc_per_node": 2}) is None


def test_srun_tasks_become_torch_workers(monkeypatch):
    monkeypatch.setattr(os, "environ", {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
                                        "SLURM_NTASKS_PER_NODE": "2(x2)", "SLURM_LAUNCH_NODE_IPADDR": "10.1.2.3",
                                        "SLURM_JOB_ID": "777"})
    assert launch.gym_launch(cfg=None, argv=["run", "c.yml"], options={}) is None
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")
    assert os.environ["LOCAL_WORLD_SIZE"] == "2" and os.environ["MASTER_ADDR"] == "10.1.2.3"


def test_one_process_launches_nothing():
    assert launch.gym_launch(cfg=None, argv=["run", "c.yml"], options={"nproc_per_node": 1, "nnodes": None}) is None


def test_a_folder_one_machine_cannot_see_is_named(tmp_path):
    for node in (0, 2):
        (tmp_path / f".gym-node-x-{node}").write_text("")
    assert launch.unseen_nodes(tmp_path, ".gym-node-x-", 3) == [1]
    assert launch.unseen_nodes(tmp_path / "missing", ".gym-node-x-", 2) == [0, 1]


def test_ddp_keys_reach_the_training_arguments():
    cfg = testing.validate({**CONFIG, "ddp_bucket_cap_mb": 50, "ddp_broadcast_buffers": False})
    from gym.plugins import ddp

    assert ddp.gym_training_arguments(cfg) == {
        "ddp_find_unused_parameters": False, "ddp_bucket_cap_mb": 50, "ddp_broadcast_buffers": False}


# ---------------------------------------------------------------------------------------------- slow


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One 2-process DDP run (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("ddp2")
    done = testing.run_processes(CONFIG, 2, tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "output", done


@pytest.mark.slow
def test_two_processes_train_as_one_with_the_same_global_batch(two_processes, tmp_path):
    output, done = two_processes
    alone = testing.run_config({**CONFIG, "micro_batch_size": 4}, steps=6, tmp_path=tmp_path)
    assert len(logged_two := testing.logged_losses(output)) == 6
    assert logged_two == pytest.approx(testing.logged_losses(alone.output_dir), abs=1e-4)
    assert _max_difference(_weights(output), _weights(Path(alone.output_dir))) < WEIGHT_TOLERANCE
    log = done.stdout + done.stderr
    assert "launching 2 processes" in log and "x 2 processes" in log
    assert "prepared once, by rank" in log  # one process tokenized; the other loaded its rows
    assert log.count("trained (sft)") == 1  # only rank 0 prints the summary


@pytest.mark.slow
@pytest.mark.parametrize("engine", [{}, {"deepspeed": "zero2"}], ids=["ddp", "zero2"])
def test_a_killed_rank_ends_the_run_and_auto_resume_finishes_it(engine, tmp_path):
    """SIGKILL one of two processes after the first checkpoint: the run ends at once naming that rank; the same
    command again resumes from the last checkpoint and ends with the weights of a run never interrupted."""
    import psutil

    config = {**CONFIG, "max_steps": 120, "save_strategy": "steps", "save_steps": 10, "logging_steps": 10,
              "auto_resume_from_checkpoints": True, **engine}
    baseline = testing.run_processes(config, 2, tmp_path / "baseline")
    assert baseline.returncode == 0, baseline.stderr[-3000:]

    testing.write_config(config, tmp_path / "run")
    command = [sys.executable, "-m", "gym.cli", "run", "config.yml", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=tmp_path / "run")
    checkpoint = tmp_path / "run" / "output" / "checkpoint-10" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and runner.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "no checkpoint was written"
    rank1 = [p for p in psutil.Process(runner.pid).children(recursive=True)
             if p.environ().get("RANK") == "1" and "gym.cli" in " ".join(p.cmdline())]
    assert len(rank1) == 1 and runner.poll() is None, "the run ended before a rank could be killed"
    killed = time.monotonic()
    rank1[0].send_signal(signal.SIGKILL)
    _, stderr = runner.communicate(timeout=120)
    assert time.monotonic() - killed < 60
    assert runner.returncode != 0
    assert "rank 1 of 2 was killed by SIGKILL" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "run" / "output" / "model.safetensors").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path / "run", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    difference = _max_difference(_weights(tmp_path / "run" / "output"), _weights(tmp_path / "baseline" / "output"))
    assert difference < WEIGHT_TOLERANCE


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_together(two_processes, tmp_path):
    """Two `gym run --nnodes 2 --node-rank N` commands (one process each) form one run of 2 processes: the same
    losses as the 2-process run on one node."""
    testing.write_config(CONFIG, tmp_path)
    port = str(_free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "gym.cli", "run", "config.yml", "--nproc-per-node", "1",
                               "--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                               "--master-port", port], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert "launching 2 processes (1 on this machine, node 0 of 2)" in outputs[0][0] + outputs[0][1]
    assert "not on a filesystem every machine sees" not in outputs[0][0] + outputs[0][1]  # one machine: shared
    two_node = testing.logged_losses(tmp_path / "output")
    assert two_node == pytest.approx(testing.logged_losses(two_processes[0]), abs=1e-4)


@pytest.mark.slow
def test_qlora_trains_with_ddp_and_its_adapter_loads_in_peft(tmp_path):
    """QLoRA (a 4-bit base on each process, LoRA adapters averaged by DDP) on 2 processes: the same losses as one
    process with the same global batch, and the saved adapter loads in plain peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gym.builtin import materialize_model

    config = {**CONFIG, "adapter": "qlora", "load_in_4bit": True, "lora_r": 8, "lora_alpha": 16,
              "lora_target_linear": True, "learning_rate": 2e-2, "max_steps": 12}
    done = testing.run_processes(config, 2, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = testing.logged_losses(tmp_path / "output")
    alone = testing.run_config({**config, "micro_batch_size": 4}, steps=12, tmp_path=tmp_path / "alone")
    assert len(losses) == 12 and losses == pytest.approx(testing.logged_losses(alone.output_dir), abs=1e-3)
    assert losses[-1] < losses[0], losses
    base = AutoModelForCausalLM.from_pretrained(materialize_model(CONFIG["base_model"]))
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "output"))
    assert loaded.peft_config["default"].r == 8
