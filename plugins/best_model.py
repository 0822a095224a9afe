"""Best-model selection: which evaluation counts as the best, and loading that checkpoint when training ends.

    val_set_size: 0.05
    eval_steps: 50
    save_steps: 50                    # load_best_model_at_end: saves on the evaluations' schedule
    metric_for_best_model: eval_loss  # the metric evaluations measure (default: eval_loss)
    greater_is_better: false
    load_best_model_at_end: true      # the saved model is the best checkpoint's, not the last step's
    early_stopping_patience: 3        # core key: stop after 3 evaluations without improvement

The keys go to the trainer's arguments (``gym_training_arguments``); what transformers would refuse only
after the data is prepared (no evaluation data, saving and evaluating on different schedules) is a config
problem at ``gym validate``. gym's evaluation measures the loss on the evaluation split, so ``eval_loss`` is
the metric there is to select by. When the best checkpoint was loaded, the summary and the run report say
which one it was.
"""

from __future__ import annotations

from typing import Any

from gym.api import ConfigProblem, StrictConfig, hookimpl
from pydantic import Field

METRICS = ("eval_loss", "loss")  # what gym's evaluation measures (prediction_loss_only)


class BestModelConfig(StrictConfig):
    """Keys of the best-model plugin."""

    metric_for_best_model: str | None = Field(
        None, description="The evaluation metric that decides the best checkpoint, for early stopping, "
        "save_strategy: best and load_best_model_at_end (default eval_loss; gym's evaluation measures the loss)."
    )
    greater_is_better: bool | None = Field(
        None, description="Whether a higher metric_for_best_model is better (default: false for a loss)."
    )
    load_best_model_at_end: bool | None = Field(
        None, description="When training ends, load the checkpoint with the best metric_for_best_model, so the "
        "saved model is that one (needs evaluation data and checkpoints on the evaluations' schedule)."
    )


@hookimpl
def gym_config_schema():
    return BestModelConfig


def _schedule(cfg: Any, what: str, has_eval_data: bool = True) -> tuple[str, float | None]:
    """(strategy, every N steps or None when it depends on the data) as the core will resolve it."""
    per_epoch, steps, strategy = (getattr(cfg, f"{what}s_per_epoch"), getattr(cfg, f"{what}_steps"),
                                  getattr(cfg, f"{what}_strategy"))
    if what == "eval" and not has_eval_data:
        return "no", None
    if per_epoch == 0:
        return "no", None
    if per_epoch:
        return "steps", None
    if steps is not None:
        return strategy or "steps", steps
    return strategy or "epoch", None


@hookimpl
def gym_validate_config(cfg):
    problems = []
    metric = cfg.metric_for_best_model
    selects = bool(cfg.early_stopping_patience or cfg.load_best_model_at_end or cfg.save_strategy == "best")
    if metric is not None and metric not in METRICS:
        problems.append(ConfigProblem("metric_for_best_model", f"{metric!r} is not measured by gym's evaluation, "
                                      "which measures the loss on the evaluation split: use eval_loss"))
    if cfg.greater_is_better and (metric or "eval_loss") in METRICS:
        problems.append(ConfigProblem("greater_is_better", "a loss is better when lower: the run would keep the "
                                      "worst checkpoint; remove the key or set it to false"))
    for key in ("metric_for_best_model", "greater_is_better"):
        if getattr(cfg, key) is not None and not selects:
            problems.append(ConfigProblem(key, "has no effect without early_stopping_patience, "
                                          "load_best_model_at_end or save_strategy: best"))
    if cfg.load_best_model_at_end:
        problems.extend(_load_best_problems(cfg))
    return problems or None


def _load_best_problems(cfg: Any) -> list[ConfigProblem]:
    key = "load_best_model_at_end"
    has_eval_data = bool(cfg.val_set_size) or bool(cfg.test_datasets)
    if not has_eval_data:
        return [ConfigProblem(key, "needs evaluation data (set val_set_size or test_datasets)")]
    eval_strategy, eval_every = _schedule(cfg, "eval")
    save_strategy, save_every = _schedule(cfg, "save")
    if eval_strategy == "no":
        return [ConfigProblem(key, "needs evaluations (evals_per_epoch or eval_steps above 0)")]
    if save_strategy == "no":
        return [ConfigProblem(key, "needs checkpoints to load the best one from (save_strategy or saves_per_epoch "
                              "turn them off)")]
    if save_strategy == "best":
        return []
    if save_strategy != eval_strategy:
        return [ConfigProblem(key, f"needs checkpoints on the evaluations' schedule, but they are saved every "
                              f"{_describe(save_strategy, save_every)} and evaluated every "
                              f"{_describe(eval_strategy, eval_every)}; make them match, or set save_strategy: best")]
    if save_every is not None and eval_every is not None and not _multiple(save_every, eval_every):
        return [ConfigProblem(key, f"needs save_steps ({save_every:g}) to be a multiple of eval_steps "
                              f"({eval_every:g}), so that every checkpoint has an evaluation")]
    return []


def _describe(strategy: str, every: float | None) -> str:
    if strategy == "epoch":
        return "epoch"
    return f"{every:g} steps" if every is not None else "N steps (per epoch)"


def _multiple(save: float, evaluate: float) -> bool:
    if (save < 1) != (evaluate < 1):
        return False  # a fraction of the run and a step count: not a multiple in general
    scale = 1_000_000
    return round(save * scale) % round(evaluate * scale) == 0


@hookimpl
def gym_training_arguments(cfg):
    values: dict[str, Any] = {}
    if cfg.metric_for_best_model is not None:
        values["metric_for_best_model"] = "eval_loss"  # "loss" and "eval_loss" name the same measurement
    if cfg.greater_is_better is not None:
        values["greater_is_better"] = cfg.greater_is_better
    if cfg.load_best_model_at_end:
        values["load_best_model_at_end"] = True
        values.setdefault("metric_for_best_model", "eval_loss")
        values.setdefault("greater_is_better", False)
    return values or None


@hookimpl
def gym_callbacks(cfg):
    if not cfg.load_best_model_at_end:
        return None
    return [best_model_note()]


def best_model_note():
    """A callback that says which checkpoint was loaded as the best when training ended."""
    from transformers import TrainerCallback

    class BestModelNote(TrainerCallback):
        def __init__(self) -> None:
            self.gym_metrics: dict[str, Any] = {}
            self.gym_summary: list[str] = []

        def on_train_end(self, args, state, control, **kwargs):
            if state.best_model_checkpoint is None or state.best_metric is None:
                self.gym_summary = ["load_best_model_at_end: no checkpoint had an evaluation; the last step's "
                                    "model is saved"]
                return control
            step = state.best_global_step
            self.gym_metrics = {"best_metric": state.best_metric, "best_step": step}
            self.gym_summary = [f"loaded the best model at the end: step {step} ({args.metric_for_best_model} "
                                f"{state.best_metric:.4f}, {state.best_model_checkpoint})"]
            return control

    return BestModelNote()
