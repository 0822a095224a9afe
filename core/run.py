"""``gym run``: the phases of a run, each a hook or a plain function built from hooks.

::

    config   load_config                         -> the validated cfg; the TrainingMethod it asks for
    data     prepare_data                        -> train / eval rows, shaped by the method's DataShape
    trainer  arguments_for                       -> the method's arguments class, before any model exists
    model    build_model                         -> before-load, load, after-load, wrap, after-wrap hooks
    trainer  build_trainer                       -> TrainerParts -> TrainingMethod.build_trainer
    train    trainer.train                       -> resumes from a checkpoint when asked
    outputs  write_outputs                       -> model, tokenizer, gym_config.yml, README.md, gym_after_train

Only the main process prints and writes (:func:`gym.output.is_main_process`). See docs/plugins.md for
the diagram and the hooks of each phase.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gym.errors import ConfigError, GymError
from gym.methods import TrainerParts, TrainingMethod, load_object
from gym.output import is_main_process, on_terminal, plain_progress, say


@dataclass
class RunResult:
    """What :func:`run` returns (and prints as the summary)."""

    output_dir: str
    method: str
    steps: int
    epochs: float
    seconds: float
    first_loss: float | None
    final_loss: float | None
    train_loss: float | None
    eval_loss: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None
    start_step: int = 0
    notes: list[str] = field(default_factory=list)  # lines from callbacks' ``gym_summary``
    stop_reason: str | None = None  # a callback's ``gym_stop_reason`` when one ended the run early
    trainer: Any = field(default=None, repr=False)  # for callers (and tests) that inspect the run

    def summary(self) -> str:
        if self.start_step:
            steps = f"steps {self.start_step:,} to {self.steps:,} (resumed from {self.resumed_from})"
        else:
            steps = f"{self.steps:,} steps"
        lines = [f"trained ({self.method}) {steps}, {self.epochs:.2f} epochs, in {self.seconds:.1f}s"]
        if self.first_loss is not None and self.final_loss is not None:
            lines.append(f"loss {self.first_loss:.4f} at the first step -> {self.final_loss:.4f} at the last log "
                         f"(average over the run {self.train_loss:.4f})")
        if self.eval_loss is not None:
            lines.append(f"eval loss {self.eval_loss:.4f}")
        if self.stop_reason:
            lines.append(f"stopped early: {self.stop_reason}")
        lines.extend(self.notes)
        lines.append(f"model, tokenizer, gym_config.yml and README.md written to {self.output_dir}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------- phases


def arguments_for(cfg: Any, method: TrainingMethod, train_rows: int, has_eval: bool, manager: Any) -> Any:
    """The trainer phase's first half: the method's arguments class, filled from the core keys, the method's
    own values and every plugin's ``gym_training_arguments``. Needs no model."""
    from gym.training import plan_steps, resolve_precision, training_arguments

    precision = resolve_precision(cfg)
    plan = plan_steps(cfg, train_rows, rows_per_row=method.rows_per_row)
    values = training_arguments(cfg, plan, precision, has_eval)
    values.update(method.arguments)
    values = manager.merged_dict("gym_training_arguments", base=values, cfg=cfg)
    arguments_class = load_object(method.arguments_class)
    try:
        args = arguments_class(**values)
    except (ValueError, TypeError, ImportError) as exc:
        raise ConfigError(f"the training settings are not accepted by {arguments_class.__name__}: {exc}") from None
    args.gym_plan = plan  # type: ignore[attr-defined]  # read by the log line and the methods that want it
    args.gym_precision = precision  # type: ignore[attr-defined]
    return args


def build_trainer(cfg: Any, method: TrainingMethod, model: Any, tokenizer: Any, prepared: Any, args: Any,
                  manager: Any, extra_callbacks: tuple[Any, ...] = ()) -> Any:
    """The trainer phase's second half: collators and callbacks from hooks, then the method builds its trainer."""
    from gym.training import SaveFirstStep

    shape = method.data_shape
    has_eval = prepared.eval is not None and len(prepared.eval) > 0

    def collator(training: bool) -> Any:
        chosen = manager.hook.gym_data_collator(cfg=cfg, tokenizer=tokenizer, training=training)
        return chosen if chosen is not None else shape.collator(tokenizer, training)

    train_collator = collator(True)
    eval_collator = collator(False) if has_eval else None
    callbacks = [*manager.collected("gym_callbacks", cfg=cfg), *extra_callbacks]
    if cfg.early_stopping_patience:
        from gym.training import early_stopping_callback

        callbacks.append(early_stopping_callback(cfg.early_stopping_patience))
    if cfg.save_first_step:
        callbacks.append(SaveFirstStep())
    if not on_terminal():
        from gym.output import progress_callback

        callbacks.append(progress_callback())
    parts = TrainerParts(
        cfg=cfg,
        model=model,
        tokenizer=tokenizer,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval if has_eval else None,
        train_collator=train_collator,
        eval_collator=eval_collator,
        callbacks=callbacks,
        manager=manager,
    )
    return load_object(method.build_trainer)(parts)


