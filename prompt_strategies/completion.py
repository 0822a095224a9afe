"""The ``completion`` dataset strategy: raw text in ``field`` (default ``text``), all of it trained.

An EOS token ends each text; a text longer than ``sequence_len`` is cut into consecutive pieces of
``sequence_len`` tokens and every piece is kept.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gym import hookimpl
from gym.datasets_api import DatasetStrategy

NAME = "completion"


class CompletionOptions(BaseModel):
    """Dataset keys of the completion strategy."""

    model_config = ConfigDict(extra="forbid")

    field: str | None = Field(None, description="Column holding the text (default: text).")


@hookimpl
def gym_dataset_strategies():
    return [
        DatasetStrategy(
            name=NAME,
            builder=f"{__name__}:build",
            options=CompletionOptions,
            description="Raw text, all trained; long texts split into sequence_len pieces.",
        )
    ]


@hookimpl
def gym_validate_config(cfg):
    from gym.data.options import foreign_option_problems

    return foreign_option_problems(cfg, (NAME,), CompletionOptions)


def build(tokenizer: Any, cfg: Any, dataset: Any):
    from gym.data.text import TextStrategy

    return TextStrategy(tokenizer, cfg, getattr(dataset, "field", None) or "text")
