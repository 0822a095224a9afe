"""Scoring a model's greedy answers on held-out problems of a built-in task (``eval_task: addition``).

The prompts are made by the same dataset strategy that made the training rows (the first ``datasets``
entry's ``type``): a held-out row is tokenized as in training, the tokens before the first trained token
are the prompt, and the model's greedy continuation (up to a special token) is compared with the answer.
So the evaluation sees exactly the prompt format the model was trained on, whatever the strategy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gym.builtin import PREFIX, AdditionTask, addition_task
from gym.errors import ConfigError

IGNORE_INDEX = -100
TASKS = ("addition",)


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
    if cfg.eval_task not in TASKS:
        raise ConfigError(f"eval_task: unknown task {cfg.eval_task!r} (tasks: {', '.join(TASKS)})")
    for entry in cfg.datasets:
        if entry.path.startswith(PREFIX + "addition"):
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
    from gym.schema import UserDefinedFormat

    strategies = manager.dataset_strategies()
    type_name = "user_defined" if isinstance(entry.type, UserDefinedFormat) else entry.type
    strategy, _ = strategies[type_name]
    quiet_cfg = cfg.model_copy(update={"train_on_inputs": False})
    quiet_entry = entry.model_copy(update={"train_on_inputs": False})
    builder = strategy.load_builder()(tokenizer=tokenizer, cfg=quiet_cfg, dataset=quiet_entry)
    out = builder.tokenize_batch(_columns(rows))
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
    from gym.plugin_manager import get_plugin_manager

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


def _say(line: str) -> None:
    """Print a line without breaking a progress bar that is still on screen."""
    from tqdm.auto import tqdm

    tqdm.write(f"[gym] {line}")


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
                _say(f"{cfg.eval_task} on {self.before.problems} held-out problems {when}: {self.before.describe()}")

        def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            self.after = self._score(state, model, processing_class)
            if self.after is None:
                return
            _say(f"{cfg.eval_task} on {self.after.problems} held-out problems after training: {self.after.describe()}")
            for question, want, got in self.after.examples:
                _say(f"  {question} -> {got!r} (expected {want})")
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
