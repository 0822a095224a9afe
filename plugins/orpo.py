"""The orpo plugin: ``rl: orpo`` (odds-ratio preference optimisation) on TRL's ``ORPOTrainer``.

ORPO needs no reference model: the loss is the chosen responses' NLL plus ``orpo_alpha`` times the odds-ratio
term (TRL's ``ORPOConfig.beta``). Rows are the pairwise preference rows of the dpo plugin
(:class:`gym.plugins.preference.PreferenceRows`), from the same dataset types (``chatml.intel``, ``passthrough``,
...). Every hook returns ``None`` unless ``rl: orpo``.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from gym.api import ConfigProblem, StrictConfig, TrainingMethod, hookimpl

NAME = "orpo"


class OrpoSettings(StrictConfig):
    """Keys of the orpo plugin."""

    orpo_alpha: Optional[float] = Field(
        None, gt=0, description="rl: orpo: weight of the odds-ratio term against the NLL loss (TRL's ORPOConfig.beta; "
        "TRL default 0.1)."
    )


@hookimpl
def gym_config_schema():
    return OrpoSettings


@hookimpl
def gym_validate_config(cfg):
    if getattr(cfg, "rl", None) != NAME:
        return None
    problems = []
    if getattr(cfg, "sample_packing", False):
        problems.append(ConfigProblem("sample_packing", "rl: orpo trains on prompt / chosen / rejected pairs that TRL "
                                      "batches itself; packing them is not supported, set sample_packing: false"))
    if cfg.rl_beta is not None and cfg.orpo_alpha is not None and cfg.rl_beta != cfg.orpo_alpha:
        problems.append(ConfigProblem("rl_beta", "ORPO's weight is orpo_alpha; rl_beta and orpo_alpha disagree, "
                                      "give only orpo_alpha"))
    return problems or None


def _alpha(cfg) -> float | None:
    return cfg.orpo_alpha if cfg.orpo_alpha is not None else cfg.rl_beta


@hookimpl
def gym_training_method(cfg):
    if getattr(cfg, "rl", None) != NAME:
        return None
    from gym.plugins.preference import PreferenceRows

    arguments = {"max_length": cfg.sequence_len}
    if _alpha(cfg) is not None:
        arguments["beta"] = _alpha(cfg)
    return TrainingMethod(
        name=NAME,
        build_trainer="gym.plugins.preference:build_reference_free_trainer",
        arguments_class="trl.experimental.orpo:ORPOConfig",
        arguments=arguments,
        data_shape=PreferenceRows(cfg),
        description="ORPO (TRL's ORPO trainer) on prompt / chosen / rejected pairs",
    )


@hookimpl
def gym_model_card(cfg, model):
    if getattr(cfg, "rl", None) != NAME:
        return None
    from gym.plugins.preference import model_card_section

    settings = {"trainer": "trl.experimental.orpo.ORPOTrainer",
                "orpo_alpha": _alpha(cfg) if _alpha(cfg) is not None else "0.1 (TRL default)",
                "max_length": cfg.sequence_len}
    return {"tags": [NAME, "trl"], "packages": ["trl"],
            "sections": [model_card_section("Preference training (orpo)", settings,
                                            "Trained with ORPO (no reference model).")]}
