"""The numeric-answer task: ``eval_task: gsm8k``, exact match of the final number on GSM8K-style problems.

::

    eval_task: gsm8k
    eval_task_path: data/gsm8k/test.jsonl   # a jsonl (or json list) file, or a folder holding one
    eval_task_samples: 200                   # the first 200 problems of the file

Each row has a ``question`` and an ``answer`` whose last line is ``#### <number>`` (the GSM8K layout). The model
answers greedily; the number it gives is read from its own ``#### <number>``, else from "the answer is
<number>", else it is the last number it wrote. Commas, ``$`` and trailing zeros do not matter (``1,234.50`` is
``1234.5``). The prompts follow the first ``datasets`` entry's type, like every task evaluation: each problem
carries ``question`` / ``answer`` and the common layouts (``instruction`` / ``input`` / ``output``,
``messages``, ``text``), so a model trained with ``type: {field_instruction: question, field_output: answer}``,
``alpaca`` or ``chat_template`` is asked the way it was trained.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Optional

from pydantic import Field

from gym.api import ConfigProblem, DataError, EvalProblem, EvalTask, StrictConfig, hookimpl

NAME = "gsm8k"
MAX_NEW_TOKENS = 320  # GSM8K's worked answers are up to ~250 tokens
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
ANSWER_IS = re.compile(r"answer is\W*?\$?\s*(-?\d[\d,]*(?:\.\d+)?|-?\.\d+)", re.IGNORECASE)


class NumericAnswerSettings(StrictConfig):
    """Keys of the numeric-answer task."""

    eval_task_path: Optional[str] = Field(
        None,
        description="eval_task: gsm8k: the file of problems (jsonl or json, `question` and `answer` ending in "
        "`#### <number>`), or a folder holding one; relative to the config file.",
    )


@hookimpl
def gym_config_schema():
    return NumericAnswerSettings


def _names(cfg: Any) -> list[str]:
    value = getattr(cfg, "eval_task", None)
    return [] if not value else [value] if isinstance(value, str) else list(value)


@hookimpl
def gym_validate_config(cfg):
    wanted = NAME in _names(cfg)
    if not wanted:
        if cfg.eval_task_path:
            return [ConfigProblem("eval_task_path", f"is read only by eval_task: {NAME}, which the config does not name")]
        return None
    if not cfg.eval_task_path:
        return [ConfigProblem("eval_task_path", f"eval_task: {NAME} needs the file of problems (jsonl with question "
                                                "and answer ending in '#### <number>')")]
    try:
        problems_file(cfg)
    except DataError as exc:
        return [ConfigProblem("eval_task_path", str(exc))]
    return None


@hookimpl
def gym_eval_tasks():
    return [
        EvalTask(
            name=NAME,
            description="GSM8K-style word problems from eval_task_path: exact match of the final number "
            "('#### 42', 'the answer is 42', else the last number of the answer)",
            problems=problems,
            score=score_answer,
            max_new_tokens=MAX_NEW_TOKENS,
        )
    ]


# ------------------------------------------------------------------------------------------- reading


def problems_file(cfg: Any) -> Path:
    """The file ``eval_task_path`` names (a folder must hold ``test.jsonl`` or exactly one json / jsonl file)."""
    from gym.api import config_folder

    path = Path(cfg.eval_task_path).expanduser()
    if not path.is_absolute():
        path = config_folder(cfg) / path
    if path.is_dir():
        if (path / "test.jsonl").is_file():
            return path / "test.jsonl"
        found = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json") and p.is_file())
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise DataError(f"{path} is a folder; it must hold test.jsonl or exactly one .jsonl / .json file "
                            f"(found: {listed}); name the file")
        return found[0]
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    return path


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line or item number, row) of a jsonl file or a json list."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from None
        return list(enumerate(items, 1))
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except ValueError as exc:
            raise DataError(f"{path}:{number}: not valid JSON: {exc}") from None
    return rows


def expected_number(answer: str) -> Optional[str]:
    """The number after the last ``####`` of a reference answer, normalised; ``None`` if there is none."""
    if "####" not in answer:
        return None
    found = NUMBER.search(answer.rsplit("####", 1)[1])
    return normalize(found.group(0)) if found else None


def problems(cfg: Any, count: int) -> list[EvalProblem]:
    """The first ``count`` problems of the file, each in the common dataset layouts."""
    path = problems_file(cfg)
    out = []
    for number, row in read_rows(path):
        if len(out) == count:
            break
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise DataError(f"{path}:{number}: each row needs the text fields question and answer")
        expected = expected_number(row["answer"])
        if expected is None:
            raise DataError(f"{path}:{number}: the answer does not end with '#### <number>'")
        question, answer = row["question"], row["answer"]
        layouts = {
            "instruction": question, "input": "", "output": answer,
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "text": f"{question}\n{answer}",
        }
        out.append(EvalProblem(question=question, expected=expected, row={**layouts, **row}))
    return out


# ------------------------------------------------------------------------------------------- scoring


def normalize(number: str) -> Optional[str]:
    """``"1,234.50"`` -> ``"1234.5"``, ``"-0"`` -> ``"0"``; ``None`` when it is not a number."""
    try:
        value = Decimal(number.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text


def final_number(text: str) -> Optional[str]:
    """The number an answer gives: after its first ``####``, else after its first "the answer is", else its last
    number; normalised. ``None`` when it gives none."""
    if "####" in text:
        found = NUMBER.search(text.split("####", 1)[1])
        if found:
            return normalize(found.group(0))
    said = ANSWER_IS.search(text)
    if said:
        return normalize(said.group(1))
    numbers = NUMBER.findall(text)
    return normalize(numbers[-1]) if numbers else None


def score_answer(expected: str, answer: str) -> dict[str, float]:
    return {"exact_match": float(final_number(answer) == expected)}
