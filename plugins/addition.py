"""The addition plugin: ``builtin:addition``, a generated, learnable task, and ``eval_task: addition``.

``datasets: [{path: builtin:addition}]`` is a deterministic set of problems "What is 12 + 34?" -> "46", with
options after ``?``: ``builtin:addition?digits=3&rows=5000&seed=1``. Each row carries every common layout at
once (``instruction`` / ``input`` / ``output`` for alpaca, ``messages`` for chat_template, ``text`` for
completion), so any of those dataset types reads it. One operand pair in ten is held out: it never appears in
the training rows.

``eval_task: addition`` scores the model's greedy answers on held-out problems when training starts and ends
(exact match and per-digit accuracy); the prompts are made by the same dataset strategy that made the
training rows (the first ``datasets`` entry's ``type``), so the evaluation sees exactly the trained format.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional

from pydantic import Field

from gym.api import (
    IGNORE_INDEX,
    BuiltinDataset,
    ConfigError,
    StrictConfig,
    hookimpl,
    parse_options,
    write_rows_once,
    say,
)

NAME = "addition"
PREFIX = "builtin:"
ADDITION_OPTIONS = {"digits": (1, 9), "rows": (1, 10_000_000), "seed": (0, 2**31 - 1)}


class AdditionSettings(StrictConfig):
    """Keys of the addition plugin."""

    eval_task: Optional[Literal["addition"]] = Field(
        None,
        description="Score the model's greedy answers on held-out problems of a built-in task (addition) "
        "before and after training; prompts follow the first dataset's type.",
    )
    eval_task_samples: int = Field(200, ge=1, le=100_000, description="Held-out problems scored by eval_task.")


@hookimpl
def gym_config_schema():
    return AdditionSettings


@hookimpl
def gym_builtin_datasets():
    return [
        BuiltinDataset(
            name=NAME,
            materialize=materialize,
            check=addition_task,
            description="addition problems 'What is 12 + 34?' -> '46', operands of `digits` digits (options: "
            "digits=2, rows=20000, seed=0); columns instruction/input/output, messages and text",
        )
    ]


@hookimpl
def gym_callbacks(cfg):
    if not cfg.eval_task:
        return None
    return [make_callback(cfg)]


# ------------------------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class AdditionTask:
    """``a + b`` with operands of exactly ``digits`` digits. One pair in ten is held out for evaluation."""

    digits: int = 2
    rows: int = 20000
    seed: int = 0

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
        for _ in range(self.rows):
            yield addition_row(*next(pairs))

    def evaluation_rows(self, count: int, seed: int = 1234) -> list[dict[str, Any]]:
        """``count`` held-out problems (the same ones for the same count and seed)."""
        pairs = self._pairs(random.Random(seed), held_out=True)
        return [addition_row(*next(pairs)) for _ in range(count)]

    def file_name(self) -> str:
        return f"addition-v{self.VERSION}-d{self.digits}-n{self.rows}-s{self.seed}.jsonl"


def addition_row(a: int, b: int) -> dict[str, Any]:
    """One problem in every layout gym's built-in dataset types read."""
    question = f"What is {a} + {b}?"
    answer = str(a + b)
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


# ------------------------------------------------------------------------------------------ the score


@dataclass
class TaskScore:
    """Exact-match and per-digit accuracy of greedy answers, with a few examples."""

    task: str
    problems: int
    exact_match: float
    digit_accuracy: float
    examples: list[tuple[str, str, str]]  # (question, expected, answered)

    def describe(self) -> str:
        return f"exact match {100 * self.exact_match:.1f}%, digit accuracy {100 * self.digit_accuracy:.1f}%"


def task_for(cfg: Any) -> tuple[AdditionTask, Any]:
    """The task's generator and the dataset entry whose format the prompts follow."""
    for entry in cfg.datasets:
        if entry.path.startswith(PREFIX) and entry.path[len(PREFIX):].split("?", 1)[0] == NAME:
            return addition_task(entry.path), entry
    return AdditionTask(), cfg.datasets[0]


def digit_accuracy(expected: str, answered: str) -> float:
    """The share of digit positions (aligned from the right, over the longer string) that agree."""
    width = max(len(expected), len(answered), 1)
    a, b = expected.rjust(width), answered.rjust(width)
    return sum(x == y for x, y in zip(a, b)) / width


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [row[key] for row in rows] for key in rows[0]}


