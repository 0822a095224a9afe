"""What a dataset strategy and a built-in dataset are, for plugins that register one (no torch imports here).

A strategy turns raw rows of one layout (alpaca, chat messages, raw text, preference pairs, ...) into the
columns a training method reads. Plugins return :class:`DatasetStrategy` records from the
``gym_dataset_strategies`` hook; the record names its builder by import path so that nothing heavy is
imported until data is actually prepared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel

from gym.methods import load_object


@dataclass(frozen=True)
class DatasetStrategy:
    """One ``datasets[].type`` name and how to build what converts its rows.

    ``builder`` is ``"package.module:callable"`` (or the callable itself). It is called as
    ``builder(tokenizer=..., cfg=..., dataset=...)`` with the loaded tokenizer, the whole typed config and
    this dataset's typed entry, and returns an object with a method
    ``process_batch(rows: dict[str, list]) -> dict[str, list]`` giving, for a batch of raw rows, the
    columns in ``columns`` (it may give more or fewer samples than rows: every list has one item a sample).

    ``columns`` are the columns its samples carry (``("input_ids", "labels")`` for supervised rows, with
    ``-100`` where nothing is trained). ``methods`` are the names of the training methods it serves (``None``:
    every method whose rows need no column it lacks); choosing it for another method is a config error naming
    ``datasets[N].type``.

    ``options`` is a Pydantic model of the extra keys this strategy accepts in a dataset entry
    (``field_messages`` for chat_template); they are validated with the rest of the config, and set on an
    entry of another type they are an error. ``inline`` is a Pydantic model for a ``type:`` written as a
    mapping instead of a name (the user-defined format); at most one strategy may declare one.
    """

    name: str
    builder: str | Callable[..., Any]
    columns: tuple[str, ...] = ("input_ids", "labels")
    methods: tuple[str, ...] | None = None
    options: type[BaseModel] | None = None
    inline: type[BaseModel] | None = None
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def load_builder(self) -> Callable[..., Any]:
        return load_object(self.builder)


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset gym generates on the spot: ``path: builtin:<name>`` (with options, ``builtin:<name>?k=v``).

    ``materialize(path) -> str`` writes the rows for that path (options included) to a local file, once, and
    returns the file's path; it must give the same rows for the same path, and a new file name whenever the
    rows change (so caches never mix old and new). ``check(path)`` raises :class:`gym.api.ConfigError` for
    bad options without writing anything.
    """

    name: str
    materialize: str | Callable[[str], str]
    description: str = ""
    check: Callable[[str], None] | None = None


class RowError(ValueError):
    """Raised by a strategy when one row cannot be used; gym adds the dataset and row number."""

    def __init__(self, message: str, field: str | None = None, row: int | None = None):
        super().__init__(message)
        self.field = field
        self.row = row
