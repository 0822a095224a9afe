"""Which training-loop values gym accepts, checked without importing torch (for ``gym validate`` too).

The optimizer and scheduler names are transformers' (``OptimizerNames``, ``SchedulerType``), written out
here so that validation stays light; a test keeps the lists equal to the installed transformers.
"""

from __future__ import annotations

import difflib
from typing import Any

OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor",
    "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad",
    "adamw_bnb_8bit", "adamw_8bit", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit",
    "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
    "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit",
    "galore_adafactor", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise",
    "lomo", "adalomo", "grokadamw", "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd",
    "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw",
)
# Axolotl optimizer names that transformers knows under another name.
OPTIMIZER_ALIASES = {
    "adamw_hf": "adamw_torch",
    "ao_adamw_8bit": "adamw_torch_8bit",
    "ao_adamw_4bit": "adamw_torch_4bit",
}
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy",
)
HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
# The keyword arguments each scheduler takes through lr_scheduler_kwargs (None: any, passed on to torch's class).
SCHEDULER_KWARGS: dict[str, tuple[str, ...] | None] = {
    "linear": (), "cosine": ("num_cycles",), "cosine_with_restarts": ("num_cycles",),
    "polynomial": ("lr_end", "power"), "constant": (), "constant_with_warmup": (), "inverse_sqrt": ("timescale",),
    "reduce_lr_on_plateau": None, "cosine_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate"),
    "cosine_warmup_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate"),
    "warmup_stable_decay": ("num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "min_lr_ratio",
                            "num_cycles"),
    "greedy": None,
}


def _choice(value: str, known: tuple[str, ...], aliases: dict[str, str]) -> tuple[str | None, str]:
    """(the transformers name, or None) and, when unknown, a message with a suggestion."""
    value = aliases.get(value, value)
    if value in known:
        return value, ""
    close = difflib.get_close_matches(value, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return None, f"{value!r} is not available{hint} (available: {', '.join(sorted(known))})"


def optimizer_name(value: str) -> tuple[str | None, str]:
    return _choice(value, OPTIMIZERS, OPTIMIZER_ALIASES)


def scheduler_name(value: str) -> tuple[str | None, str]:
    return _choice(value, SCHEDULERS, {})


def training_problems(cfg: Any) -> list[tuple[str, str]]:
    """``(field, message)`` for training-loop values gym cannot honour, found from the config alone."""
    problems: list[tuple[str, str]] = []
    _, message = optimizer_name(cfg.optimizer)
    if message:
        problems.append(("optimizer", message))
    scheduler, message = scheduler_name(cfg.lr_scheduler)
    if message:
        problems.append(("lr_scheduler", message))
    if cfg.cosine_min_lr_ratio is not None and scheduler not in (None, "cosine", "cosine_with_min_lr"):
        problems.append(("cosine_min_lr_ratio", f"applies to lr_scheduler: cosine, not {cfg.lr_scheduler!r}"))
    if scheduler is not None and cfg.lr_scheduler_kwargs:
        effective = "cosine_with_min_lr" if cfg.cosine_min_lr_ratio is not None else scheduler
        accepted = SCHEDULER_KWARGS.get(effective)
        unknown = sorted(set(cfg.lr_scheduler_kwargs) - set(accepted)) if accepted is not None else []
        if unknown:
            takes = ", ".join(accepted) if accepted else "no arguments"
            problems.append(("lr_scheduler_kwargs", f"{', '.join(unknown)}: not an argument of the {effective} "
                             f"scheduler (it takes {takes})"))
    for what in ("save", "eval"):
        per_epoch, steps, strategy = (
            getattr(cfg, f"{what}s_per_epoch"), getattr(cfg, f"{what}_steps"), getattr(cfg, f"{what}_strategy")
        )
        if per_epoch is not None and steps is not None:
            problems.append((f"{what}_steps", f"set {what}s_per_epoch or {what}_steps, not both"))
        if strategy in ("no", "epoch", "best") and (per_epoch or steps):
            given = f"{what}s_per_epoch" if per_epoch else f"{what}_steps"
            problems.append((f"{what}_strategy", f"{strategy!r} cannot be combined with {given}; remove one of them"))
        if steps is not None and (steps <= 0 or (steps >= 1 and steps != int(steps))):
            problems.append((f"{what}_steps", "must be a whole number of steps, or a fraction of the run below 1"))
    has_eval_data = bool(cfg.val_set_size) or bool(cfg.test_datasets)
    if cfg.early_stopping_patience and not has_eval_data:
        problems.append(("early_stopping_patience", "needs evaluation data (set val_set_size or test_datasets)"))
    if cfg.early_stopping_patience and (cfg.evals_per_epoch == 0 or cfg.eval_strategy == "no"):
        problems.append(("early_stopping_patience", "needs evaluations (evals_per_epoch or eval_steps above 0)"))
    if cfg.save_strategy == "best" and not has_eval_data:
        problems.append(("save_strategy", "'best' needs evaluation data (set val_set_size or test_datasets)"))
    if cfg.hub_strategy is not None and cfg.hub_strategy not in HUB_STRATEGIES:
        problems.append(("hub_strategy", f"{cfg.hub_strategy!r} is not one of {', '.join(HUB_STRATEGIES)}"))
    if cfg.hub_strategy is not None and not cfg.hub_model_id:
        problems.append(("hub_strategy", "has no effect without hub_model_id"))
    if not cfg.save_safetensors:
        problems.append(("save_safetensors", "transformers 5 always writes safetensors; remove the key"))
    if not cfg.tokenizer_use_fast:
        problems.append(("tokenizer_use_fast", "transformers 5 only has fast tokenizers; remove the key"))
    if cfg.gradient_checkpointing_kwargs and not cfg.gradient_checkpointing:
        problems.append(("gradient_checkpointing_kwargs", "has no effect without gradient_checkpointing"))
    if cfg.resume_from_checkpoint and cfg.auto_resume_from_checkpoints:
        problems.append(("auto_resume_from_checkpoints", "set resume_from_checkpoint or auto_resume_from_checkpoints, not both"))
    return problems