def build_prompts(cfg: Any, tokenizer: Any, entry: Any, rows: list[dict[str, Any]], manager: Any) -> list[list[int]]:
    """Prompt token ids for ``rows``, made by ``entry``'s strategy with prompts not trained on."""
    from gym.api import strategy_of

    strategy, type_name = strategy_of(entry, manager, manager.training_method(cfg).name)
    quiet_cfg = cfg.model_copy(update={"train_on_inputs": False})
    quiet_entry = entry.model_copy(update={"train_on_inputs": False})
    builder = strategy.load_builder()(tokenizer=tokenizer, cfg=quiet_cfg, dataset=quiet_entry)
    out = builder.process_batch(_columns(rows))
    if len(out["input_ids"]) != len(rows):
        raise ConfigError(f"eval_task: the {type_name!r} strategy made {len(out['input_ids'])} samples of "
                          f"{len(rows)} problems; use a prompt / answer dataset type (alpaca, chat_template)")
    prompts = []
    for row, ids, labels in zip(rows, out["input_ids"], out["labels"]):
        first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        if first == 0:  # everything trained (completion): the prompt is the text before the answer
            text = row["text"][: len(row["text"]) - len(row["output"])]
            prompts.append(tokenizer(text, add_special_tokens=True)["input_ids"])
        else:
            prompts.append(list(ids[:first]))
    return prompts


def greedy_answers(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
                   batch_size: int = 100) -> list[str]:
    """Greedy continuations of each prompt, cut at the first special token, stripped."""
    import torch

    stop_ids = sorted(set(tokenizer.all_special_ids))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, prompt in enumerate(chunk):  # left padding: every prompt ends where generation starts
                    ids[i, width - len(prompt):] = torch.tensor(prompt)
                    mask[i, width - len(prompt):] = 1
                generated = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=stop_ids,
                    pad_token_id=pad_id,
                    use_cache=True,
                )
                for row in generated[:, width:].tolist():
                    cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
                    text = tokenizer.decode(row[:cut], skip_special_tokens=True)
                    answers.append(text.strip().split("\n")[0].strip())
    finally:
        model.train(was_training)
    return answers


def evaluate_task(cfg: Any, model: Any, tokenizer: Any, manager: Any = None) -> TaskScore:
    """Score ``model`` on ``cfg.eval_task_samples`` held-out problems of ``cfg.eval_task``."""
    from gym.api import get_plugin_manager

    manager = manager or get_plugin_manager()
    task, entry = task_for(cfg)
    rows = task.evaluation_rows(cfg.eval_task_samples)
    prompts = build_prompts(cfg, tokenizer, entry, rows, manager)
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=task.digits + 4)
    expected = [row["output"] for row in rows]
    exact = sum(a == e for a, e in zip(answers, expected)) / len(rows)
    digits = sum(digit_accuracy(e, a) for a, e in zip(answers, expected)) / len(rows)
    examples = [(row["instruction"], e, a) for row, e, a in list(zip(rows, expected, answers))[:3]]
    return TaskScore(cfg.eval_task, len(rows), exact, digits, examples)


def make_callback(cfg: Any):
    """A ``TrainerCallback`` that scores the model when training starts and when it ends."""
    from transformers import TrainerCallback

    class TaskEvalCallback(TrainerCallback):
        def __init__(self) -> None:
            self.before: TaskScore | None = None
            self.after: TaskScore | None = None
            self.gym_metrics: dict[str, Any] = {}
            self.gym_summary: list[str] = []

        def _score(self, state, model, processing_class) -> TaskScore | None:
            if not state.is_world_process_zero or model is None or processing_class is None:
                return None
            return evaluate_task(cfg, model, processing_class)

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            self.before = self._score(state, model, processing_class)
            if self.before is not None:
                when = "at the start" if state.global_step else "before training"
                say(f"{cfg.eval_task} on {self.before.problems} held-out problems {when}: {self.before.describe()}")

        def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            self.after = self._score(state, model, processing_class)
            if self.after is None:
                return
            say(f"{cfg.eval_task} on {self.after.problems} held-out problems after training: {self.after.describe()}")
            for question, want, got in self.after.examples:
                say(f"  {question} -> {got!r} (expected {want})")
            name = cfg.eval_task
            self.gym_metrics = {f"{name}_exact_match": self.after.exact_match,
                                f"{name}_digit_accuracy": self.after.digit_accuracy}
            line = f"{name} on {self.after.problems} held-out problems: {self.after.describe()}"
            if self.before is not None:
                self.gym_metrics = {
                    f"{name}_exact_match_before": self.before.exact_match,
                    f"{name}_digit_accuracy_before": self.before.digit_accuracy,
                    **self.gym_metrics,
                }
                line = (
                    f"{name} on {self.after.problems} held-out problems: exact match "
                    f"{100 * self.before.exact_match:.1f}% -> {100 * self.after.exact_match:.1f}%, digit accuracy "
                    f"{100 * self.before.digit_accuracy:.1f}% -> {100 * self.after.digit_accuracy:.1f}%"
                )
            self.gym_summary = [line]

    return TaskEvalCallback()
