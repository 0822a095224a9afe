"""Strategy toolkit: instruction / response samples, a prompt (from a format), then the trained response and EOS."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from gym.data.tokenizing import SegmentEncoder, column, text_at, train_on_inputs_for


@dataclass(frozen=True)
class PromptFormat:
    """How one row becomes a prompt. Formats use ``{instruction}``, ``{input}`` (and ``{system}``)."""

    with_input: str
    without_input: str
    field_instruction: str = "instruction"
    field_input: str = "input"
    field_output: str = "output"
    field_system: str | None = None
    system_format: str = "{system}"
    system_prompt: str | None = None

    def check(self, where: str) -> None:
        """Raise ConfigError for a format that names an unknown placeholder or is not a valid format string."""
        from gym.errors import ConfigError

        for key, text, allowed in (
            ("format", self.with_input, {"instruction", "input", "system"}),
            ("no_input_format", self.without_input, {"instruction", "input", "system"}),
            ("system_format", self.system_format, {"system"}),
        ):
            try:
                names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
            except ValueError as exc:
                raise ConfigError(f"{where}: {key} {text!r} is not a valid format: {exc}") from None
            unknown = names - allowed
            if unknown:
                raise ConfigError(
                    f"{where}: {key} uses {', '.join('{' + n + '}' for n in sorted(unknown))}; "
                    f"it may use {', '.join('{' + n + '}' for n in sorted(allowed))} (write {{{{ and }}}} for braces)"
                )


class InstructionStrategy:
    """Prompt (not trained unless train_on_inputs), response (trained), EOS (trained)."""

    def __init__(self, tokenizer: Any, cfg: Any, dataset: Any, prompt: PromptFormat):
        self.encoder = SegmentEncoder(tokenizer)
        self.prompt = prompt
        self.train_inputs = train_on_inputs_for(cfg, dataset)

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        p = self.prompt
        instructions = column(rows, p.field_instruction)
        outputs = column(rows, p.field_output)
        inputs = rows.get(p.field_input)
        systems = rows.get(p.field_system) if p.field_system else None
        samples = []
        for i in range(len(instructions)):
            instruction = text_at(instructions, i, p.field_instruction)
            output = text_at(outputs, i, p.field_output)
            given_input = text_at(inputs, i, p.field_input, optional=True) if inputs is not None else ""
            system = text_at(systems, i, p.field_system, optional=True) if systems is not None else ""
            system = system or p.system_prompt or ""
            template = p.with_input if given_input.strip() else p.without_input
            prompt = template.format(instruction=instruction, input=given_input, system=system)
            if system and "{system}" not in template:
                prompt = p.system_format.format(system=system) + prompt
            samples.append(((prompt, self.train_inputs), (output, True)))
        return self.encoder.encode(samples, eos=[True] * len(samples))
