"""The training loop's settings: precision on this hardware, the step plan, and ``TrainingArguments``.

Every key here was checked at validation (:func:`gym.training_options.training_problems`); this module only
maps them to what transformers takes. The training method's arguments class gets the result, then the
method's own values, then every plugin's :func:`gym.hookspecs.gym_training_arguments`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gym import training_options
from gym.errors import ConfigError, DataError
from gym.output import on_terminal, process_count, say

# ------------------------------------------------------------------------------------------ hardware


@dataclass(frozen=True)
class HardwarePrecision:
    """What ``bf16`` / ``fp16`` / ``tf32`` (``auto`` included) come to on this machine."""

    bf16: bool
    fp16: bool
    tf32: bool | None
    cuda: bool

    def describe(self) -> str:
        mode = "bf16 mixed precision" if self.bf16 else "fp16 mixed precision" if self.fp16 else "fp32"
        device = "GPU" if self.cuda else "CPU"
        return f"{mode} on {device}" + (", tf32 matmuls" if self.tf32 else "")


def resolve_precision(cfg: Any, quiet: bool = False) -> HardwarePrecision:
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
        if not quiet:
            say("tf32: true has no effect here (no Ampere or newer NVIDIA GPU); matmuls stay in full fp32")
        return HardwarePrecision(bf16=bf16, fp16=fp16, tf32=None, cuda=cuda)
    tf32 = True if cfg.tf32 is True or (cfg.tf32 == "auto" and ampere) else (False if cfg.tf32 is False else None)
    return HardwarePrecision(bf16=bf16, fp16=fp16, tf32=tf32, cuda=cuda)


# -------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps the run takes, computed as the Trainer will."""

    rows: int
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    world_size: int


def plan_steps(cfg: Any, train_rows: int, world_size: int | None = None, rows_per_row: int = 1) -> StepPlan:
    """Steps from the number of prepared training rows (what the trainer iterates over; each becomes
    ``rows_per_row`` batch rows)."""
    world = world_size or process_count()
    per_rank = math.ceil(train_rows * rows_per_row / world)
    batches = math.ceil(per_rank / cfg.micro_batch_size)
    steps_per_epoch = max(1, math.ceil(batches / cfg.gradient_accumulation_steps))
    total = cfg.max_steps if cfg.max_steps else math.ceil(cfg.num_epochs * steps_per_epoch)
    return StepPlan(train_rows, batches, steps_per_epoch, total, world)


# ------------------------------------------------------------------------------- training arguments


def scheduler_settings(cfg: Any) -> tuple[str, dict[str, Any]]:
    """(transformers scheduler name, its kwargs); ``cosine_min_lr_ratio`` turns cosine into cosine_with_min_lr."""
    name, _ = training_options.scheduler_name(cfg.lr_scheduler)
    kwargs = dict(cfg.lr_scheduler_kwargs or {})
    if cfg.cosine_min_lr_ratio is not None:
        name = "cosine_with_min_lr"
        kwargs["min_lr_rate"] = cfg.cosine_min_lr_ratio
    return name, kwargs


def _interval(cfg: Any, what: str, per_epoch: int | None, steps: Any, strategy: str | None, plan: StepPlan,
              default: str) -> dict[str, Any]:
    """``{what}_strategy`` and ``{what}_steps`` from ``{what}s_per_epoch`` / ``{what}_steps`` / ``{what}_strategy``
    (their combinations were checked at validation, by :func:`gym.training_options.training_problems`)."""
    if per_epoch == 0:
        return {f"{what}_strategy": "no"}
    if per_epoch:
        every = max(1, plan.steps_per_epoch // per_epoch)
        return {f"{what}_strategy": "steps", f"{what}_steps": every}
    if steps is not None:
        return {f"{what}_strategy": strategy or "steps", f"{what}_steps": steps if steps < 1 else int(steps)}
    return {f"{what}_strategy": strategy or default}


def training_arguments(cfg: Any, plan: StepPlan, precision: HardwarePrecision, has_eval: bool) -> dict[str, Any]:
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
        "optim": training_options.optimizer_name(cfg.optimizer)[0],
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
        "remove_unused_columns": False,  # the training method's rows hold what its trainer reads
        "prediction_loss_only": True,
        "report_to": "none",
        "use_cpu": not precision.cuda,
        "dataloader_pin_memory": precision.cuda if cfg.dataloader_pin_memory is None else cfg.dataloader_pin_memory,
        "disable_tqdm": not on_terminal(),  # a log file gets plain lines (gym.output.progress_callback)
    }
    if precision.tf32 is not None:
        args["tf32"] = precision.tf32
    for key in ("adam_beta1", "adam_beta2", "adam_epsilon"):
        if getattr(cfg, key) is not None:
            args[key] = getattr(cfg, key)
    # Always said: some arguments classes (TRL's) turn checkpointing on by default; the config decides.
    args["activation_checkpointing"] = bool(cfg.gradient_checkpointing)
    if cfg.gradient_checkpointing:
        args["activation_checkpointing_kwargs"] = dict(cfg.gradient_checkpointing_kwargs or {"use_reentrant": False})
    if cfg.dataloader_num_workers is not None:
        args["dataloader_num_workers"] = cfg.dataloader_num_workers
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
        if not has_eval:  # rows were held out, but none was left after the length checks
            key = "early_stopping_patience" if cfg.early_stopping_patience else "save_strategy"
            raise DataError(f"{key}: needs evaluation data, and no evaluation sample is left after preparing the data")
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


