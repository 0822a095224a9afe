"""Flash attention: ``flash_attention: true`` loads the model with ``attn_implementation=flash_attention_2``.

Kept as a plugin (rather than only the core's ``attn_implementation`` key) because configs written for
Axolotl use the boolean. It also checks, before the model is loaded, that the ``flash-attn`` package is
importable whenever flash attention is asked for either way, so a machine without it gets a clear error
instead of an ImportError from deep inside transformers.
"""

from __future__ import annotations

import importlib.util

from pydantic import BaseModel, ConfigDict, Field

from gym.api import hookimpl
from gym.api import ConfigProblem
from gym.api import ModelError

FLASH = "flash_attention_2"


class FlashAttentionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    flash_attention: bool = Field(False, description="Load the model with flash attention 2 (needs a GPU and flash-attn).")


@hookimpl
def gym_config_schema():
    return FlashAttentionConfig


@hookimpl
def gym_validate_config(cfg):
    if cfg.flash_attention and cfg.attn_implementation not in (None, FLASH):
        return [
            ConfigProblem(
                "flash_attention",
                f"flash_attention: true asks for {FLASH} but attn_implementation is {cfg.attn_implementation!r}; "
                "keep one of the two",
            )
        ]
    return None


def _asked_by(cfg) -> str | None:
    if cfg.flash_attention:
        return "flash_attention: true"
    if (cfg.attn_implementation or "").startswith("flash_attention"):
        return f"attn_implementation: {cfg.attn_implementation}"
    return None


@hookimpl
def gym_before_model_load(cfg):
    asked = _asked_by(cfg)
    if asked and importlib.util.find_spec("flash_attn") is None:
        raise ModelError(
            f"{asked} needs the flash-attn package, which is not installed (it builds only on machines with a "
            "CUDA GPU); install it, or write attn_implementation: sdpa"
        )


@hookimpl
def gym_model_load_kwargs(cfg):
    return {"attn_implementation": FLASH} if cfg.flash_attention else None
