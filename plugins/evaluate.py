"""The evaluate plugin: task evaluations before and after training, and ``gym evaluate``.

Task evaluations are registered by plugins through ``gym_eval_tasks`` (``addition``, ``gsm8k``, ...); a config
names the ones to run::

    eval_task: addition              # or a list: [addition, gsm8k]
    eval_task_samples: 200           # problems per task

When training starts and ends, each task's problems are answered greedily (in batches, left-padded) and scored;
the scores join the run's metrics (``addition_exact_match``, ``addition_exact_match_before``, ...) and its summary.
The prompts are made by the dataset strategy of the task's dataset entry (the first ``datasets`` entry unless
the task says otherwise), so the model is asked in the format it was trained on.

``gym evaluate CONFIG [--model-dir DIR]`` loads the trained model (``output_dir`` by default; a folder with
``adapter_config.json`` is an adapter, loaded on ``base_model``) and measures the loss and perplexity on the
config's evaluation split (``val_set_size`` or ``test_datasets``, prepared exactly as for training, cache
included), the task evaluations the config names and its ``lm_eval_tasks`` (the lm_eval plugin). It prints a
table and writes ``output_dir/eval_results.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import Field

from gym.api import ConfigError, ConfigProblem, GymError, StrictConfig, hookimpl, say

RESULTS_FILE = "eval_results.json"


class EvaluateSettings(StrictConfig):
    """Keys of the evaluate plugin."""

    eval_task: Union[str, list[str], None] = Field(
        None,
        description="Task evaluations to run before and after training and in `gym evaluate` (a name or a list: "
        "addition, gsm8k, ...; `gym plugins list` shows the plugins that add them); greedy answers are scored, "
        "prompts follow the task's dataset entry (the first dataset's type).",
    )
    eval_task_samples: int = Field(200, ge=1, le=100_000, description="Problems scored per task of eval_task.")
    eval_task_max_new_tokens: Optional[int] = Field(
        None, ge=1, le=32_768, description="Tokens generated per answer (default: the task's own, 6 for addition, 320 for gsm8k)."
    )
    eval_task_batch_size: int = Field(100, ge=1, le=10_000, description="Prompts generated at once by eval_task.")


@hookimpl
def gym_config_schema():
    return EvaluateSettings


def task_names(cfg: Any) -> list[str]:
    value = getattr(cfg, "eval_task", None)
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


@hookimpl
def gym_validate_config(cfg):
    names = task_names(cfg)
    if not names:
        return None
    from gym.api import eval_tasks

    installed = eval_tasks()
    problems = []
    for name in names:
        if name not in installed:
            problems.append(ConfigProblem(
                "eval_task", f"no task evaluation named {name!r}; installed: {', '.join(sorted(installed)) or 'none'}"))
    if len(set(names)) != len(names):
        problems.append(ConfigProblem("eval_task", f"names a task twice: {names}"))
    return problems or None


@hookimpl
def gym_callbacks(cfg):
    if not task_names(cfg):
        return None
    return [make_callback(cfg)]


# ------------------------------------------------------------------------------------------- prompts


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    names = list(dict.fromkeys(key for row in rows for key in row))
    return {name: [row.get(name) for row in rows] for name in names}


def build_prompts(cfg: Any, tokenizer: Any, task: Any, problems: list[Any], manager: Any) -> list[list[int]]:
    """Prompt token ids for ``problems``: the part of the task entry's strategy output that is not trained on.

    With no dataset entry, the question alone (through the chat template when the tokenizer has one)."""
    from gym.api import IGNORE_INDEX, strategy_of

    entry = task.entry_for(cfg)
    if entry is None:
        return [_plain_prompt(tokenizer, p.question) for p in problems]
    found = strategy_of(entry, manager, manager.training_method(cfg).name)
    if found is None:
        raise ConfigError(f"eval_task {task.name}: the dataset type {entry.type!r} that makes its prompts is not registered")
    strategy, type_name = found
    quiet_cfg = cfg.model_copy(update={"train_on_inputs": False})
    quiet_entry = entry.model_copy(update={"train_on_inputs": False})
    rows = [dict(p.row) or {"question": p.question} for p in problems]
    try:
        builder = strategy.load_builder()(tokenizer=tokenizer, cfg=quiet_cfg, dataset=quiet_entry)
        out = builder.process_batch(_columns(rows))
    except GymError as exc:
        raise ConfigError(f"eval_task {task.name}: the prompts follow the dataset type {type_name!r}, which cannot "
                          f"read the task's rows (columns {', '.join(rows[0])}): {exc}") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"eval_task {task.name}: the prompts follow the dataset type {type_name!r}, which cannot "
                          f"read the task's rows (columns {', '.join(rows[0])}): {type(exc).__name__}: {exc}") from None
    if len(out["input_ids"]) != len(rows):
        raise ConfigError(f"eval_task {task.name}: the {type_name!r} strategy made {len(out['input_ids'])} samples of "
                          f"{len(rows)} problems; use a prompt / answer dataset type (alpaca, chat_template)")
    labels_of = out.get("labels") or [[IGNORE_INDEX] * len(ids) for ids in out["input_ids"]]
    prompts = []
    for problem, row, ids, labels in zip(problems, rows, out["input_ids"], labels_of):
        first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        if first > 0:
            prompts.append(list(ids[:first]))
        elif isinstance(row.get("text"), str) and isinstance(row.get("output"), str) and row["text"].endswith(row["output"]):
            # everything trained (completion): the prompt is the text before the answer
            text = row["text"][: len(row["text"]) - len(row["output"])]
            prompts.append(tokenizer(text, add_special_tokens=True)["input_ids"])
        else:
            raise ConfigError(f"eval_task {task.name}: the {type_name!r} strategy trains on the whole row, so there is no "
                              "prompt to answer; use a prompt / answer dataset type (alpaca, chat_template)")
    return prompts


def _plain_prompt(tokenizer: Any, question: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return tokenizer(question + "\n", add_special_tokens=True)["input_ids"]


# ---------------------------------------------------------------------------------------- generating


def greedy_answers(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
                   batch_size: int = 100) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches), cut at the first special token, stripped."""
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
                    answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


