"""What the ``gym_trainer_class`` hook returns (no torch imports here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainerChoice:
    """The trainer class to build and the arguments class it takes.

    ``arguments_class`` is ``transformers.TrainingArguments`` or a subclass (TRL's ``DPOConfig``, ...).
    ``name`` is shown in logs and the model card (``"sft"``, ``"dpo"``).
    """

    name: str
    trainer_class: type
    arguments_class: type
    defaults: dict[str, Any] | None = None
