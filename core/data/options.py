"""Config checks that strategies share (pydantic only: imported while validating, never torch)."""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import BaseModel


def foreign_option_problems(
    cfg: Any, type_names: Iterable[str], own_options: type[BaseModel] | None, user_defined: bool = False
) -> list:
    """Problems for dataset entries of these types that set keys only *other* strategies use.

    Every strategy's keys are accepted by the composed dataset schema, so ``field_messages`` written on an
    ``alpaca`` dataset would validate and then do nothing; this names it instead.
    """
    from gym.config import ConfigProblem
    from gym.schema import DatasetConfig, UserDefinedFormat

    names = set(type_names)
    allowed = set(DatasetConfig.model_fields) | set(own_options.model_fields if own_options else ())
    problems = []
    for list_key in ("datasets", "test_datasets"):
        for i, entry in enumerate(getattr(cfg, list_key, None) or ()):
            inline = isinstance(entry.type, UserDefinedFormat)
            is_mine = inline if user_defined else (not inline and entry.type in names)
            if not is_mine:
                continue
            kind = "user-defined format" if user_defined else repr(entry.type)
            for key in sorted(entry.model_fields_set - allowed):
                if getattr(entry, key, None) is None:
                    continue
                problems.append(
                    ConfigProblem(f"{list_key}.{i}.{key}", f"not used by dataset type {kind}; remove it")
                )
    return problems