@dataclass
class TaskScore:
    """The mean of each metric of a task over its problems, with a few examples."""

    task: str
    unit: str
    problems: int
    metrics: dict[str, float]
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # (question, expected, answered)

    def describe(self) -> str:
        return ", ".join(f"{_label(name)} {100 * value:.1f}%" for name, value in self.metrics.items())

    def as_dict(self) -> dict[str, Any]:
        return {"problems": self.problems, **self.metrics,
                "examples": [{"question": q, "expected": e, "answer": a} for q, e, a in self.examples]}


def _label(metric: str) -> str:
    return metric.replace("_", " ")


def score_task(cfg: Any, task: Any, model: Any, tokenizer: Any, manager: Any = None) -> TaskScore:
    """Ask ``model`` ``cfg.eval_task_samples`` problems of ``task`` greedily and score the answers."""
    from gym.api import get_plugin_manager

    manager = manager or get_plugin_manager()
    problems = task.problems(cfg, cfg.eval_task_samples)
    if not problems:
        raise ConfigError(f"eval_task {task.name}: the task has no problems to ask")
    prompts = build_prompts(cfg, tokenizer, task, problems, manager)
    max_new_tokens = cfg.eval_task_max_new_tokens or task.tokens_for(cfg)
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens, cfg.eval_task_batch_size)
    totals: dict[str, float] = {}
    for problem, answer in zip(problems, answers):
        for name, value in task.score(problem.expected, answer).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    metrics = {name: total / len(problems) for name, total in totals.items()}
    examples = [(p.question, p.expected, a) for p, a in list(zip(problems, answers))[:3]]
    return TaskScore(task.name, task.unit, len(problems), metrics, examples)


def tasks_of(cfg: Any, manager: Any = None) -> list[Any]:
    from gym.api import eval_tasks

    installed = eval_tasks(manager)
    return [installed[name] for name in task_names(cfg)]


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def make_callback(cfg: Any):
    """A ``TrainerCallback`` that scores the config's tasks when training starts and when it ends."""
    from transformers import TrainerCallback

    class TaskEvalCallback(TrainerCallback):
        def __init__(self) -> None:
            self.before: dict[str, TaskScore] = {}
            self.after: dict[str, TaskScore] = {}
            self.gym_metrics: dict[str, Any] = {}
            self.gym_summary: list[str] = []

        def _score(self, state, model, processing_class) -> dict[str, TaskScore]:
            if not state.is_world_process_zero or model is None or processing_class is None:
                return {}
            return {task.name: score_task(cfg, task, model, processing_class) for task in tasks_of(cfg)}

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            self.before = self._score(state, model, processing_class)
            when = "at the start" if state.global_step else "before training"
            for score in self.before.values():
                say(f"{score.task} on {score.problems} {score.unit} {when}: {score.describe()}")

        def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            self.after = self._score(state, model, processing_class)
            metrics: dict[str, Any] = {}
            summary: list[str] = []
            for name, after in self.after.items():
                say(f"{name} on {after.problems} {after.unit} after training: {after.describe()}")
                for question, want, got in after.examples:
                    say(f"  {_short(question)} -> {_short(got)!r} (expected {_short(want, 40)})")
                before = self.before.get(name)
                if before is not None:
                    metrics.update({f"{name}_{metric}_before": value for metric, value in before.metrics.items()})
                    changes = ", ".join(
                        f"{_label(metric)} {100 * before.metrics.get(metric, 0.0):.1f}% -> {100 * value:.1f}%"
                        for metric, value in after.metrics.items()
                    )
                    summary.append(f"{name} on {after.problems} {after.unit}: {changes}")
                else:
                    summary.append(f"{name} on {after.problems} {after.unit}: {after.describe()}")
                metrics.update({f"{name}_{metric}": value for metric, value in after.metrics.items()})
            self.gym_metrics = metrics
            self.gym_summary = summary

    return TaskEvalCallback()