def write_outputs(cfg: Any, method: TrainingMethod, trainer: Any, model: Any, tokenizer: Any,
                  metrics: dict[str, Any], prepared: Any, record: dict[str, Any], manager: Any) -> Path:
    """The outputs phase: the model and tokenizer, ``gym_config.yml``, ``trainer_state.json`` (the logged history),
    ``gym_results.json`` (:func:`gym.outputs.write_results`), the model card, then ``gym_after_train``."""
    from gym import outputs

    output_dir = Path(cfg.output_dir)
    trainer.save_model(str(output_dir))  # every process takes part (sharded models gather their weights)
    if is_main_process():
        tokenizer.save_pretrained(str(output_dir))
        outputs.write_config(cfg, output_dir)
        card = manager.merged_dict("gym_model_card", cfg=cfg, model=model)
        if hasattr(getattr(trainer, "state", None), "save_to_json"):
            trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
        outputs.write_results(output_dir, method=method.name, metrics=metrics, data=prepared.report,
                              packages=tuple(card.get("packages", ())), **record)
        outputs.write_model_card(cfg, metrics, method.name, card, prepared.summary())
        manager.hook.gym_after_train(cfg=cfg, model=model, tokenizer=tokenizer, output_dir=str(output_dir))
    return output_dir


# ---------------------------------------------------------------------------------------------- run


def run(cfg: Any, manager: Any = None) -> RunResult:
    """Train as ``cfg`` says and write the outputs; returns what happened."""
    from gym.plugin_manager import get_plugin_manager, using_plugin_manager

    manager = manager or get_plugin_manager()
    if not on_terminal():
        plain_progress()
    with using_plugin_manager(manager):  # every phase, and every hook that asks, sees this manager
        return _run(cfg, manager)


