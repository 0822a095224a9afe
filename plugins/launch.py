"""Launching ``gym run`` on several processes and machines, through ``torch.distributed.run``.

::

    gym run config.yml --nproc-per-node 2                      # 2 processes on this machine
    gym run config.yml --nproc-per-node 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1   # on the first node
    gym run config.yml --nproc-per-node 8 --nnodes 2 --node-rank 1 --master-addr 10.0.0.1   # on the second

``NNODES``, ``NODE_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the environment fill the options left out.
Started by a launcher already (torchrun, ``accelerate launch``, ``deepspeed``: ``LOCAL_RANK`` is set; SLURM's
``srun`` with several tasks), ``gym run`` is one of its workers and launches nothing. A worker that fails ends
the whole run at once (torch's elastic agent stops the others); the error names its rank.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from gym.api import GymError, LostProcessError, hookimpl, process_count, say

LOST_PROCESS_STATUS = LostProcessError.exit_code

#: What a launcher sets in each worker's environment.
_WORKER_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE")


@hookimpl
def gym_run_options():
    import click

    def env_int(name: str) -> int | None:
        value = os.environ.get(name, "").strip()
        return int(value) if value.isdigit() else None

    return [
        click.Option(["--nproc-per-node"], type=click.IntRange(min=1), default=None,
                     help="Processes to start on this machine (one per GPU; on a CPU, each uses its own cores)."),
        click.Option(["--nnodes"], type=click.IntRange(min=1), default=env_int("NNODES"),
                     help="Machines taking part (default: $NNODES or 1)."),
        click.Option(["--node-rank"], type=click.IntRange(min=0), default=env_int("NODE_RANK"),
                     help="This machine's place among them, from 0 (default: $NODE_RANK or 0)."),
        click.Option(["--master-addr"], default=os.environ.get("MASTER_ADDR"),
                     help="Address of the machine with node rank 0 (default: $MASTER_ADDR or 127.0.0.1)."),
        click.Option(["--master-port"], type=click.IntRange(1, 65535), default=env_int("MASTER_PORT"),
                     help="A free port on that machine (default: $MASTER_PORT or 29500)."),
    ]


def launched_by() -> str | None:
    """The launcher that started this process as one of several, or ``None``."""
    if "LOCAL_RANK" in os.environ or {"RANK", "WORLD_SIZE"} <= set(os.environ):
        if os.environ.get("TORCHELASTIC_RUN_ID"):
            return "torchrun"
        if os.environ.get("ACCELERATE_DYNAMO_BACKEND") is not None or os.environ.get("ACCELERATE_MIXED_PRECISION"):
            return "accelerate launch"
        return "a launcher (LOCAL_RANK is set)"
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in os.environ:
        return "srun"
    return None


def adopt_slurm_environment() -> None:
    """Under ``srun`` with one task per process, the variables torch reads, from SLURM's own."""
    env = os.environ
    env.setdefault("RANK", env["SLURM_PROCID"])
    env.setdefault("WORLD_SIZE", env["SLURM_NTASKS"])
    env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    env.setdefault("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
    env.setdefault("MASTER_ADDR", env.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"))
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))


@hookimpl(trylast=True)
def gym_launch(cfg, argv, options):
    launcher = launched_by()
    if launcher == "srun" and not options.get("nproc_per_node"):
        adopt_slurm_environment()
        return None
    if launcher is not None and launcher != "srun":
        return None  # a worker: train here
    nproc = options.get("nproc_per_node") or 1
    nnodes = options.get("nnodes") or 1
    if nproc == 1 and nnodes == 1:
        return None
    if nnodes > 1 and not cfg.dataset_prepared_path:
        say("note: without dataset_prepared_path each machine prepares the data itself; set it to a folder every "
            "machine sees to prepare it once (docs/distributed.md)")
    return launch(argv, nproc, nnodes, options)


def torchrun_arguments(argv: list[str], nproc: int, nnodes: int, options: dict[str, Any]) -> list[str]:
    """``torch.distributed.run``'s arguments for these options, ending with the worker's command."""
    if nnodes == 1 and options.get("node_rank") in (None, 0) and not options.get("master_addr"):
        where = ["--standalone"]  # a free port, found by torch
    else:
        where = ["--nnodes", str(nnodes), "--node-rank", str(options.get("node_rank") or 0),
                 "--master-addr", options.get("master_addr") or "127.0.0.1",
                 "--master-port", str(options.get("master_port") or 29500)]
    return [*where, "--nproc-per-node", str(nproc), "--max-restarts", "0", "--monitor-interval", "0.5",
            "-m", "gym.cli", *argv]


