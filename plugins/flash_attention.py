"""Flash attention: ``flash_attention: true`` loads the model with ``attn_implementation=flash_attention_2``.

Kept as a plugin (rather than only the core's ``attn_implementation`` key) because configs written for
Axolotl use the boolean, and because it checks up front that the ``flash-attn`` package is importable.
"""

from __future__ import annotations

import importlib.util

from pydantic import BaseModel, ConfigDict, Field

from gym import hookimpl
from gym.config import ConfigProblem
from gym.errors import ModelError

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


@hookimpl
def gym_model_load_kwargs(cfg):
    if not cfg.flash_attention:
        return None
    if importlib.util.find_spec("flash_attn") is None:
        raise ModelError(
            "flash_attention: true needs the flash-attn package, which is not installed "
            "(it builds only on machines with a CUDA GPU); remove the key or set attn_implementation: sdpa"
        )
    return {"attn_implementation": FLASH}
