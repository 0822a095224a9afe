"""Dataset strategies for GRPO (``rl: grpo``): rows of prompts, with the columns the reward functions read.

- ``type: prompt``: a ``prompt`` column (``field_prompt`` names another), holding text or chat messages
  (``[{role, content}, ...]``, rendered by TRL with the tokenizer's chat template and a generation prompt).
- ``type: grpo.transform`` with ``transform: module.function``: a function of yours, in a module next to the
  config (or in the working directory), that maps one raw row (a dict) to ``{"prompt": ..., <extra columns>}``.
  It is found at ``validate`` without being run (a missing module or function names ``datasets.N.transform``).
- ``type: module.function`` (Axolotl's form, read through ``gym_dataset_type``): ``function(cfg)`` returns the row
  function ``fn(row, tokenizer=None)``, or ``(fn, {"remove_columns": [...]})``; what ``fn`` returns is merged
  into the row, as ``datasets.map`` does, less the removed columns.

Every other column reaches the reward functions as a keyword argument of the same name (TRL passes all dataset
columns but ``prompt``): by default all the raw row's other columns (``prompt``) or everything the transform
returned; ``keep_columns: [answer]`` keeps only those. A strategy's columns are fixed when it registers, so the
extra columns travel as one JSON column that the GRPO method expands into columns again.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gym.api import ConfigProblem, DataError, DatasetStrategy, RowError, hookimpl

GRPO = ("grpo", "gdpo")  # the training methods these rows serve (gdpo: GRPO with per-reward normalisation)
EXTRA = "extra_columns"  # the same name as gym.plugins.grpo.EXTRA (kept here so nothing heavy loads)
COLUMNS = ("prompt", EXTRA)
TRANSFORM = "grpo.transform"
FACTORY_BUILDER = "build_factory_transform"  # reads a user's module.function type (gym_dataset_type)


class PromptOptions(BaseModel):
    """Dataset keys of the GRPO prompt strategies."""

    model_config = ConfigDict(extra="forbid")

    field_prompt: str | None = Field(None, description="Column holding the prompt (default: prompt).")
    keep_columns: list[str] | None = Field(
        None, description="GRPO: the extra columns passed to the reward functions (default: all of them)."
    )
    transform: str | None = Field(
        None, description="grpo.transform: `module.function` mapping a raw row to {prompt, ...extra columns}."
    )


def prompt_strategy(name: str, builder: str, description: str) -> DatasetStrategy:
    """A strategy making GRPO prompt rows (the prompt and the extra columns), built by ``builder`` of this module."""
    return DatasetStrategy(name=name, builder=f"{__name__}:{builder}", columns=COLUMNS, methods=GRPO,
                           options=PromptOptions, description=description)


@hookimpl
def gym_dataset_strategies():
    return [
        prompt_strategy("prompt", "build_prompt",
                        "GRPO prompts: a prompt column (text or chat messages); other columns go to the rewards."),
        prompt_strategy(TRANSFORM, "build_transform",
                        "GRPO prompts made by your function (transform: module.function) from each raw row."),
    ]


def is_function_name(type_name: Any) -> bool:
    """``module.function`` (dotted Python names), the form of a user's transform as a dataset type."""
    return isinstance(type_name, str) and "." in type_name and all(p.isidentifier() for p in type_name.split("."))


@hookimpl
def gym_dataset_type(type_name, method):
    """With ``rl: grpo``, a dataset type no strategy registers that reads as ``module.function`` is a transform in
    Axolotl's form (checked at ``validate``: :func:`gym_validate_config`)."""
    if method not in GRPO or not is_function_name(type_name):
        return None
    return prompt_strategy(type_name, FACTORY_BUILDER,
                           "GRPO prompts from a module.function that returns the row function (Axolotl's form)")


def _own_type(cfg: Any, entry: Any) -> bool:
    """Whether the strategy that reads ``entry`` for the config's method is the one :func:`gym_dataset_type` made."""
    from gym.api import get_plugin_manager

    if not isinstance(entry.type, str) or getattr(cfg, "rl", None) not in GRPO:
        return False
    found = get_plugin_manager().strategy_for_method(entry.type, cfg.rl)
    return found is not None and found[0].builder == f"{__name__}:{FACTORY_BUILDER}"


@hookimpl
def gym_validate_config(cfg):
    problems = []
    folders = None
    for list_key in ("datasets", "test_datasets"):
        for i, entry in enumerate(getattr(cfg, list_key, None) or ()):
            if _own_type(cfg, entry):
                from gym.plugins.grpo import function_problem, search_folders

                folders = folders if folders is not None else search_folders(cfg)
                message = function_problem(entry.type, folders)
                if message:
                    problems.append(ConfigProblem(f"{list_key}.{i}.type", message))
                continue
            if entry.type != TRANSFORM:
                continue
            where = f"{list_key}.{i}.transform"
            reference = getattr(entry, "transform", None)
            if not reference:
                problems.append(ConfigProblem(where, f"type {TRANSFORM} needs transform: module.function "
                                              "(a function mapping a raw row to {prompt, ...})"))
                continue
            from gym.plugins.grpo import function_problem, search_folders

            folders = folders if folders is not None else search_folders(cfg)
            message = function_problem(reference, folders)
            if message:
                problems.append(ConfigProblem(where, message))
    return problems or None


