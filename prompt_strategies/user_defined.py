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

from pydantic import Field

from gym.api import DatasetStrategy, StrictConfig, hookimpl

SFT = ("sft",)  # the training method these rows are for

NAME = "user_defined"


class UserDefinedFormat(StrictConfig):
    """A prompt format given inline instead of a strategy name (``type: {field_instruction: ..}``)."""

    field_system: str | None = Field(None, description="Column holding the system prompt.")
    field_instruction: str | None = Field(None, description="Column holding the instruction.")
    field_input: str | None = Field(None, description="Column holding the optional input.")
    field_output: str | None = Field(None, description="Column holding the response (trained on).")
    format: str | None = Field(
        None, description="Prompt with {instruction} and {input}, used when the row has an input."
    )
    no_input_format: str | None = Field(None, description="Prompt with {instruction}, used when the input is empty.")
    system_format: str | None = Field("{system}", description="How the system prompt is written, with {system}.")
    system_prompt: str | None = Field(None, description="System prompt used when a row has none.")


@hookimpl
def gym_dataset_strategies():
    return [
        DatasetStrategy(
            name=NAME,
            builder=f"{__name__}:build",
            methods=SFT,
            inline=UserDefinedFormat,
            description="A prompt format given as a mapping in `type:` (field_instruction, format, ...).",
        )
    ]



def build(tokenizer: Any, cfg: Any, dataset: Any):
    from gym.api import ConfigError, InstructionStrategy, PromptFormat
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
