"""The ``pretrain`` dataset strategy: raw text (``text_column`` or ``field``, default ``text``), all trained.

Like ``completion``: an EOS token ends each text and long texts are cut into ``sequence_len`` pieces,
all kept. The dataset is read and tokenized ahead of training (gym does not stream).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gym import hookimpl
from gym.datasets_api import DatasetStrategy

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
            options=PretrainOptions,
            description="Raw text for continued pre-training, all trained; long texts split into pieces.",
        )
    ]


@hookimpl
def gym_validate_config(cfg):
    from gym.data.options import foreign_option_problems

    return foreign_option_problems(cfg, (NAME,), PretrainOptions)


def build(tokenizer: Any, cfg: Any, dataset: Any):
    from gym.data.text import TextStrategy
    from gym.errors import ConfigError

    text_column = getattr(dataset, "text_column", None)
    field = getattr(dataset, "field", None)
    if text_column and field and text_column != field:
        raise ConfigError(f"dataset {dataset.path}: text_column {text_column!r} and field {field!r} disagree; set one")
    return TextStrategy(tokenizer, cfg, text_column or field or "text")
