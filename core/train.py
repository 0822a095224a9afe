"""``gym run``: tokenizer, data, model, trainer, training, outputs, in that order, with every hook called.

The flow of :func:`train` and the hooks it calls (see :mod:`gym.hookspecs`)::

    load the tokenizer (special tokens, new tokens, chat template)
    prepare the datasets (tokenize, lengths, pack; cached with dataset_prepared_path)
    gym_before_model_load -> gym_model_load_kwargs -> load the model, resize embeddings
    gym_after_model_load -> gym_wrap_model
    gym_data_collator (training, evaluation) -> gym_trainer_class -> gym_training_arguments
    gym_trainer_kwargs -> gym_callbacks -> build the trainer -> train
    save model, tokenizer, gym_config.yml, README.md -> gym_after_train -> print the summary

A callback may expose ``gym_metrics`` (a dict: joins the final metrics in the model card) and ``gym_summary``
(a list of lines: printed with the summary at the end).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gym import training_options
from gym.errors import ConfigError, GymError

IGNORE_INDEX = -100



def _say(message: str) -> None:
    print(f"[gym] {message}", flush=True)


# ------------------------------------------------------------------------------------------ hardware


@dataclass(frozen=True)
class Precision:
    """What ``bf16`` / ``fp16`` / ``tf32`` (``auto`` included) come to on this machine."""

    bf16: bool
    fp16: bool
    tf32: bool | None
    cuda: bool

    def describe(self) -> str:
        mode = "bf16 mixed precision" if self.bf16 else "fp16 mixed precision" if self.fp16 else "fp32"
        device = "GPU" if self.cuda else "CPU"
        return f"{mode} on {device}" + (", tf32 matmuls" if self.tf32 else "")


def resolve_precision(cfg: Any) -> Precision:
    """``auto`` picks per hardware: bf16 where the GPU has it, else fp16 on a GPU; fp32 and no tf32 on a CPU."""
    import torch

    cuda = torch.cuda.is_available() and not cfg.use_cpu
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    ampere = cuda and torch.cuda.get_device_capability()[0] >= 8

    fp16 = cfg.fp16 is True or (cfg.fp16 == "auto" and cuda and not bf16_ok and cfg.bf16 is not True)
    bf16 = cfg.bf16 is True or (cfg.bf16 == "auto" and bf16_ok and not fp16)
    if fp16 and not cuda:
        raise ConfigError("fp16: float16 mixed precision needs a GPU; on a CPU leave fp16 unset (fp32) or use bf16")
    if cfg.tf32 is True and not ampere:
        # TF32 only changes how Ampere+ GPUs multiply; elsewhere there is nothing to switch, and the run is the same.
        _say("tf32: true has no effect here (no Ampere or newer NVIDIA GPU); matmuls stay in full fp32")
        return Precision(bf16=bf16, fp16=fp16, tf32=None, cuda=cuda)
    tf32 = True if cfg.tf32 is True or (cfg.tf32 == "auto" and ampere) else (False if cfg.tf32 is False else None)
    return Precision(bf16=bf16, fp16=fp16, tf32=tf32, cuda=cuda)


# -------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps the run takes, computed as the Trainer will."""

    rows: int
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    world_size: int


def plan_steps(cfg: Any, train_rows: int, world_size: int | None = None) -> StepPlan:
    """Steps from the number of training rows (for packed data: the packing plan's rows)."""
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    per_rank = math.ceil(train_rows / world)
    batches = math.ceil(per_rank / cfg.micro_batch_size)
    steps_per_epoch = max(1, math.ceil(batches / cfg.gradient_accumulation_steps))
    total = cfg.max_steps if cfg.max_steps else math.ceil(cfg.num_epochs * steps_per_epoch)
    return StepPlan(train_rows, batches, steps_per_epoch, total, world)


# ------------------------------------------------------------------------------- training arguments


def optimizer_name(cfg: Any) -> str:
    name, message = training_options.optimizer_name(cfg.optimizer)
    if name is None:
        raise ConfigError(f"optimizer: {message}")
    return name


