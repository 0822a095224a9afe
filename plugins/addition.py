"""The addition plugin: ``builtin:addition``, a generated, learnable task, and ``eval_task: addition``.

``datasets: [{path: builtin:addition}]`` is a deterministic set of problems "What is 12 + 34?" -> "46", with
options after ``?``: ``builtin:addition?digits=3&rows=5000&seed=1``. Each row carries every common layout at
once (``instruction`` / ``input`` / ``output`` for alpaca, ``messages`` for chat_template, ``text`` for
completion), so any of those dataset types reads it. One operand pair in ten is held out: it never appears in
the training rows. ``slips=N`` makes careless demonstrations: N percent of the problems whose units column
carries are answered with the carry forgotten (``47 + 38`` -> ``75``), a model to improve with preference training.

The ``addition`` task evaluation (``gym_eval_tasks``; ``eval_task: addition``, run by the evaluate plugin) scores
greedy answers on held-out problems (exact match and per-digit accuracy); the prompts are made by the dataset
strategy of the ``builtin:addition`` entry (else the first ``datasets`` entry), so the evaluation sees exactly
the trained format.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

from gym.api import BuiltinDataset, EvalProblem, EvalTask, hookimpl, parse_options, write_rows_once

NAME = "addition"
PREFIX = "builtin:"
ADDITION_OPTIONS = {"digits": (1, 9), "rows": (1, 10_000_000), "seed": (0, 2**31 - 1), "slips": (0, 100)}


@hookimpl
def gym_builtin_datasets():
    return [
        BuiltinDataset(
            name=NAME,
            materialize=materialize,
            check=addition_task,
            description="addition problems 'What is 12 + 34?' -> '46', operands of `digits` digits (options: "
            "digits=2, rows=20000, seed=0, slips=0: the percent of carrying problems answered with the carry "
            "forgotten); columns instruction/input/output, messages and text",
        )
    ]


# ------------------------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class AdditionTask:
    """``a + b`` with operands of exactly ``digits`` digits. One pair in ten is held out for evaluation.
    ``slips`` percent of the training problems whose units column carries are answered with the carry forgotten
    (the operands are the same whatever ``slips`` is; evaluation answers are always right)."""

    digits: int = 2
    rows: int = 20000
    seed: int = 0
    slips: int = 0

    VERSION = 2  # bump when the rows change

    @property
    def smallest(self) -> int:
        return 10 ** (self.digits - 1) if self.digits > 1 else 0

    @property
    def largest(self) -> int:
        return 10**self.digits - 1

    @staticmethod
    def held_out(a: int, b: int) -> bool:
        """Whether the pair belongs to the evaluation problems (never in the training rows)."""
        return zlib.crc32(f"{a}+{b}".encode()) % 10 == 0

    def _pairs(self, rng: random.Random, held_out: bool) -> Iterator[tuple[int, int]]:
        while True:
            a, b = rng.randint(self.smallest, self.largest), rng.randint(self.smallest, self.largest)
            if self.held_out(a, b) == held_out:
                yield a, b

    def training_rows(self) -> Iterator[dict[str, Any]]:
        pairs = self._pairs(random.Random(self.seed), held_out=False)
        careless = random.Random(f"slips-{self.seed}")
        for _ in range(self.rows):
            a, b = next(pairs)
            slip = units_carry(a, b) and careless.random() * 100 < self.slips
            yield addition_row(a, b, a + b - 10 if slip else a + b)

    def evaluation_rows(self, count: int, seed: int = 1234) -> list[dict[str, Any]]:
        """``count`` held-out problems (the same ones for the same count and seed)."""
        return [addition_row(a, b) for a, b in self.evaluation_operands(count, seed)]

    def evaluation_operands(self, count: int, seed: int = 1234) -> list[tuple[int, int]]:
        """The operands of :meth:`evaluation_rows`."""
        pairs = self._pairs(random.Random(seed), held_out=True)
        return [next(pairs) for _ in range(count)]

    def file_name(self) -> str:
        slips = f"-p{self.slips}" if self.slips else ""
        return f"addition-v{self.VERSION}-d{self.digits}-n{self.rows}-s{self.seed}{slips}.jsonl"


def units_carry(a: int, b: int) -> bool:
    """Whether adding the units digits of ``a`` and ``b`` carries one into the tens."""
    return a % 10 + b % 10 >= 10


def addition_row(a: int, b: int, answer_value: int | None = None) -> dict[str, Any]:
    """One problem in every layout gym's built-in dataset types read (the answer ``a + b`` unless given)."""
    question = f"What is {a} + {b}?"
    answer = str(a + b if answer_value is None else answer_value)
    return {
        "instruction": question,
        "input": "",
        "output": answer,
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "text": f"{question} {answer}",
    }


def addition_task(path: str) -> AdditionTask:
    """The :class:`AdditionTask` a ``builtin:addition?...`` path describes (bad options are a ConfigError)."""
    return AdditionTask(**parse_options(path, ADDITION_OPTIONS))


def materialize(path: str) -> str:
    """The local jsonl file of a ``builtin:addition?...`` path, generated into the gym cache the first time."""
    task = addition_task(path)
    return write_rows_once(task.file_name(), task.training_rows())


# ------------------------------------------------------------------------------------------ the task


@hookimpl
def gym_eval_tasks():
    return [
        EvalTask(
            name=NAME,
            description="greedy answers to held-out addition problems (never trained on): exact match and "
            "per-digit accuracy; the digits follow the config's builtin:addition dataset",
            problems=evaluation_problems,
            score=score_answer,
            max_new_tokens=lambda cfg: task_for(cfg)[0].digits + 4,
            prompt_entry=lambda cfg: task_for(cfg)[1],
            unit="held-out problems",
        )
    ]


def task_for(cfg: Any) -> tuple[AdditionTask, Any]:
    """The task's generator and the dataset entry whose format the prompts follow."""
    for entry in cfg.datasets:
        if entry.path.startswith(PREFIX) and entry.path[len(PREFIX):].split("?", 1)[0] == NAME:
            return addition_task(entry.path), entry
    return AdditionTask(), (cfg.datasets[0] if cfg.datasets else None)


def evaluation_problems(cfg: Any, count: int) -> list[EvalProblem]:
    task, _ = task_for(cfg)
    return [EvalProblem(question=row["instruction"], expected=row["output"], row=row)
            for row in task.evaluation_rows(count)]


def score_answer(expected: str, answer: str) -> dict[str, float]:
    """Exact match and per-digit accuracy of the answer's first line."""
    line = answer.strip().split("\n")[0].strip()
    return {"exact_match": float(line == expected), "digit_accuracy": digit_accuracy(expected, line)}


def digit_accuracy(expected: str, answered: str) -> float:
    """The share of digit positions (aligned from the right, over the longer string) that agree."""
    width = max(len(expected), len(answered), 1)
    a, b = expected.rjust(width), answered.rjust(width)
    return sum(x == y for x, y in zip(a, b)) / width