# ------------------------------------------------------------------------------------------- resume


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint (one a kill -9 cut short while it was written), or ``None``."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "it has no trainer_state.json"
    try:
        json.loads(state.read_text())
    except ValueError:
        return "its trainer_state.json is cut short"
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        # A sharded checkpoint (torch.distributed.checkpoint) is a folder of per-process files whose .metadata
        # is written last, once every process has finished.
        if any(part.is_file() for part in folder.glob("*/.metadata")):
            return None
        return "it has no model weights"
    for path in weights:
        if path.suffix == ".safetensors" and not _safetensors_complete(path):
            return f"{path.name} is cut short"
    return None


def _safetensors_complete(path: Path) -> bool:
    """Whether the file is as long as its header says (a safetensors file starts with its header's length)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return False
        header_len = int.from_bytes(head, "little")
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            return False
    ends = [info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"]
    return size >= 8 + header_len + max(ends, default=0)


def resume_checkpoint(cfg: Any) -> str | None:
    """The checkpoint to resume from: ``resume_from_checkpoint``, else the newest complete one in ``output_dir``
    when ``auto_resume_from_checkpoints`` (newer, incomplete ones are named in a note), else none."""
    if cfg.resume_from_checkpoint:
        path = Path(cfg.resume_from_checkpoint).expanduser()
        problem = checkpoint_problem(path) if path.is_dir() else "it is not a folder"
        if problem:
            raise ConfigError(
                f"resume_from_checkpoint: {path} cannot be resumed from: {problem} (checkpoints are the complete "
                "checkpoint-<step> folders in output_dir)"
            )
        return str(path)
    out = Path(cfg.output_dir)
    if not (cfg.auto_resume_from_checkpoints and out.is_dir()):
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))), reverse=True
    )
    for _, folder in found:
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        say(f"note: skipping {folder.name} in {out}: {problem} (interrupted while it was written?)")
    return None


def checkpoint_step(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state.get("global_step", 0))


# ------------------------------------------------------------------------------------ run identity

RUN_FILE = "gym_run.json"  # in every checkpoint: what run made it
# Keys a resumed run may change without being another run: how long, how often to save / evaluate / log, where.
MAY_CHANGE_ON_RESUME = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "auto_resume_from_checkpoints", "max_steps",
    "num_epochs", "save_steps", "saves_per_epoch", "save_strategy", "save_total_limit", "save_first_step",
    "save_only_model", "eval_steps", "evals_per_epoch", "eval_strategy", "eval_batch_size", "logging_steps",
    "early_stopping_patience", "debug", "hub_model_id", "hub_strategy", "dataloader_num_workers",
    "dataloader_pin_memory", "dataset_processes", "dataset_prepared_path", "use_cpu", "plugins", "datasets",
    "test_datasets",
})


def run_identity(cfg: Any, data_fingerprint: str) -> dict[str, Any]:
    """What makes a run the same run: the prepared data, and every key but those a resume may change."""
    from gym.config import redacted

    settings = {k: v for k, v in redacted(cfg).items() if k not in MAY_CHANGE_ON_RESUME}
    return {"data": data_fingerprint, "settings": settings}


def identity_differences(checkpoint: str, identity: dict[str, Any]) -> list[str] | None:
    """What differs between this run and the run that wrote ``checkpoint`` (``None``: no record there)."""
    path = Path(checkpoint) / RUN_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return ["its gym_run.json cannot be read"]
    differences = ["the prepared data"] if saved.get("data") != identity["data"] else []
    ours, theirs = identity["settings"], saved.get("settings", {})
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            differences.append(f"{key} ({theirs.get(key)!r} there, {ours.get(key)!r} now)")
    return differences


def check_resume(cfg: Any, checkpoint: str | None, identity: dict[str, Any]) -> None:
    """Refuse to auto-resume another run's checkpoint; say what differs when one was named explicitly."""
    if not checkpoint:
        return
    differences = identity_differences(checkpoint, identity)
    if differences is None:
        say(f"note: {checkpoint} has no {RUN_FILE} (another tool or an older gym made it); resuming without a check")
        return
    if not differences:
        return
    listed = "; ".join(differences[:6]) + (" ..." if len(differences) > 6 else "")
    if cfg.resume_from_checkpoint:  # named by the user: their call
        say(f"note: resuming {checkpoint}, made by a run that differs: {listed}")
        return
    raise ConfigError(
        f"auto_resume_from_checkpoints: {checkpoint} was made by a different run ({listed}). Use a new output_dir, "
        f"or set resume_from_checkpoint: {checkpoint} to resume it anyway"
    )


def record_identity_callback(identity: dict[str, Any]):
    """A ``TrainerCallback`` writing :data:`RUN_FILE` into each checkpoint it saves (main process)."""
    from transformers import TrainerCallback

    class RecordRunIdentity(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                (folder / RUN_FILE).write_text(json.dumps(identity, indent=1, default=str))
            return control

    return RecordRunIdentity()


# --------------------------------------------------------------------------------------- callbacks


def early_stopping_callback(patience: int):
    """``early_stopping_patience``: transformers' early stopping, which also says why it stopped the run
    (``gym_stop_reason``, shown in the summary and recorded in ``gym_results.json``)."""
    from transformers import EarlyStoppingCallback

    class EarlyStopping(EarlyStoppingCallback):
        gym_stop_reason: str | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            control = super().on_evaluate(args, state, control, metrics=metrics, **kwargs) or control
            if control.should_training_stop and self.gym_stop_reason is None:
                metric = args.metric_for_best_model or "eval_loss"
                best = "" if state.best_metric is None else (
                    f" (best {state.best_metric:.4g} at step {state.best_global_step})")
                self.gym_stop_reason = (
                    f"early stopping at step {state.global_step}: {metric} did not improve for {patience} "
                    f"evaluations in a row{best}"
                )
            return control

    return EarlyStopping(early_stopping_patience=patience)


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
