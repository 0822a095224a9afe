"""The ``pretrain`` dataset strategy: raw text (``text_column`` or ``field``, default ``text``), all trained.

Like ``completion``: an EOS token ends each text and long texts are cut into ``sequence_len`` pieces,
all kept. The dataset is read and tokenized ahead of training (gym does not stream).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gym.api import DatasetStrategy, hookimpl

SFT = ("sft",)  # the training method these rows are for

NAME = "pretrain"


class PretrainOptions(BaseModel):
    """Dataset keys of the pretrain strategy."""

    model_config = ConfigDict(extra="forbid")

    text_column: str | None = Field(None, description="Column holding the text (default: text).")
    field: str | None = Field(None, description="Column holding the text (default: text).")


@hookimpl
def gym_dataset_strategies():
    return [
        DatasetStrategy(
            name=NAME,
            builder=f"{__name__}:build",
            methods=SFT,
            options=PretrainOptions,
            description="Raw text for continued pre-training, all trained; long texts split into pieces.",
        )
    ]



def build(tokenizer: Any, cfg: Any, dataset: Any):
    from gym.api import TextStrategy
    from gym.api import ConfigError

    text_column = getattr(dataset, "text_column", None)
    field = getattr(dataset, "field", None)
    if text_column and field and text_column != field:
        raise ConfigError(f"dataset {dataset.path}: text_column {text_column!r} and field {field!r} disagree; set one")
    return TextStrategy(tokenizer, cfg, text_column or field or "text")