# ------------------------------------------------------------------------------------ loading a model


def load_trained(cfg: Any, model_dir: Optional[str] = None, manager: Any = None) -> tuple[Any, Any, str]:
    """(model, tokenizer, what was loaded) of the trained model in ``model_dir`` (default: ``output_dir``), through
    the loader ``gym chat`` and ``gym serve`` use (:func:`gym.plugins.inference.load_trained`); an adapter stays
    unmerged, so the loss is the adapter model's own."""
    from gym.plugins.inference import load_trained as load

    trained = load(cfg, model_dir=model_dir, merge=False, tell=lambda line: None)
    what = f"the adapter in {trained.folder} on {cfg.base_model}" if trained.kind == "adapter" else \
        f"the model in {trained.folder}"
    return trained.model, trained.tokenizer, what


# ---------------------------------------------------------------------------------------------- loss


def evaluation_loss(model: Any, rows: Any, collator: Any, batch_size: int) -> tuple[float, int]:
    """(mean loss per predicted token, predicted tokens) of ``model`` on the prepared ``rows``: the causal
    language-modelling loss the trainer computes (labels shifted by one, ``-100`` not counted), summed over
    tokens rather than averaged per batch, so the result does not depend on the batch size."""
    import torch
    import torch.nn.functional as F

    from gym.api import IGNORE_INDEX

    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            labels = batch.pop("labels").to(device)
            inputs = {k: v.to(device) for k, v in batch.items() if hasattr(v, "to")}
            logits = model(**inputs, use_cache=False).logits[:, :-1].float()
            target = labels[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((target != IGNORE_INDEX).sum().item())
    if count == 0:
        raise GymError("the evaluation split has no trained tokens (every label is -100); nothing to measure")
    return total / count, count


def perplexity(loss: float) -> float | None:
    """``exp(loss)``; ``None`` when it overflows a float."""
    try:
        return math.exp(loss)
    except OverflowError:
        return None


# ------------------------------------------------------------------------------------- gym evaluate


@dataclass
class EvalResults:
    """What ``gym evaluate`` measured (``eval_results.json``)."""

    model: str
    model_dir: str
    split: Optional[dict[str, Any]] = None
    eval_loss: Optional[float] = None
    eval_perplexity: Optional[float] = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    lm_eval: dict[str, dict[str, float]] = field(default_factory=dict)  # lm-evaluation-harness: task -> metric
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        flat: dict[str, float] = {}
        if self.eval_loss is not None:
            flat["eval_loss"] = self.eval_loss
            if self.eval_perplexity is not None:
                flat["eval_perplexity"] = self.eval_perplexity
        for name, values in self.tasks.items():
            flat.update({f"{name}_{k}": v for k, v in values.items() if isinstance(v, float)})
        for name, values in self.lm_eval.items():
            flat.update({f"lm_eval_{name}_{k}": v for k, v in values.items()})
        return flat

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_dir": self.model_dir, "metrics": self.metrics(), "split": self.split,
                "eval_loss": self.eval_loss, "eval_perplexity": self.eval_perplexity, "tasks": self.tasks,
                "lm_eval": self.lm_eval, "seconds": round(self.seconds, 2)}

    def table(self) -> str:
        rows = [("metric", "value")]
        shares = {f"{task}_{k}" for task, values in self.tasks.items() for k in values}  # in [0, 1]: shown as %
        for name, value in self.metrics().items():
            rows.append((name, f"{100 * value:.1f}%" if name in shares else f"{value:.4f}"))
        if self.eval_loss is not None and self.eval_perplexity is None:
            rows.append(("eval_perplexity", "overflow (loss too large)"))
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        lines.insert(1, "-" * width + "  " + "-" * max(len(v) for _, v in rows))
        return "\n".join(lines)


def split_description(cfg: Any) -> str:
    if cfg.val_set_size:
        return f"val_set_size {cfg.val_set_size:g} (held out of datasets)"
    return f"test_datasets ({', '.join(entry.path for entry in cfg.test_datasets)})"


