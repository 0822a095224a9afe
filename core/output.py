"""What gym prints, and which process prints it.

In a run of several processes (torchrun and other launchers) only the main process (global rank 0) prints the log,
writes the outputs and calls ``gym_after_train``; the others stay quiet. :func:`is_main_process` reads the
launcher's environment, so it needs no ``torch.distributed`` set-up and works before the model exists.
"""

from __future__ import annotations

import os


def process_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not launched as several)."""
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def is_main_process() -> bool:
    """Whether this process is the one that prints and writes (global rank 0)."""
    return process_rank() == 0


def say(message: str) -> None:
    """Print ``[gym] message`` on the main process, without breaking a progress bar that is on screen."""
    if not is_main_process():
        return
    try:
        from tqdm.auto import tqdm

        for line in message.splitlines() or [""]:
            tqdm.write(f"[gym] {line}")
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(f"[gym] {message}", flush=True)
