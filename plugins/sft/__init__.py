"""The sft plugin: supervised fine-tuning, the default training method.

It owns what an SFT run's data and trainer look like: rows of ``input_ids`` and ``labels`` checked against
``sequence_len`` and packed with ``sample_packing`` (:mod:`.rows`, :mod:`.packing`), the padding / packing
collator (:mod:`.collator`) and the trainer with its trained-token count (:mod:`.trainer`). Its method
answers last (``trylast=True``), so any plugin that offers another method (``rl: dpo``) wins when its keys
ask for it. Nothing heavy is imported until a run needs it.
"""

from __future__ import annotations

from pydantic import Field

from gym.api import StrictConfig, TrainingMethod, hookimpl

NAME = "sft"


class SftSettings(StrictConfig):
    """Keys of the sft plugin."""

    sample_packing: bool = Field(False, description="Pack several samples into each row of `sequence_len` tokens.")
    eval_sample_packing: bool | None = Field(None, description="Pack evaluation rows too (default: as training).")
    pad_to_sequence_len: bool = Field(False, description="Pad every batch to `sequence_len`.")
    group_by_length: bool = Field(False, description="Batch samples of similar length together.")
    min_sample_len: int | None = Field(None, ge=1, description="Drop samples shorter than this many tokens.")


@hookimpl
def gym_config_schema():
    return SftSettings


@hookimpl(trylast=True)
def gym_training_method(cfg):
    if getattr(cfg, "rl", None) or getattr(cfg, "reward_model", None):
        return None  # another method was asked for; if no plugin offers it, that plugin's rule says so
    from gym.plugins.sft.rows import SupervisedRows

    arguments = {"train_sampling_strategy": "group_by_length"} if cfg.group_by_length else {}
    return TrainingMethod(
        name=NAME,
        build_trainer="gym.plugins.sft.trainer:build_trainer",
        arguments=arguments,
        data_shape=SupervisedRows(cfg),
        description="supervised fine-tuning on input_ids / labels rows",
    )


@hookimpl
def gym_data_settings(cfg):
    """Packing and the minimum length change the prepared rows; the pad length and grouping do not."""
    return {
        "sample_packing": bool(cfg.sample_packing),
        "eval_sample_packing": bool(cfg.sample_packing if cfg.eval_sample_packing is None else cfg.eval_sample_packing),
        "min_sample_len": cfg.min_sample_len,
    }