def evaluate(cfg: Any, model_dir: Optional[str] = None, batch_size: Optional[int] = None, manager: Any = None,
             write: bool = True) -> EvalResults:
    """``gym evaluate``: loss and perplexity on the evaluation split, and the config's task evaluations."""
    from gym.api import get_plugin_manager, prepare_data

    manager = manager or get_plugin_manager()
    started = time.perf_counter()
    _plain_progress()
    has_split = bool(cfg.val_set_size) or bool(cfg.test_datasets)
    tasks = tasks_of(cfg, manager)
    lm_eval_tasks = getattr(cfg, "lm_eval_tasks", None)
    if not has_split and not tasks and not lm_eval_tasks:
        raise ConfigError("nothing to evaluate: set val_set_size or test_datasets (loss and perplexity on an "
                          "evaluation split), eval_task (task evaluations) or lm_eval_tasks")
    model, tokenizer, what = load_trained(cfg, model_dir, manager)
    say(f"evaluating {what}")
    results = EvalResults(model=what, model_dir=str(Path(model_dir or cfg.output_dir).expanduser()))
    if has_split:
        prepared = prepare_data(cfg, tokenizer, manager)
        say(prepared.summary())
        rows = prepared.eval
        if rows is None or len(rows) == 0:
            raise GymError("the evaluation split is empty after preparing the data; see the counts above")
        if "input_ids" not in rows.column_names:
            raise ConfigError(f"gym evaluate measures the loss on tokenized rows (input_ids, labels); the "
                              f"{prepared.report.method} method's rows have {', '.join(rows.column_names)}: use "
                              "eval_task for this method")
        method = manager.training_method(cfg)
        collator = manager.hook.gym_data_collator(cfg=cfg, tokenizer=tokenizer, training=False)
        collator = collator if collator is not None else method.data_shape.collator(tokenizer, False)
        size = batch_size or cfg.eval_batch_size or cfg.micro_batch_size
        loss, tokens = evaluation_loss(model, rows, collator, size)
        results.eval_loss, results.eval_perplexity = loss, perplexity(loss)
        results.split = {"source": split_description(cfg), "rows": len(rows), "tokens": tokens,
                         "cache": prepared.report.cache}
    else:
        say("no evaluation split (set val_set_size or test_datasets): loss and perplexity are not measured")
    for task in tasks:
        score = score_task(cfg, task, model, tokenizer, manager)
        say(f"{task.name} on {score.problems} {score.unit}: {score.describe()}")
        results.tasks[task.name] = score.as_dict()
    if lm_eval_tasks:
        from gym.plugins.lm_eval import run_lm_eval

        results.lm_eval = run_lm_eval(cfg, model, tokenizer)
    results.seconds = time.perf_counter() - started
    if write:
        target = Path(cfg.output_dir).expanduser()
        target.mkdir(parents=True, exist_ok=True)
        (target / RESULTS_FILE).write_text(json.dumps(results.as_dict(), indent=1) + "\n")
        _refresh_report(target)
    return results


def _refresh_report(folder: Path) -> None:
    """Where the run has a report, rebuild it so that it shows these results too."""
    if not (folder / "report.html").is_file():
        return
    try:
        from gym.plugins.report import write_report
    except ImportError:  # the report plugin is not installed
        return
    try:
        write_report([folder], folder / "report.html")
    except GymError as exc:
        say(f"note: report.html was not rebuilt: {exc}")
    else:
        say(f"report.html in {folder} now shows these results")


def _plain_progress() -> None:
    """Not on a terminal (a log file, CI): no carriage-return progress bars from the libraries, as in gym run."""
    import sys

    if sys.stderr.isatty():
        return
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


@hookimpl
def gym_register_commands(cli):
    import click

    @cli.command(name="evaluate")
    @click.argument("config", type=click.Path(dir_okay=False))
    @click.argument("overrides", nargs=-1)
    @click.option("--model-dir", default=None,
                  help="The trained model to evaluate (default: output_dir); a folder with adapter_config.json is "
                  "loaded on base_model.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=None,
                  help="Rows per forward pass for the loss (default: eval_batch_size, else micro_batch_size).")
    def evaluate_command(config, overrides, model_dir, batch_size):
        """Loss and perplexity on the evaluation split, the config's task evaluations (eval_task) and lm-eval
        tasks (lm_eval_tasks) of the trained model; written to OUTPUT_DIR/eval_results.json."""
        from gym.api import load_config

        cfg = load_config(config, overrides)
        results = evaluate(cfg, model_dir, batch_size)
        click.echo(results.table())
        click.echo(f"written to {Path(cfg.output_dir).expanduser() / RESULTS_FILE}")
