"""What a dataset strategy is, for plugins that register one (no torch, no tokenizer imports here).

A strategy turns raw rows of one layout (alpaca, chat messages, raw text, ...) into token ids and labels.
Plugins return :class:`DatasetStrategy` records from the ``gym_dataset_strategies`` hook; the record
names the builder by import path so that nothing heavy is imported until data is actually prepared.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel


@dataclass(frozen=True)
class DatasetStrategy:
    """One ``datasets[].type`` name and how to build its tokenizer.

    ``builder`` is ``"package.module:callable"`` (or the callable itself). It is called as
    ``builder(tokenizer=..., cfg=..., dataset=...)`` with the loaded tokenizer, the whole typed config
    and this dataset's typed entry, and returns an object with a method
    ``tokenize_batch(rows: dict[str, list]) -> dict[str, list]`` that gives ``input_ids`` and ``labels``
    (``-100`` where nothing is trained) for every row of the batch, in order.

    ``options`` is a Pydantic model of the extra keys this strategy accepts in a dataset entry
    (``field_messages`` for chat_template, say); they are validated with the rest of the config.
    """

    name: str
    builder: str | Callable[..., Any]
    options: type[BaseModel] | None = None
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def load_builder(self) -> Callable[..., Any]:
        if callable(self.builder):
            return self.builder
        module_name, _, attr = self.builder.partition(":")
        return getattr(importlib.import_module(module_name), attr)


class RowError(ValueError):
    """Raised by a strategy when one row cannot be turned into a sample; gym adds where it was."""

    def __init__(self, message: str, field: str | None = None, row: int | None = None):
        super().__init__(message)
        self.field = field
        self.row = row
