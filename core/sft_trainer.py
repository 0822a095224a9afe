"""gym's trainer: transformers' ``Trainer`` with its own collator for evaluation batches.

The rows are tokenized (and packed) by :mod:`gym.data.prepare` before the trainer sees them, so the
trainer only batches them: ``data_collator`` for training and ``eval_data_collator`` for evaluation
(packed and unpacked evaluation rows need different batching when ``eval_sample_packing`` differs
from ``sample_packing``).
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer


class GymTrainer(Trainer):
    """``Trainer`` plus ``eval_data_collator`` (defaults to ``data_collator``)."""

    def __init__(self, *args: Any, eval_data_collator: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    def get_eval_dataloader(self, eval_dataset: Any = None):
        if self.eval_data_collator is None or self.eval_data_collator is self.data_collator:
            return super().get_eval_dataloader(eval_dataset)
        training_collator = self.data_collator
        self.data_collator = self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = training_collator
