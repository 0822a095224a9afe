"""gym's public plugin API: everything a plugin may use, in one place.

Built-in plugins import only from here, as third-party plugins should (a test checks the built-in ones and
the example plugin). Importing this module is cheap: the names below are loaded on first use, and none of
them imports torch until it is called.

::

    from gym.api import hookimpl, StrictConfig, ConfigProblem, DatasetStrategy, TrainingMethod

Groups:

- **hooks and config**: ``hookimpl``, ``StrictConfig`` (base of a config fragment) and ``Field`` (pydantic's,
  to describe a key), ``CoreConfig`` (the
  type of ``cfg``), ``DatasetConfig``, ``ConfigProblem``, ``strategy_of`` (a dataset entry's strategy), ``config_folder`` (where the config file is),
  ``get_plugin_manager``;
- **errors**: ``GymError``, ``ConfigError``, ``DataError``, ``ModelError``, ``PluginError``, ``RowError``, ``LostProcessError``;
- **methods and data**: ``TrainingMethod``, ``TrainerParts``, ``DataShape``, ``SourceCounts``,
  ``DatasetStrategy``, ``BuiltinDataset``, ``parse_options``, ``write_rows_once``, ``gym_home``, ``publish``,
  ``EvalTask``, ``EvalProblem``, ``eval_tasks`` (task evaluations and the installed ones);
- **the strategy toolkit**: ``IGNORE_INDEX``, ``Segment``, ``SegmentEncoder``, ``column``, ``text_at``,
  ``row_error``, ``train_on_inputs_for``, ``split_into_pieces``, ``PromptFormat``, ``InstructionStrategy``,
  ``TextStrategy``, ``ChatRenderer``, ``CompiledTemplate``, ``SpanLabeler``, ``TemplateError``, ``resolve_chat_template``,
  ``is_known_chat_template``, ``CHAT_TEMPLATE_NAMES``;
- **phases**: ``load_config``, ``load_tokenizer``, ``load_model``, ``build_model``, ``prepare_data``,
  ``run``, ``resolve_source``, ``resolve_precision``, ``weight_dtype``;
- **output**: ``say``, ``is_main_process``, ``process_count``, ``redacted`` (the config as plain data, secrets redacted),
  ``push_problem`` (why a push to the hub would fail, checked before any work).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gym.hookspecs import hookimpl

_EXPORTS: dict[str, str] = {
    # hooks and config
    "StrictConfig": "gym.schema",
    "Field": "pydantic",
    "CoreConfig": "gym.schema",
    "DatasetConfig": "gym.schema",
    "ConfigProblem": "gym.config",
    "load_config": "gym.config",
    "strategy_of": "gym.config",
    "config_folder": "gym.config",
    "get_plugin_manager": "gym.plugin_manager",
    # errors
    "GymError": "gym.errors",
    "ConfigError": "gym.errors",
    "DataError": "gym.errors",
    "ModelError": "gym.errors",
    "PluginError": "gym.errors",
    "LostProcessError": "gym.errors",
    "RowError": "gym.datasets_api",
    # methods and data
    "TrainingMethod": "gym.methods",
    "TrainerParts": "gym.methods",
    "DataShape": "gym.methods",
    "SourceCounts": "gym.methods",
    "DatasetStrategy": "gym.datasets_api",
    "BuiltinDataset": "gym.datasets_api",
    "parse_options": "gym.builtin_data",
    "write_rows_once": "gym.builtin_data",
    "gym_home": "gym.builtin",
    "publish": "gym.files",
    "EvalTask": "gym.eval_tasks",
    "EvalProblem": "gym.eval_tasks",
    "eval_tasks": "gym.eval_tasks",
    # the strategy toolkit
    "IGNORE_INDEX": "gym.data.tokenizing",
    "Segment": "gym.data.tokenizing",
    "SegmentEncoder": "gym.data.tokenizing",
    "column": "gym.data.tokenizing",
    "text_at": "gym.data.tokenizing",
    "row_error": "gym.data.tokenizing",
    "train_on_inputs_for": "gym.data.tokenizing",
    "split_into_pieces": "gym.data.tokenizing",
    "PromptFormat": "gym.data.instruction",
    "InstructionStrategy": "gym.data.instruction",
    "TextStrategy": "gym.data.text",
    "ChatRenderer": "gym.data.chat",
    "CompiledTemplate": "gym.data.chat",
    "SpanLabeler": "gym.data.chat",
    "TemplateError": "gym.data.chat",
    "resolve_chat_template": "gym.chat_templates",
    "is_known_chat_template": "gym.chat_templates",
    "CHAT_TEMPLATE_NAMES": "gym.chat_templates",
    # phases
    "load_tokenizer": "gym.model",
    "load_model": "gym.model",
    "build_model": "gym.model",
    "resolve_source": "gym.model",
    "weight_dtype": "gym.model",
    "resolve_precision": "gym.training",
    "prepare_data": "gym.data.prepare",
    "run": "gym.run",
    # output
    "say": "gym.output",
    "is_main_process": "gym.output",
    "process_count": "gym.output",
    # the config as trackers and reports show it (secrets redacted)
    "redacted": "gym.config",
    # the hub: why a push would fail, said before any work
    "push_problem": "gym.hub",
}

__all__ = ["hookimpl", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"gym.api has no {name!r}; the plugin API is: {', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and editors; at run time the names load on first use
    from gym.builtin import gym_home
    from gym.builtin_data import parse_options, write_rows_once
    from gym.chat_templates import CHAT_TEMPLATE_NAMES, is_known_chat_template, resolve_chat_template
    from gym.config import ConfigProblem, config_folder, load_config, redacted, strategy_of
    from gym.plugin_manager import get_plugin_manager
    from gym.hub import push_problem
    from gym.data.chat import ChatRenderer, CompiledTemplate, SpanLabeler, TemplateError
    from gym.data.instruction import InstructionStrategy, PromptFormat
    from gym.data.prepare import prepare_data
    from gym.data.text import TextStrategy
    from gym.data.tokenizing import (
        IGNORE_INDEX,
        Segment,
        SegmentEncoder,
        column,
        row_error,
        split_into_pieces,
        text_at,
        train_on_inputs_for,
    )
    from gym.datasets_api import BuiltinDataset, DatasetStrategy, RowError
    from gym.errors import ConfigError, DataError, GymError, LostProcessError, ModelError, PluginError
    from gym.eval_tasks import EvalProblem, EvalTask, eval_tasks
    from gym.files import publish
    from gym.methods import DataShape, SourceCounts, TrainerParts, TrainingMethod
    from gym.model import build_model, load_model, load_tokenizer, resolve_source, weight_dtype
    from gym.output import is_main_process, process_count, say
    from gym.run import run
    from gym.schema import CoreConfig, DatasetConfig, StrictConfig
    from pydantic import Field
    from gym.training import resolve_precision
