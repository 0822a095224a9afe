"""The rl plugin: the ``rl:`` key that chooses a preference or RL training method, and ``rl_beta``.

The methods themselves are plugins of their own (``dpo``, ``grpo``, ...): each answers
``gym_training_method`` when ``rl`` names it. This plugin only owns the keys every method shares and checks
that an installed plugin trains the method asked for.
"""

from __future__ import annotations

import importlib.util
from typing import Literal, Optional

from pydantic import Field

from gym.api import ConfigProblem, StrictConfig, get_plugin_manager, hookimpl

METHODS = ("dpo", "ipo", "simpo", "orpo", "kto", "grpo", "gdpo")


class RlSettings(StrictConfig):
    """Keys of the rl plugin."""

    rl: Optional[Literal["dpo", "ipo", "simpo", "orpo", "kto", "grpo", "gdpo"]] = Field(
        None,
        description="Train with a preference or RL method instead of supervised fine-tuning: dpo, ipo, simpo, "
        "orpo, kto, grpo or gdpo (GRPO normalising each reward function on its own: "
        "trl.multi_objective_aggregation normalize_then_sum). Unset: supervised fine-tuning.",
    )
    rl_beta: Optional[float] = Field(
        None, gt=0, description="The method's beta: how far the policy may move from the reference (DPO, KTO, GRPO)."
    )


@hookimpl
def gym_config_schema():
    return RlSettings


@hookimpl
def gym_validate_config(cfg):
    if cfg.rl is None:
        return None
    if importlib.util.find_spec("trl") is None:
        return [ConfigProblem("rl", f"rl: {cfg.rl} trains with TRL, which is not installed: pip install 'gym-llm[rl]'")]
    method = get_plugin_manager().call("gym_training_method", cfg=cfg)
    if method is None or method.name != cfg.rl:
        return [ConfigProblem("rl", f"no installed plugin trains rl: {cfg.rl} (gym plugins list shows what is installed)")]
    return None