def launch(argv: list[str], nproc: int, nnodes: int, options: dict[str, Any]) -> int:
    """Start the workers through torch's elastic agent and wait for them; a failed worker is a ``GymError``
    naming its rank and how it ended."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "OMP_NUM_THREADS" not in os.environ:  # torch would set 1 and print a banner; share the cores out instead
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    if "-v" not in argv and "--verbose" not in argv:
        logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    world = nproc * nnodes
    where = f"{nproc} on this machine, node {options.get('node_rank') or 0} of {nnodes}" if nnodes > 1 else "on this machine"
    say(f"launching {world} processes ({where}) with torch.distributed.run")
    args = get_args_parser().parse_args(torchrun_arguments(argv, nproc, nnodes, options))
    try:
        run(args)
    except ChildFailedError as exc:
        raise GymError(_failure_message(exc, world)) from None
    return 0


def _consequence(exit_code: int) -> int:
    """How likely a process's end is a consequence of another's: stopped by the launcher (SIGTERM), or ended
    because a peer vanished (:class:`gym.api.LostProcessError`'s status), rather than a cause."""
    return 2 if exit_code == -signal.SIGTERM else 1 if exit_code == LOST_PROCESS_STATUS else 0


def _failure_message(exc: Any, world: int) -> str:
    """The first process that failed, and how; the others were stopped by the launcher because of it."""
    rank, failure = min(exc.failures.items(), key=lambda item: (_consequence(item[1].exitcode), item[1].timestamp,
                                                                 item[0]))
    code = failure.exitcode
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with status {code} (its error is printed above)"
    others = " and the other processes were stopped" if world > 1 else ""
    return f"the run failed: rank {rank} of {world} {how}{others}"


# ------------------------------------------------------------------ several machines: shared folders


@hookimpl
def gym_callbacks(cfg):
    world = process_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
    if world <= local:  # one machine
        return None
    return [_shared_folder_check(cfg)]


def _shared_folder_check(cfg: Any) -> Any:
    """A callback that, as training starts on several machines, checks that every machine sees ``output_dir``
    and ``dataset_prepared_path`` (each node's first process writes a marker there; rank 0 counts them) and
    prints what is not shared."""
    from pathlib import Path

    from transformers import TrainerCallback

    folders = {"output_dir": cfg.output_dir, "dataset_prepared_path": cfg.dataset_prepared_path}

    class SharedFolders(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if not dist.is_initialized():
                return
            env = os.environ
            node = int(env.get("GROUP_RANK") or env.get("SLURM_NODEID") or 0)
            nodes = process_count() // int(env.get("LOCAL_WORLD_SIZE", "1"))
            tag = os.environ.get("TORCHELASTIC_RUN_ID", "run") + f"-{os.environ.get('MASTER_PORT', '')}"
            markers = {}
            for key, folder in folders.items():
                if folder:
                    markers[key] = Path(folder) / f".gym-node-{tag}-{node}"
                    if os.environ.get("LOCAL_RANK", "0") == "0":
                        markers[key].parent.mkdir(parents=True, exist_ok=True)
                        markers[key].write_text(str(node))
            dist.barrier()
            if state.is_world_process_zero:
                for key, marker in markers.items():
                    missing = unseen_nodes(marker.parent, f".gym-node-{tag}-", nodes)
                    if missing:
                        say(f"note: {key} ({folders[key]}) is not on a filesystem every machine sees: node(s) "
                            f"{', '.join(map(str, missing))} wrote elsewhere. Checkpoints, the prepared data and "
                            "resuming need one shared folder (docs/distributed.md)")
            dist.barrier()
            for marker in markers.values():
                marker.unlink(missing_ok=True)

    return SharedFolders()


def unseen_nodes(folder: Any, prefix: str, nodes: int) -> list[int]:
    """The nodes whose marker (``prefix<node>``) is missing from ``folder``, as this machine sees it."""
    present = {path.name[len(prefix):] for path in folder.glob(f"{prefix}*")} if folder.is_dir() else set()
    return [node for node in range(nodes) if str(node) not in present]
