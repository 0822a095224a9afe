"""Counting trained tokens and timing steps inside any ``transformers.Trainer`` (gym's or TRL's).

A forward pre-hook on the model counts, for every training forward pass, the real tokens (not padding),
the token slots (the batch's full shape, padding included) and the tokens with a loss (labels != -100).
A callback starts the clock when the warm-up steps are done and stops it after the last step, so model
loading, data preparation and the first (slow) steps are left out. For gym the callback is added through
gym's own ``gym_callbacks`` hook by registering :class:`BenchPlugin`; for TRL it is passed to the trainer.
"""

from __future__ import annotations

import time
from typing import Any

from gym.api import hookimpl


def _make_callback_class():
    from transformers import TrainerCallback

    class ThroughputCallback(TrainerCallback):
        def __init__(self, pad_token_id: int | None, warmup_steps: int, cuda: bool = False):
            self.pad_token_id = pad_token_id
            self.warmup_steps = warmup_steps
            self.cuda = cuda
            self.running = False
            self.start = self.stop = None
            self.steps = 0
            self.tokens = self.slots = self.loss_tokens = 0
            self.rows = 0
            self.handle = None
            self.losses: list[float] = []
            self.peak_memory = self.peak_reserved = 0

        # -- counting
        def _pre_forward(self, module, args, kwargs):
            if not (self.running and module.training):
                return
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            if input_ids is None:
                return
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.dim() == 2:
                real = int(mask.sum())
            elif self.pad_token_id is not None:
                real = int((input_ids != self.pad_token_id).sum())
            else:
                real = input_ids.numel()
            self.tokens += real
            self.slots += input_ids.numel()
            self.rows += input_ids.shape[0]
            labels = kwargs.get("labels")
            if labels is not None:
                self.loss_tokens += int((labels != -100).sum())

        def _sync(self):
            if self.cuda:
                import torch

                torch.cuda.synchronize()

        # -- trainer events
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.handle = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
            if self.cuda:
                import torch

                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == self.warmup_steps and not self.running:
                self._sync()
                self.running = True
                self.start = time.perf_counter()
                self.cpu_start = time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            if self.running:
                self._sync()
                self.stop = time.perf_counter()
                self.cpu_stop = time.process_time()
                self.steps += 1

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_end(self, args, state, control, **kwargs):
            if self.handle is not None:
                self.handle.remove()
            if self.cuda:
                import torch

                self.peak_memory = torch.cuda.max_memory_allocated()
                self.peak_reserved = torch.cuda.max_memory_reserved()

        def result(self) -> dict[str, Any]:
            if not self.steps or self.start is None:
                raise RuntimeError(
                    f"no step was timed: the run ended before step {self.warmup_steps + 1} (raise --steps)"
                )
            import torch

            seconds = self.stop - self.start
            return {
                "cpu_s_per_step": (self.cpu_stop - self.cpu_start) / self.steps,
                "torch_threads": torch.get_num_threads(),
                "seconds": seconds,
                "steps": self.steps,
                "tokens": self.tokens,
                "slots": self.slots,
                "loss_tokens": self.loss_tokens,
                "rows": self.rows,
                "tokens_per_s": self.tokens / seconds,
                "slots_per_s": self.slots / seconds,
                "loss_tokens_per_s": self.loss_tokens / seconds,
                "padding": 1 - self.tokens / self.slots if self.slots else 0.0,
                "s_per_step": seconds / self.steps,
                "losses": self.losses,
                "peak_gpu_mib": self.peak_memory / 2**20,
                "peak_gpu_reserved_mib": self.peak_reserved / 2**20,
            }

    return ThroughputCallback


def throughput_callback(pad_token_id: int | None, warmup_steps: int, cuda: bool = False):
    return _make_callback_class()(pad_token_id, warmup_steps, cuda)


class BenchPlugin:
    """A gym plugin (registered in code, as a test would) whose only hook adds the throughput callback."""

    def __init__(self, callback):
        self.callback = callback

    @hookimpl
    def gym_callbacks(self, cfg):
        return [self.callback]


def register_with_gym(callback) -> None:
    from gym.plugin_manager import get_plugin_manager

    get_plugin_manager().register(BenchPlugin(callback), "bench_throughput")