def _run(cfg: Any, manager: Any) -> RunResult:
    import transformers

    from gym.data.prepare import prepare_data
    from gym.model import build_model, load_tokenizer
    from gym.training import check_resume, checkpoint_step, eval_notes, record_identity_callback, resume_checkpoint, run_identity
    started = time.perf_counter()
    transformers.set_seed(cfg.seed)
    random.seed(cfg.seed)
    method = manager.training_method(cfg)
    busy = busy_cpu_note()
    if busy and is_main_process():
        say(f"note: {busy}")
    resume = resume_checkpoint(cfg)
    if is_main_process():
        from gym.outputs import prepare_output_dir

        for note in prepare_output_dir(cfg):  # before any work: a bad output_dir must not cost a whole run
            say(f"note: {note}")
    if cfg.hub_model_id:
        from gym.hub import push_problem

        problem = push_problem(cfg.hub_model_id)
        if problem:  # said now, not after hours of training
            raise ConfigError(f"hub_model_id: the model cannot be pushed to {cfg.hub_model_id}: {problem}")

    # data
    tokenizer = load_tokenizer(cfg)
    prepared = prepare_data(cfg, tokenizer, manager)
    say(prepared.summary())
    if len(prepared.train) == 0:
        raise GymError("no training rows are left after preparing the data; see the counts above")
    if cfg.debug:
        for line in method.data_shape.preview(prepared.train, tokenizer):
            say(line)
    identity = run_identity(cfg, prepared.report.fingerprint)
    check_resume(cfg, resume, identity)  # never continue another run's checkpoint without a word
    has_eval = prepared.eval is not None and len(prepared.eval) > 0
    for note in eval_notes(cfg, has_eval):
        say(f"note: {note}")

    # trainer arguments (before the model: engines such as ZeRO-3 set up how it is loaded), then the model
    args = arguments_for(cfg, method, len(prepared.train), has_eval, manager)
    args.gym_data = prepared.report.figures()  # type: ignore[attr-defined]  # callbacks read it (trackers)
    model = build_model(cfg, tokenizer, manager)
    trainer = build_trainer(cfg, method, model, tokenizer, prepared, args, manager,
                            extra_callbacks=(record_identity_callback(identity),))
    if hasattr(trainer, "remove_callback"):  # the raw log dicts give way: plain lines, or the figures on the bar
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        if on_terminal() and trainer.pop_callback(ProgressCallback) is not None:
            from gym.output import terminal_progress_callback

            trainer.add_callback(terminal_progress_callback())

    # train
    plan, precision = args.gym_plan, args.gym_precision
    say(
        f"training {method.name}: {plan.total_steps:,} steps ({plan.steps_per_epoch:,} per epoch, "
        f"{plan.rows:,} rows, micro batch {cfg.micro_batch_size} x {cfg.gradient_accumulation_steps} accumulation"
        + (f" x {plan.world_size} processes" if plan.world_size > 1 else "") + "), "
        + precision.describe() + (f", resuming from {resume}" if resume else "")
    )
    start_step = checkpoint_step(resume)
    train_started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - train_started

    state = trainer.state
    first_loss, final_loss, eval_loss = _losses(state.log_history)
    evaluated_last = any("eval_loss" in e and e.get("step") == state.global_step for e in state.log_history)
    if has_eval and (not evaluated_last or getattr(args, "load_best_model_at_end", False)):
        eval_loss = trainer.evaluate().get("eval_loss", eval_loss)  # the model that is saved: the best one if loaded
    metrics: dict[str, Any] = {
        "train_steps": state.global_step,
        "train_epochs": round(float(state.epoch or 0.0), 4),
        "train_seconds": round(train_seconds, 2),
        "train_loss": output.training_loss,
    }
    if first_loss is not None:
        metrics["first_loss"] = first_loss
        metrics["final_loss"] = final_loss
    if eval_loss is not None:
        metrics["eval_loss"] = eval_loss
    notes: list[str] = []
    stop_reason = None
    for callback in trainer.callback_handler.callbacks:
        metrics.update(getattr(callback, "gym_metrics", None) or {})
        notes.extend(getattr(callback, "gym_summary", None) or ())
        stop_reason = stop_reason or getattr(callback, "gym_stop_reason", None)

    # outputs
    record = {"planned_steps": plan.total_steps, "stop_reason": stop_reason, "notes": notes,
              "resumed_from": resume, "seconds": round(time.perf_counter() - started, 2)}
    output_dir = write_outputs(cfg, method, trainer, model, tokenizer, metrics, prepared, record, manager)
    result = RunResult(
        output_dir=str(output_dir),
        method=method.name,
        steps=state.global_step,
        epochs=float(state.epoch or 0.0),
        seconds=train_seconds,
        first_loss=first_loss,
        final_loss=final_loss,
        train_loss=output.training_loss,
        eval_loss=eval_loss,
        metrics=metrics,
        resumed_from=resume,
        start_step=start_step,
        notes=notes,
        stop_reason=stop_reason,
        trainer=trainer,
    )
    say(result.summary() + f"\n(whole run {time.perf_counter() - started:.1f}s)")
    return result


def busy_cpu_note() -> str | None:
    """A note when this CPU run starts on cores other processes already keep busy, with torch's default threads.

    Measured (``bench/threads.py``, docs/benchmarks.md): alone, torch's defaults are the fastest; two such jobs on
    the same 2 cores took 96 s each against 35 s with ``OMP_WAIT_POLICY=PASSIVE`` or ``OMP_NUM_THREADS=1``, as
    idle OpenMP threads spin on cores the other job needs. gym keeps the defaults and says what to set."""
    import os

    import torch

    if torch.cuda.is_available() or any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")):
        return None
    try:
        load = os.getloadavg()[0]
    except OSError:  # not on this platform
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load < max(1.5, 0.75 * cores):  # a job that just ended leaves about 1 for a minute
        return None
    return (f"other processes keep the CPU busy (load average {load:.1f} on {cores} cores); with torch's default "
            "threads two jobs slow each other down up to 3x: start each with OMP_WAIT_POLICY=PASSIVE (or give each "
            "its own cores with taskset), see 'Two jobs on one machine' in the README")


def _losses(log_history: list[dict[str, Any]]) -> tuple[float | None, float | None, float | None]:
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in log_history if "eval_loss" in entry]
    return (losses[0] if losses else None, losses[-1] if losses else None, evals[-1] if evals else None)