@hookimpl
def gym_data_settings(cfg):
    """The transform's source is part of the cache key: editing the function must not reuse stale rows."""
    settings = {}
    for i, entry in enumerate(getattr(cfg, "datasets", None) or ()):
        reference = getattr(entry, "transform", None) if entry.type == TRANSFORM else None
        reference = entry.type if _own_type(cfg, entry) else reference
        if reference:
            from pathlib import Path

            from gym.plugins.grpo import module_spec, search_folders

            spec = module_spec(reference.rpartition(".")[0], search_folders(cfg))
            origin = getattr(spec, "origin", None)
            text = Path(origin).read_text(encoding="utf-8", errors="replace") if origin and Path(origin).is_file() else ""
            settings[f"grpo_transform_{i}"] = f"{reference}:{hash_text(text)}"
    return settings or None


def hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


class PromptBatch:
    """Rows -> ``prompt`` and the extra columns (as JSON); also the prompt's tokens as ``input_ids`` with every
    label ``-100``, for ``eval_task`` (which builds its prompts with the dataset's strategy)."""

    def __init__(self, tokenizer: Any, field: str, keep: list[str] | None, transform: Any = None, name: str = ""):
        self.tokenizer = tokenizer
        self.field = field
        self.keep = keep
        self.transform = transform
        self.name = name

    def _row(self, rows: dict[str, list], i: int) -> dict[str, Any]:
        row = {key: values[i] for key, values in rows.items()}
        if self.transform is None:
            if self.field not in row:
                raise RowError(f"the row has no column {self.field!r} (columns: {', '.join(row)})", self.field, i)
            prompt = row.pop(self.field)
            return {"prompt": prompt, **row}
        try:
            out = self.transform(dict(row))
        except Exception as exc:  # noqa: BLE001 - the user's function: name it
            raise RowError(f"transform {self.name} failed: {type(exc).__name__}: {exc}", None, i) from exc
        if out is None:
            return {"prompt": None}
        if not isinstance(out, dict) or "prompt" not in out:
            raise RowError(f"transform {self.name} must return a dict with a 'prompt' key, got "
                           f"{type(out).__name__}{' without prompt' if isinstance(out, dict) else ''}", None, i)
        return dict(out)

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        from gym.plugins.grpo import prompt_ids, prompt_is_empty

        size = len(next(iter(rows.values()))) if rows else 0
        prompts, extras, ids, labels = [], [], [], []
        for i in range(size):
            row = self._row(rows, i)
            prompt = row.pop("prompt")
            if prompt is not None and not isinstance(prompt, (str, list)):
                raise RowError(f"the prompt must be text or a list of chat messages, not {type(prompt).__name__}",
                               self.field, i)
            if isinstance(prompt, list):
                prompt = [{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in prompt]
            keep = row if self.keep is None else {k: row.get(k) for k in self.keep}
            prompts.append(prompt)
            extras.append(json.dumps({k: _jsonable(v) for k, v in keep.items()}))
            tokens = [] if prompt_is_empty(prompt) else prompt_ids(prompt, self.tokenizer)
            ids.append(tokens)
            labels.append([-100] * len(tokens))
        return {"prompt": prompts, EXTRA: extras, "input_ids": ids, "labels": labels}


def build_prompt(tokenizer: Any, cfg: Any, dataset: Any) -> PromptBatch:
    return PromptBatch(tokenizer, getattr(dataset, "field_prompt", None) or "prompt",
                       getattr(dataset, "keep_columns", None))


def build_transform(tokenizer: Any, cfg: Any, dataset: Any) -> PromptBatch:
    from gym.plugins.grpo import load_function, search_folders

    reference = dataset.transform
    function = load_function(reference, search_folders(cfg))
    return PromptBatch(tokenizer, "prompt", getattr(dataset, "keep_columns", None), function, reference)


def build_factory_transform(tokenizer: Any, cfg: Any, dataset: Any) -> PromptBatch:
    """``type: module.function`` in Axolotl's form: ``function(cfg)`` gives the row function, or the row function
    and ``{"remove_columns": [...]}``; the row function's result is merged into the row."""
    import inspect

    from gym.plugins.grpo import load_function, search_folders

    reference = dataset.type
    try:
        made = load_function(reference, search_folders(cfg))(cfg)
    except Exception as exc:  # noqa: BLE001 - the user's function: name it
        raise DataError(f"dataset type {reference}: {reference}(cfg) failed: {type(exc).__name__}: {exc}") from exc
    function, options = (made[0], made[1] if len(made) > 1 else {}) if isinstance(made, tuple) else (made, {})
    if not callable(function):
        raise DataError(f"dataset type {reference}: {reference}(cfg) must return a function of one row (or the "
                        f"function and its options), got {type(function).__name__}")
    removed = set((options or {}).get("remove_columns") or ())
    takes_tokenizer = "tokenizer" in inspect.signature(function).parameters

    def per_row(row: dict[str, Any]) -> dict[str, Any] | None:
        out = function(row, tokenizer=tokenizer) if takes_tokenizer else function(row)
        if not isinstance(out, dict):
            return out  # PromptBatch names what is wrong
        return {**{k: v for k, v in row.items() if k not in removed}, **out}

    return PromptBatch(tokenizer, "prompt", getattr(dataset, "keep_columns", None), per_row, reference)
