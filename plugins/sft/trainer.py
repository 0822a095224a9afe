"""The SFT trainer: transformers' ``Trainer`` on gym's prepared rows, and the figures an SFT run reports.

The rows are tokenized (and packed) in the data phase, so the trainer only batches them: ``data_collator``
for training and ``eval_collator`` for evaluation (packed and unpacked evaluation rows batch differently
when ``eval_sample_packing`` differs from ``sample_packing``). Packed rows keep their samples apart only
without a KV cache, so the model trains with ``use_cache=False`` and is saved with it back on.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import Trainer, TrainerCallback

from gym.api import IGNORE_INDEX, TrainerParts


class SupervisedTrainer(Trainer):
    """``Trainer`` plus ``eval_collator`` (defaults to ``data_collator``)."""

    def __init__(self, *args: Any, eval_collator: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator

    def get_eval_dataloader(self, eval_dataset: Any = None):
        if self.eval_collator is None or self.eval_collator is self.data_collator:
            return super().get_eval_dataloader(eval_dataset)
        training_collator = self.data_collator
        self.data_collator = self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = training_collator


class TrainedTokens(TrainerCallback):
    """Counts the tokens that carry a loss (shifted ``labels`` != -100) in every training forward pass, and
    reports them with the throughput (``gym_metrics``, ``gym_summary``)."""

    def __init__(self) -> None:
        self.total: Any = 0
        self._handle = None
        self._started = time.perf_counter()
        self.gym_metrics: dict[str, Any] = {}
        self.gym_summary: list[str] = []

    def _count(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        labels = kwargs.get("labels")
        if module.training and labels is not None:
            self.total = self.total + (labels[..., 1:] != IGNORE_INDEX).sum()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._started = time.perf_counter()
        if model is not None and self._handle is None:
            self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if model is not None:
            model.config.use_cache = True  # trained without a cache (packed rows); generation wants it
        seconds = time.perf_counter() - self._started
        tokens = _summed_over_processes(self.total, args.device)
        rate = tokens / seconds if seconds else 0.0
        self.gym_metrics = {"tokens_trained": tokens, "tokens_per_second": round(rate, 1)}
        self.gym_summary = [f"{tokens:,} tokens trained ({rate:,.0f} tokens/s)"]


def _summed_over_processes(count: Any, device: Any) -> int:
    """A count every process of the run made, summed over all of them (itself when it runs alone)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return int(count)
    import torch

    total = torch.tensor(int(count), dtype=torch.long, device=device)
    dist.all_reduce(total)
    return int(total)


def _row_lengths(dataset: Any) -> list[int]:
    """Tokens per row, read from the arrow column (for group_by_length)."""
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")[:]["input_ids"]
    return pc.list_value_length(column).to_pylist()


def build_trainer(parts: TrainerParts) -> SupervisedTrainer:
    """The trainer of an SFT run, from the parts the core prepared."""
    cfg, model = parts.cfg, parts.model
    model.config.use_cache = False  # packed rows: transformers only separates samples without a cache
    train_set = parts.train_dataset
    if cfg.group_by_length and "length" not in train_set.column_names:
        train_set = train_set.add_column("length", _row_lengths(train_set))
    return SupervisedTrainer(
        model=model,
        args=parts.args,
        train_dataset=train_set,
        eval_dataset=parts.eval_dataset,
        data_collator=parts.train_collator,
        eval_collator=parts.eval_collator,
        processing_class=parts.tokenizer,
        callbacks=[*parts.callbacks, TrainedTokens()],
    )
