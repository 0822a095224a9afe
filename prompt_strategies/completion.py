"""The ``completion`` dataset strategy: raw text in ``field`` (default ``text``), all of it trained.

An EOS token ends each text; a text longer than ``sequence_len`` is cut into consecutive pieces of
``sequence_len`` tokens and every piece is kept.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gym.api import DatasetStrategy, hookimpl

SFT = ("sft",)  # the training method these rows are for

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
            methods=SFT,
            options=CompletionOptions,
            description="Raw text, all trained; long texts split into sequence_len pieces.",
        )
    ]



def build(tokenizer: Any, cfg: Any, dataset: Any):
    from gym.api import TextStrategy

    return TextStrategy(tokenizer, cfg, getattr(dataset, "field", None) or "text")
