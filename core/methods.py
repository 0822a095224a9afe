"""What a training method is: the shape of its rows and how it builds its trainer (no torch imports here).

A method plugin (``sft``, a DPO or GRPO plugin) answers :func:`gym.hookspecs.gym_training_method` with a
:class:`TrainingMethod`. The core runs the phases and asks the method for what differs:

- **data**: the core reads each dataset and runs its strategy; the method's :class:`DataShape` then
  checks the samples of each source (lengths, drops, all counted) and, after the core mixed and split
  them, turns each split into the rows its trainer reads (packing, for SFT);
- **trainer**: :attr:`TrainingMethod.build_trainer` gets a :class:`TrainerParts` and builds the trainer
  from the parts it needs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def load_object(target: str | Any) -> Any:
    """``"package.module:attribute"`` -> the attribute (imported now); anything else is returned as is."""
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------------ data


@dataclass
class SourceCounts:
    """What happened to the rows of one dataset entry, as the data summary shows it."""

    path: str
    type: str
    role: str  # "train" or "test"
    rows: int = 0  # read from the file
    samples: int = 0  # made by the strategy (a long text may give several)
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> samples dropped
    changed: dict[str, int] = field(default_factory=dict)  # what was done -> samples (e.g. "truncated")

    def drop(self, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(count)

    def change(self, what: str, count: int) -> None:
        if count:
            self.changed[what] = self.changed.get(what, 0) + int(count)

    def describe(self) -> str:
        notes = []
        if self.dropped:
            notes.append("dropped " + ", ".join(f"{n:,} {reason}" for reason, n in self.dropped.items()))
        if self.changed:
            notes.append("; ".join(f"{what} {n:,}" for what, n in self.changed.items()))
        note = f" ({'; '.join(notes)})" if notes else ""
        return f"{self.role} data {self.path} [{self.type}]: {self.rows:,} rows -> {self.kept:,} samples{note}"


class DataShape:
    """How a training method turns the strategies' samples into the rows its trainer reads.

    The base class keeps every sample as the strategy made it. Subclass it and override what differs; every
    method gets ``datasets.Dataset`` objects and returns new ones (use ``Dataset.map`` / ``select``, so
    memory does not grow with the data).
    """

    #: Columns every strategy's rows must carry for this method (checked at ``validate`` and while preparing).
    columns: tuple[str, ...] = ()

    def features(self, columns: tuple[str, ...]) -> Any | None:
        """The ``datasets.Features`` of a strategy's output with these columns (``None``: inferred)."""
        return None

    def samples(self, dataset: Any, counts: SourceCounts, work: Path, tokenizer: Any = None) -> Any:
        """Check one source's samples (lengths, empty ones): return those kept; count each drop in ``counts``
        with :meth:`SourceCounts.drop` and each change with :meth:`SourceCounts.change`. ``work`` is a
        scratch folder for cache files; ``tokenizer`` is the loaded tokenizer (to measure text rows)."""
        counts.kept = len(dataset)
        return dataset

    def rows(self, dataset: Any, split: str, work: Path, tokenizer: Any = None) -> tuple[Any, dict[str, Any]]:
        """Turn one split's mixed samples (``split`` is ``"train"`` or ``"eval"``) into the trainer's rows
        (pack them, drop helper columns); also return the split's figures for the summary and the model card
        (``{"tokens": ..., "trained_tokens": ...}``)."""
        return dataset, {}

    def describe(self, split: str, samples: int, rows: int, figures: dict[str, Any]) -> str:
        """One summary line for a split."""
        return f"{split}: {samples:,} samples"

    def collator(self, tokenizer: Any, training: bool) -> Any | None:
        """The callable that batches rows (``None``: the trainer's default)."""
        return None

    def preview(self, dataset: Any, tokenizer: Any, count: int = 3) -> list[str]:
        """``debug: true``: lines showing the first prepared rows."""
        return [f"row {i}: {dataset[i]}" for i in range(min(count, len(dataset)))]


# --------------------------------------------------------------------------------------------- trainer


@dataclass
class TrainerParts:
    """Everything the core has ready when the method builds its trainer; a method takes what it needs."""

    cfg: Any
    model: Any
    tokenizer: Any
    args: Any  # an instance of the method's arguments class
    train_dataset: Any
    eval_dataset: Any | None
    train_collator: Any | None
    eval_collator: Any | None
    callbacks: list[Any]
    manager: Any = field(default=None, repr=False)

    def reference_model(self) -> Any:
        """A frozen copy of the base model, built as the policy was (kernels, quantization), not wrapped."""
        from gym.model import build_model

        reference = build_model(self.cfg, self.tokenizer, self.manager, wrap=False)
        reference.requires_grad_(False)
        return reference.eval()


@dataclass(frozen=True)
class TrainingMethod:
    """A way of training: its name, its rows and its trainer.

    ``build_trainer`` (a callable or ``"module:function"``) is called with :class:`TrainerParts` and returns
    an object with ``train(resume_from_checkpoint=...)``, ``save_model(dir)``, ``state`` and
    ``callback_handler`` (a ``transformers.Trainer`` or a subclass, such as TRL's trainers).
    ``arguments_class`` (``transformers.TrainingArguments`` or a subclass, such as TRL's ``DPOConfig``)
    gets gym's mapping of the core keys, then ``arguments``, then every plugin's
    :func:`gym_training_arguments`.
    """

    name: str
    build_trainer: str | Callable[[TrainerParts], Any]
    arguments_class: str | type = "transformers:TrainingArguments"
    arguments: dict[str, Any] = field(default_factory=dict)
    data_shape: DataShape = field(default_factory=DataShape)
    #: How many of the trainer's batch rows each prepared row becomes (a method that samples several completions
    #: of each prompt and trains on each); the step plan, ``*s_per_epoch`` and the printed step count follow it.
    rows_per_row: int = 1
    description: str = ""