def scheduler_settings(cfg: Any) -> tuple[str, dict[str, Any]]:
    """(transformers scheduler name, its kwargs); ``cosine_min_lr_ratio`` turns cosine into cosine_with_min_lr."""
    name, message = training_options.scheduler_name(cfg.lr_scheduler)
    if name is None:
        raise ConfigError(f"lr_scheduler: {message}")
    kwargs = dict(cfg.lr_scheduler_kwargs or {})
    if cfg.cosine_min_lr_ratio is not None:
        if name not in ("cosine", "cosine_with_min_lr"):
            raise ConfigError(f"cosine_min_lr_ratio: applies to lr_scheduler: cosine, not {cfg.lr_scheduler!r}")
        name = "cosine_with_min_lr"
        kwargs["min_lr_rate"] = cfg.cosine_min_lr_ratio
    return name, kwargs


def check_training_settings(cfg: Any) -> None:
    """Raise one ConfigError listing every training-loop value gym cannot honour (before any work)."""
    problems = training_options.training_problems(cfg)
    if problems:
        raise ConfigError(
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in the training settings",
            problems=[f"{name}: {message}" for name, message in problems],
        )


def _interval(cfg: Any, what: str, per_epoch: int | None, steps: Any, strategy: str | None, plan: StepPlan,
              default: str) -> dict[str, Any]:
    """``{what}_strategy`` and ``{what}_steps`` from ``{what}s_per_epoch`` / ``{what}_steps`` / ``{what}_strategy``."""
    if strategy in ("no", "epoch", "best") and (per_epoch or steps):
        given = f"{what}s_per_epoch" if per_epoch else f"{what}_steps"
        raise ConfigError(f"{what}_strategy: {strategy!r} cannot be combined with {given}; remove one of them")
    if per_epoch is not None and steps is not None:
        raise ConfigError(f"{what}s_per_epoch: set {what}s_per_epoch or {what}_steps, not both")
    if per_epoch == 0:
        return {f"{what}_strategy": "no"}
    if per_epoch:
        every = max(1, plan.steps_per_epoch // per_epoch)
        return {f"{what}_strategy": "steps", f"{what}_steps": every}
    if steps is not None:
        if steps <= 0:
            raise ConfigError(f"{what}_steps: must be positive (a step count, or a fraction of the run below 1)")
        if steps >= 1 and steps != int(steps):
            raise ConfigError(f"{what}_steps: {steps} is neither a whole number of steps nor a fraction below 1")
        return {f"{what}_strategy": strategy or "steps", f"{what}_steps": steps if steps < 1 else int(steps)}
    return {f"{what}_strategy": strategy or default}


def training_arguments(cfg: Any, plan: StepPlan, precision: Precision, has_eval: bool) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords that the core config keys map to."""
    scheduler, scheduler_kwargs = scheduler_settings(cfg)
    if cfg.warmup_steps is not None:
        warmup = cfg.warmup_steps
    elif cfg.warmup_ratio is not None:
        warmup = math.ceil(cfg.warmup_ratio * plan.total_steps)
    else:
        warmup = 0
    args: dict[str, Any] = {
        "output_dir": str(cfg.output_dir),
        "per_device_train_batch_size": cfg.micro_batch_size,
        "per_device_eval_batch_size": cfg.eval_batch_size or cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "num_train_epochs": cfg.num_epochs,
        "max_steps": cfg.max_steps or -1,
        "optim": optimizer_name(cfg),
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": scheduler,
        "lr_scheduler_kwargs": scheduler_kwargs,
        "warmup_steps": warmup,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm if cfg.max_grad_norm is not None else 0.0,
        "bf16": precision.bf16,
        "fp16": precision.fp16,
        "seed": cfg.seed,
        "logging_steps": cfg.logging_steps or max(1, round(plan.total_steps / 20)),
        "logging_first_step": True,
        "save_total_limit": cfg.save_total_limit,
        "save_only_model": cfg.save_only_model,
        "remove_unused_columns": False,  # the collator keeps the model inputs; position_ids must survive
        "prediction_loss_only": True,
        "report_to": "none",
        "use_cpu": not precision.cuda,
        "dataloader_pin_memory": precision.cuda if cfg.dataloader_pin_memory is None else cfg.dataloader_pin_memory,
        "disable_tqdm": False,
    }
    if precision.tf32 is not None:
        args["tf32"] = precision.tf32
    for key in ("adam_beta1", "adam_beta2", "adam_epsilon"):
        if getattr(cfg, key) is not None:
            args[key] = getattr(cfg, key)
    if cfg.gradient_checkpointing:
        args["activation_checkpointing"] = True
        args["activation_checkpointing_kwargs"] = dict(cfg.gradient_checkpointing_kwargs or {"use_reentrant": False})
    if cfg.group_by_length:
        args["train_sampling_strategy"] = "group_by_length"
    if cfg.dataloader_num_workers is not None:
        args["dataloader_num_workers"] = cfg.dataloader_num_workers
    if cfg.ddp_find_unused_parameters is not None:
        args["ddp_find_unused_parameters"] = cfg.ddp_find_unused_parameters
    if cfg.ddp_timeout is not None:
        args["ddp_timeout"] = cfg.ddp_timeout
    if cfg.torch_compile is True or (cfg.torch_compile == "auto" and precision.cuda):
        args["torch_compile"] = True

    save = _interval(cfg, "save", cfg.saves_per_epoch, cfg.save_steps, cfg.save_strategy, plan, "epoch")
    args.update(save)
    if has_eval:
        args.update(_interval(cfg, "eval", cfg.evals_per_epoch, cfg.eval_steps, cfg.eval_strategy, plan, "epoch"))
    else:
        args["eval_strategy"] = "no"
    if args["save_strategy"] == "best" or cfg.early_stopping_patience:
        if not has_eval:
            key = "early_stopping_patience" if cfg.early_stopping_patience else "save_strategy"
            raise ConfigError(f"{key}: needs evaluation data (set val_set_size or test_datasets)")
        if args["eval_strategy"] == "no":
            raise ConfigError("early_stopping_patience: needs evaluations (evals_per_epoch or eval_steps above 0)")
        args["metric_for_best_model"] = "eval_loss"
        args["greater_is_better"] = False
    if cfg.hub_model_id:
        args["push_to_hub"] = True
        args["hub_model_id"] = cfg.hub_model_id
        if cfg.hub_strategy:
            args["hub_strategy"] = cfg.hub_strategy
    return args


def eval_notes(cfg: Any, has_eval: bool) -> list[str]:
    """Evaluation settings that cannot act because there is no evaluation data (said, never silent)."""
    if has_eval:
        return []
    asked = [k for k in ("evals_per_epoch", "eval_steps") if getattr(cfg, k)]
    if cfg.eval_strategy not in (None, "no"):
        asked.append("eval_strategy")
    return [f"{', '.join(asked)} set but there is no evaluation data (val_set_size / test_datasets): no evaluation"] if asked else []


# ----------------------------------------------------------------------------------- bookkeeping


class TrainedTokenCounter:
    """Counts the tokens that carry a loss (shifted ``labels`` != -100) in every training forward pass."""

    def __init__(self) -> None:
        self.total = 0
        self._handle = None

    def attach(self, model: Any) -> "TrainedTokenCounter":
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def _count(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        labels = kwargs.get("labels")
        if module.training and labels is not None:
            self.total = self.total + (labels[..., 1:] != IGNORE_INDEX).sum()

    def detach(self) -> int:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return int(self.total)


class SaveFirstStep:
    """``save_first_step``: also checkpoint after the first optimizer step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _SaveFirstStep(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 1:
                    control.should_save = True
                return control

        return _SaveFirstStep()


@dataclass
class TrainResult:
    """What :func:`train` returns (and prints as the summary)."""

    output_dir: str
    steps: int
    epochs: float
    seconds: float
    tokens_trained: int
    first_loss: float | None
    final_loss: float | None
    train_loss: float | None
    eval_loss: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None
    start_step: int = 0
    notes: list[str] = field(default_factory=list)  # lines from callbacks' ``gym_summary``
    trainer: Any = field(default=None, repr=False)  # for callers (and tests) that inspect the run

    def summary(self) -> str:
        rate = self.tokens_trained / self.seconds if self.seconds else 0.0
        if self.start_step:
            steps = f"steps {self.start_step:,} to {self.steps:,} (resumed from {self.resumed_from})"
        else:
            steps = f"{self.steps:,} steps"
        lines = [
            f"trained {steps}, {self.epochs:.2f} epochs, in {self.seconds:.1f}s: "
            f"{self.tokens_trained:,} tokens trained ({rate:,.0f} tokens/s)"
        ]
        if self.first_loss is not None and self.final_loss is not None:
            lines.append(f"loss {self.first_loss:.4f} at the first step -> {self.final_loss:.4f} at the last log "
                         f"(average over the run {self.train_loss:.4f})")
        if self.eval_loss is not None:
            lines.append(f"eval loss {self.eval_loss:.4f}")
        lines.extend(self.notes)
        lines.append(f"model, tokenizer, gym_config.yml and README.md written to {self.output_dir}")
        return "\n".join(lines)


def _losses(log_history: list[dict[str, Any]]) -> tuple[float | None, float | None, float | None]:
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in log_history if "eval_loss" in entry]
    return (losses[0] if losses else None, losses[-1] if losses else None, evals[-1] if evals else None)


# ------------------------------------------------------------------------------------------- resume


def resume_checkpoint(cfg: Any) -> str | None:
    """The checkpoint to resume from: ``resume_from_checkpoint``, else the newest in ``output_dir`` when
    ``auto_resume_from_checkpoints``, else none."""
    from transformers.trainer_utils import get_last_checkpoint

    if cfg.resume_from_checkpoint:
        path = Path(cfg.resume_from_checkpoint).expanduser()
        if not (path / "trainer_state.json").is_file():
            raise ConfigError(
                f"resume_from_checkpoint: {path} is not a checkpoint folder (no trainer_state.json in it); "
                f"checkpoints are the checkpoint-<step> folders in output_dir"
            )
        return str(path)
    if cfg.auto_resume_from_checkpoints and Path(cfg.output_dir).is_dir():
        return get_last_checkpoint(str(cfg.output_dir))
    return None


def _checkpoint_step(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    import json

    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state.get("global_step", 0))


def _show_samples(dataset: Any, tokenizer: Any, count: int = 3) -> None:
    """``debug: true``: a few prepared rows, each token with its label (-100: not trained)."""
    for i in range(min(count, len(dataset))):
        row = dataset[i]
        pieces = []
        for token, label in zip(row["input_ids"], row["labels"]):
            text = tokenizer.decode([token])
            pieces.append(f"{text!r}({label})")
        _say(f"sample {i}: " + " ".join(pieces))


# ---------------------------------------------------------------------------------------------- train


def train(cfg: Any, manager: Any = None) -> TrainResult:
    """Fine-tune as ``cfg`` says and write the outputs; returns what happened."""
    import transformers

    from gym import outputs
    from gym.data.prepare import prepare_datasets
    from gym.model import is_peft_model, load_model, load_tokenizer
    from gym.plugin_manager import get_plugin_manager

    manager = manager or get_plugin_manager()
    check_training_settings(cfg)
    started = time.perf_counter()
    transformers.set_seed(cfg.seed)
    random.seed(cfg.seed)
    precision = resolve_precision(cfg)
    resume = resume_checkpoint(cfg)

    tokenizer = load_tokenizer(cfg)
    prepared = prepare_datasets(cfg, tokenizer, manager)
    _say(prepared.summary())
    if len(prepared.train) == 0:
        raise GymError("no training rows are left after preparing the data; see the counts above")
    if cfg.debug:
        _show_samples(prepared.train, tokenizer)
    has_eval = prepared.eval is not None and len(prepared.eval) > 0
    for note in eval_notes(cfg, has_eval):
        _say(f"note: {note}")

    manager.hook.gym_before_model_load(cfg=cfg)
    model = load_model(cfg, tokenizer, manager, mixed_bf16=precision.bf16 and precision.cuda)
    manager.hook.gym_after_model_load(cfg=cfg, model=model, tokenizer=tokenizer)
    wrapped = manager.hook.gym_wrap_model(cfg=cfg, model=model)
    if wrapped is not None:
        model = wrapped
    model.config.use_cache = False  # packed rows: transformers only separates samples without a cache

    train_collator = manager.hook.gym_data_collator(cfg=cfg, tokenizer=tokenizer, training=True)
    eval_collator = manager.hook.gym_data_collator(cfg=cfg, tokenizer=tokenizer, training=False) if has_eval else None
    choice = manager.hook.gym_trainer_class(cfg=cfg)
    if choice is None:
        raise GymError("no plugin chose a trainer (is the built-in sft plugin disabled?)")

    plan = plan_steps(cfg, len(prepared.train))
    base_args = training_arguments(cfg, plan, precision, has_eval)
    base_args.update(choice.defaults or {})
    arg_values = manager.merged_dict("gym_training_arguments", base=base_args, cfg=cfg)
    try:
        args = choice.arguments_class(**arg_values)
    except (ValueError, TypeError, ImportError) as exc:
        raise ConfigError(f"the training settings are not accepted by {choice.arguments_class.__name__}: {exc}") from None

    trainer_kwargs = manager.merged_dict("gym_trainer_kwargs", cfg=cfg, model=model, tokenizer=tokenizer)
    callbacks = [cb for _, found in manager.call_each("gym_callbacks", cfg=cfg) for cb in (found or ())]
    if cfg.early_stopping_patience:
        callbacks.append(transformers.EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    if cfg.save_first_step:
        callbacks.append(SaveFirstStep())
    if eval_collator is not None and _accepts(choice.trainer_class, "eval_data_collator"):
        trainer_kwargs.setdefault("eval_data_collator", eval_collator)
    train_set = prepared.train
    if cfg.group_by_length and "length" not in train_set.column_names:
        train_set = train_set.add_column("length", _row_lengths(train_set))
    trainer = choice.trainer_class(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=prepared.eval if has_eval else None,
        data_collator=train_collator,
        processing_class=tokenizer,
        callbacks=callbacks or None,
        **trainer_kwargs,
    )

    _say(
        f"training {choice.name}: {plan.total_steps:,} steps ({plan.steps_per_epoch:,} per epoch, "
        f"{plan.rows:,} rows, micro batch {cfg.micro_batch_size} x {cfg.gradient_accumulation_steps} accumulation), "
        f"{precision.describe()}" + (f", resuming from {resume}" if resume else "")
    )
    counter = TrainedTokenCounter().attach(model)
    train_started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=resume)
    finally:
        tokens_trained = counter.detach()
    train_seconds = time.perf_counter() - train_started

    state = trainer.state
    first_loss, final_loss, eval_loss = _losses(state.log_history)
    if has_eval and not any("eval_loss" in e and e.get("step") == state.global_step for e in state.log_history):
        eval_loss = trainer.evaluate().get("eval_loss", eval_loss)

    output_dir = Path(cfg.output_dir)
    model.config.use_cache = True
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(output_dir))

    metrics: dict[str, Any] = {
        "train_steps": state.global_step,
        "train_epochs": round(float(state.epoch or 0.0), 4),
        "train_seconds": round(train_seconds, 2),
        "tokens_trained": tokens_trained,
        "tokens_per_second": round(tokens_trained / train_seconds, 1) if train_seconds else 0.0,
        "train_loss": output.training_loss,
    }
    if first_loss is not None:
        metrics["first_loss"] = first_loss
        metrics["final_loss"] = final_loss
    if eval_loss is not None:
        metrics["eval_loss"] = eval_loss
    notes: list[str] = []
    for callback in trainer.callback_handler.callbacks:
        metrics.update(getattr(callback, "gym_metrics", None) or {})
        notes.extend(getattr(callback, "gym_summary", None) or ())

    if trainer.is_world_process_zero():
        outputs.write_config(cfg, output_dir)
        outputs.write_model_card(cfg, metrics, adapter=is_peft_model(model), trainer_name=choice.name,
                                 data_summary=prepared.summary())
        manager.hook.gym_after_train(cfg=cfg, model=model, tokenizer=tokenizer, output_dir=str(output_dir))

    result = TrainResult(
        output_dir=str(output_dir),
        steps=state.global_step,
        epochs=float(state.epoch or 0.0),
        seconds=train_seconds,
        tokens_trained=tokens_trained,
        first_loss=first_loss,
        final_loss=final_loss,
        train_loss=output.training_loss,
        eval_loss=eval_loss,
        metrics=metrics,
        resumed_from=resume,
        start_step=_checkpoint_step(resume),
        notes=notes,
        trainer=trainer,
    )
    if trainer.is_world_process_zero():
        _say(result.summary() + f"\n(whole run {time.perf_counter() - started:.1f}s)")
    return result


def _row_lengths(dataset: Any) -> list[int]:
    """Tokens per row, read from the arrow column (for group_by_length)."""
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")[:]["input_ids"]
    return pc.list_value_length(column).to_pylist()


def _accepts(cls: type, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
