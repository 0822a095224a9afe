"""The ``alpaca`` dataset strategy: ``instruction``, optional ``input``, trained ``output``.

The prompt is the Stanford Alpaca text; the output and an EOS token are trained. Two variants keep the
same columns with other prompt layouts: ``alpaca:chat`` (``USER:`` / ``ASSISTANT:``) and ``alpaca:phi``
(Phi-3 turn markers).
"""

from __future__ import annotations

from typing import Any

from gym.api import DatasetStrategy, hookimpl

SFT = ("sft",)  # the training method these rows are for

NAMES = ("alpaca", "alpaca:chat", "alpaca:phi")

_INTRO_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)
_INTRO = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"

# name -> (prompt with input, prompt without input)
PROMPTS: dict[str, tuple[str, str]] = {
    "alpaca": (
        _INTRO_INPUT + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        _INTRO + "### Instruction:\n{instruction}\n\n### Response:\n",
    ),
    "alpaca:chat": ("USER: {instruction}\n{input}\nASSISTANT: ", "USER: {instruction}\nASSISTANT: "),
    "alpaca:phi": (
        "<|user|>\n{instruction}\n{input}<|end|>\n<|assistant|>\n",
        "<|user|>\n{instruction}<|end|>\n<|assistant|>\n",
    ),
}


@hookimpl
def gym_dataset_strategies():
    return [
        DatasetStrategy(
            name="alpaca",
            builder=f"{__name__}:build",
            methods=SFT,
            description="instruction / input / output rows with the Alpaca prompt; output trained.",
        ),
        DatasetStrategy(
            name="alpaca:chat",
            builder=f"{__name__}:build",
            methods=SFT,
            description="Alpaca columns written as USER: / ASSISTANT: turns.",
        ),
        DatasetStrategy(
            name="alpaca:phi",
            builder=f"{__name__}:build",
            methods=SFT,
            description="Alpaca columns written with Phi-3 turn markers.",
        ),
    ]



def build(tokenizer: Any, cfg: Any, dataset: Any):
    from gym.api import InstructionStrategy, PromptFormat

    with_input, without_input = PROMPTS[dataset.type]
    return InstructionStrategy(tokenizer, cfg, dataset, PromptFormat(with_input, without_input))
