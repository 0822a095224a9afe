"""The ``user_defined`` dataset strategy: a prompt format written in the config instead of a type name.

::

    datasets:
      - path: data.jsonl
        type:
          field_instruction: question
          field_output: answer
          format: "[INST] {instruction} {input} [/INST] "
          no_input_format: "[INST] {instruction} [/INST] "

Fields default to instruction / input / output / system; without ``format`` the Alpaca prompt is used.
The system text (the row's ``field_system`` or ``system_prompt``) is written with ``system_format`` before
the prompt, unless the format places ``{system}`` itself. The output and an EOS token are trained.
"""

from __future__ import annotations

from typing import Any

from gym import hookimpl
from gym.datasets_api import DatasetStrategy

NAME = "user_defined"


@hookimpl
def gym_dataset_strategies():
    return [
        DatasetStrategy(
            name=NAME,
            builder=f"{__name__}:build",
            description="A prompt format given as a mapping in `type:` (field_instruction, format, ...).",
        )
    ]


@hookimpl
def gym_validate_config(cfg):
    from gym.data.options import foreign_option_problems

    return foreign_option_problems(cfg, (), None, user_defined=True)


def build(tokenizer: Any, cfg: Any, dataset: Any):
    from gym.data.instruction import InstructionStrategy, PromptFormat
    from gym.errors import ConfigError
    from gym.prompt_strategies.alpaca import PROMPTS

    spec = dataset.type
    if isinstance(spec, str):
        raise ConfigError(
            f"dataset {dataset.path}: type {NAME!r} needs the format written as a mapping under `type:` "
            "(field_instruction, field_output, format, ...)"
        )
    alpaca_with_input, alpaca_without_input = PROMPTS["alpaca"]
    with_input = spec.format or (alpaca_with_input if spec.no_input_format is None else spec.no_input_format)
    if spec.no_input_format is not None:
        without_input = spec.no_input_format
    elif spec.format is not None:
        without_input = spec.format.replace("{input}", "")
    else:
        without_input = alpaca_without_input
    prompt = PromptFormat(
        with_input=with_input,
        without_input=without_input,
        field_instruction=spec.field_instruction or "instruction",
        field_input=spec.field_input or "input",
        field_output=spec.field_output or "output",
        field_system=spec.field_system or "system",
        system_format=spec.system_format or "{system}",
        system_prompt=spec.system_prompt,
    )
    prompt.check(f"dataset {dataset.path}: type")
    return InstructionStrategy(tokenizer, cfg, dataset, prompt)
