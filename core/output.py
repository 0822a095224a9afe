"""What gym prints, and which process prints it.

In a run of several processes (torchrun and other launchers) only the main process (global rank 0) prints the log,
writes the outputs and calls ``gym_after_train``; the others stay quiet. :func:`is_main_process` reads the
launcher's environment, so it needs no ``torch.distributed`` set-up and works before the model exists.
"""

from __future__ import annotations

import os
import sys


def process_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not launched as several)."""
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def process_count() -> int:
    """How many processes the run has (``WORLD_SIZE``, set by the launcher; 1 when not launched as several)."""
    value = os.environ.get("WORLD_SIZE", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def is_main_process() -> bool:
    """Whether this process is the one that prints and writes (global rank 0)."""
    return process_rank() == 0


def on_terminal() -> bool:
    """Whether gym's output goes to a terminal (progress bars) or to a log file / pipe (plain lines)."""
    return sys.stderr.isatty()


def plain_progress() -> None:
    """Not on a terminal (CI, nohup, SLURM logs): no carriage-return progress bars from the libraries."""
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - a dependency
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - a dependency
        pass


def progress_callback():
    """A ``TrainerCallback`` printing one plain line per logging step (step/total, loss, lr, elapsed, ETA): what a
    log file gets instead of the progress bar."""
    import time

    from transformers import TrainerCallback

    class PlainProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.first_step = time.perf_counter(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            elapsed = time.perf_counter() - self.started
            done = max(state.global_step - self.first_step, 1)
            eta = elapsed / done * max(state.max_steps - state.global_step, 0)
            parts = [f"step {state.global_step}/{state.max_steps}", f"loss {float(logs['loss']):.4f}"]
            if isinstance(logs.get("reward"), (int, float)):  # methods that sample and score completions
                parts.append(f"reward {float(logs['reward']):.4f}")
            if "learning_rate" in logs:
                parts.append(f"lr {float(logs['learning_rate']):.3g}")
            if logs.get("tokens_per_second"):
                parts.append(f"{float(logs['tokens_per_second']):,.0f} tokens/s")
            parts += [f"elapsed {elapsed:.0f}s", f"ETA {eta:.0f}s"]
            say(", ".join(parts))

    return PlainProgress()


def terminal_progress_callback():
    """On a terminal: transformers' progress bar, with the latest loss, learning rate and eval loss shown on the
    bar itself instead of a printed dict per logging step (the bar already shows the ETA)."""
    from transformers.trainer_callback import ProgressCallback

    class BarProgress(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.shown: dict[str, str] = {}
            return super().on_train_begin(args, state, control, **kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or self.training_bar is None or not logs:
                return
            for key, label, fmt in (("loss", "loss", ".4f"), ("reward", "reward", ".4f"),
                                    ("learning_rate", "lr", ".3g"),
                                    ("eval_loss", "eval loss", ".4f"), ("tokens_per_second", "tokens/s", ",.0f")):
                if isinstance(logs.get(key), (int, float)):
                    self.shown[label] = format(float(logs[key]), fmt)
            self.training_bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in self.shown.items()), refresh=True)

    return BarProgress()


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
