"""lm-evaluation-harness benchmarks of the trained model (optional: ``pip install 'gym-llm[lm-eval]'``).

::

    lm_eval_tasks: [hellaswag, my_local_task]   # names lm-eval knows, or tasks of your own YAML files
    lm_eval_include_path: lm_eval_tasks/         # a folder of task YAML files (relative to the config file)
    lm_eval_batch_size: 8
    lm_eval_post_train: true                     # run when training ends (default); `gym evaluate` runs them too

The tasks run on the model in memory when training ends (their scores join the run's metrics and model card as
``lm_eval_<task>_<metric>``) and in ``gym evaluate`` (``eval_results.json``). A task of your own reads local
data with ``dataset_path: json`` and ``dataset_kwargs: {data_files: {test: file.jsonl}}``: nothing is
downloaded. lm-eval's own tasks read their datasets from the Hugging Face hub (or its local cache).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

from pydantic import Field

from gym.api import ConfigError, ConfigProblem, StrictConfig, hookimpl, say

EXTRA = "pip install 'gym-llm[lm-eval]'"


class LmEvalSettings(StrictConfig):
    """Keys of the lm-evaluation-harness plugin (Axolotl's names)."""

    lm_eval_tasks: Optional[list[str]] = Field(
        None, description="lm-evaluation-harness tasks to run on the trained model (needs gym-llm[lm-eval])."
    )
    lm_eval_batch_size: Optional[int] = Field(None, ge=1, description="Batch size of lm_eval_tasks (default 8).")
    lm_eval_include_path: Optional[str] = Field(
        None, description="Folder of your own lm-eval task YAML files, relative to the config file."
    )
    lm_eval_post_train: bool = Field(True, description="Run lm_eval_tasks when training ends (gym evaluate runs them too).")


@hookimpl
def gym_config_schema():
    return LmEvalSettings


def installed() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


@hookimpl
def gym_validate_config(cfg):
    if not cfg.lm_eval_tasks:
        unused = [key for key in ("lm_eval_batch_size", "lm_eval_include_path") if getattr(cfg, key) is not None]
        return [ConfigProblem(key, "has no effect without lm_eval_tasks") for key in unused] or None
    problems = []
    if not installed():
        problems.append(ConfigProblem("lm_eval_tasks", f"needs lm-evaluation-harness, which is not installed: {EXTRA}"))
    if cfg.lm_eval_include_path and not include_path(cfg).is_dir():
        problems.append(ConfigProblem("lm_eval_include_path", f"no such folder: {include_path(cfg)}"))
    return problems or None


@hookimpl
def gym_callbacks(cfg):
    if not cfg.lm_eval_tasks or not cfg.lm_eval_post_train:
        return None
    return [make_callback(cfg)]


def include_path(cfg: Any) -> Path:
    from gym.api import config_folder

    path = Path(cfg.lm_eval_include_path).expanduser()
    return path if path.is_absolute() else config_folder(cfg) / path


def _task_manager(cfg: Any):
    """lm-eval's task index: the include folder alone when it holds every task named (indexing lm-eval's
    thousands of built-in tasks takes tens of seconds), else the include folder and the built-in tasks."""
    from lm_eval.tasks import TaskManager

    folder = str(include_path(cfg)) if cfg.lm_eval_include_path else None
    if folder:
        local = TaskManager(include_path=folder, include_defaults=False)
        if all(name in local.all_tasks for name in cfg.lm_eval_tasks):
            return local
    manager = TaskManager(include_path=folder)
    unknown = [name for name in cfg.lm_eval_tasks if name not in manager.all_tasks]
    if unknown:
        where = f" nor in {folder}" if folder else " (set lm_eval_include_path for tasks of your own)"
        raise ConfigError(f"lm_eval_tasks: lm-eval has no task named {', '.join(unknown)}{where}")
    return manager


def metric_name(key: str) -> str:
    """lm-eval's ``acc,none`` -> ``acc``; ``exact_match,strict-match`` -> ``exact_match_strict-match``."""
    metric, _, filter_name = key.partition(",")
    return metric if filter_name in ("", "none") else f"{metric}_{filter_name}"


def run_lm_eval(cfg: Any, model: Any, tokenizer: Any, task_manager: Any = None) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of lm-eval's tasks on ``model`` (the numbers lm-eval reports)."""
    if not installed():
        raise ConfigError(f"lm_eval_tasks: lm-evaluation-harness is not installed: {EXTRA}")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.lm_eval_batch_size or 8)
        out = simple_evaluate(model=lm, tasks=list(cfg.lm_eval_tasks), task_manager=task_manager or _task_manager(cfg),
                              log_samples=False, bootstrap_iters=0, random_seed=cfg.seed)
    finally:
        model.train(was_training)
    results: dict[str, dict[str, float]] = {}
    for task, values in (out or {}).get("results", {}).items():
        results[task] = {metric_name(k): float(v) for k, v in values.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in k
                         and k != "sample_len"}
    return results


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"lm_eval_{task}_{metric}": value for task, values in results.items() for metric, value in values.items()}


def make_callback(cfg: Any):
    """A ``TrainerCallback`` running the tasks on the model when training ends."""
    from transformers import TrainerCallback

    class LmEvalCallback(TrainerCallback):
        def __init__(self) -> None:
            self.task_manager: Any = None
            self.gym_metrics: dict[str, float] = {}
            self.gym_summary: list[str] = []

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:  # an unknown task name is said now, not after training
                self.task_manager = _task_manager(cfg)

        def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            if not state.is_world_process_zero or model is None or processing_class is None:
                return
            say(f"lm-eval: running {', '.join(cfg.lm_eval_tasks)} on the trained model")
            results = run_lm_eval(cfg, model, processing_class, self.task_manager)
            self.gym_metrics = flat_metrics(results)
            self.gym_summary = [f"lm-eval {task}: " + ", ".join(f"{m} {v:.4f}" for m, v in values.items())
                                for task, values in results.items()]

    return LmEvalCallback()
