"""Attention backends: the legacy boolean flags, the packages they need, and which backends keep packed samples apart.

The core key ``attn_implementation`` names transformers' attention implementation (``eager``, ``sdpa`` (gym's
default), ``flex_attention``, ``flash_attention_2`` / ``_3``, or a hub kernel such as
``kernels-community/flash-attn3``). Configs written for Axolotl use booleans instead; each maps to one value:

=====================  ============================================================================
``flash_attention``    ``flash_attention_2`` (needs the flash-attn package, which needs a CUDA GPU)
``sdp_attention``      ``sdpa`` (PyTorch's scaled-dot-product attention)
``flex_attention``     ``flex_attention`` (PyTorch's FlexAttention; compiled on first use)
``xformers_attention`` ``sdpa``: transformers has no xformers path, and PyTorch's sdpa runs the same
                       memory-efficient attention kernel (a note says so); xformers must be installed
=====================  ============================================================================

flash-attn's fused-op flags (``flash_attn_cross_entropy``, ``flash_attn_rms_norm``, ``flash_attn_fuse_mlp``)
only change speed; gym applies none of them and a note says so. At most one attention flag may be true, and not
together with a different ``attn_implementation``. A backend whose package is missing (flash-attn, xformers) is
an error at ``validate``, before any data is prepared.

With ``sample_packing`` several samples share a row and must not attend to each other. transformers separates
them from where ``position_ids`` restart (gym's packed rows carry no attention mask): eager, sdpa and
flex_attention build a block-diagonal causal mask from them, and the flash-attention family passes the
sample boundaries to its variable-length kernel. ``tests/test_attention.py`` checks packed loss == unpacked
loss for eager, sdpa and flex_attention on the CPU. A hub kernel (``org/name``) and ``paged|eager`` are
refused with packing: gym cannot tell whether they honour the boundaries.
"""

from __future__ import annotations

import importlib.util

from pydantic import BaseModel, ConfigDict, Field

from gym.api import ConfigProblem, ModelError, hookimpl

FLASH = "flash_attention_2"

# flag -> (attn_implementation it means, package it needs or None)
FLAGS: dict[str, tuple[str, str | None]] = {
    "flash_attention": (FLASH, "flash_attn"),
    "sdp_attention": ("sdpa", None),
    "flex_attention": ("flex_attention", None),
    "xformers_attention": ("sdpa", "xformers"),
}
FUSED_OPS = ("flash_attn_cross_entropy", "flash_attn_rms_norm", "flash_attn_fuse_mlp")  # speed only: a note
PACKAGES = {"flash_attn": "flash-attn (it builds only on machines with a CUDA GPU)", "xformers": "xformers"}
# backends that keep packed samples apart (checked by tests/test_attention.py where a CPU can run them)
PACKING_SAFE = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4")


class FlashAttentionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    flash_attention: bool = Field(
        False, description="Load the model with flash attention 2 (needs a GPU and flash-attn)."
    )
    sdp_attention: bool = Field(False, description="The same as attn_implementation: sdpa (gym's default).")
    flex_attention: bool = Field(False, description="The same as attn_implementation: flex_attention.")
    xformers_attention: bool = Field(
        False, description="Accepted for Axolotl configs: trains with sdpa (the same memory-efficient kernel); "
        "needs xformers installed."
    )
    flash_attn_cross_entropy: bool | None = Field(
        None, description="Accepted for Axolotl configs: gym applies none of flash-attn's fused ops (a note says so)."
    )
    flash_attn_rms_norm: bool | None = Field(None, description="As flash_attn_cross_entropy, for RMSNorm.")
    flash_attn_fuse_mlp: bool | None = Field(None, description="As flash_attn_cross_entropy, for the MLP.")


@hookimpl
def gym_config_schema():
    return FlashAttentionConfig


def flags_set(cfg) -> list[str]:
    return [flag for flag in FLAGS if getattr(cfg, flag, False)]


def chosen(cfg) -> str:
    """The attention implementation the model is loaded with."""
    flags = flags_set(cfg)
    if flags:
        return FLAGS[flags[0]][0]
    return cfg.attn_implementation or "sdpa"


def _missing_package(cfg) -> tuple[str, str] | None:
    """(the key that asked, the package it needs) when that package is not importable."""
    for flag in flags_set(cfg):
        package = FLAGS[flag][1]
        if package and importlib.util.find_spec(package) is None:
            return flag, package
    flash = (cfg.attn_implementation or "").startswith("flash_attention")
    if flash and importlib.util.find_spec("flash_attn") is None:
        return "attn_implementation", "flash_attn"
    return None


@hookimpl
def gym_validate_config(cfg):
    problems = []
    flags = flags_set(cfg)
    if len(flags) > 1:
        problems.append(ConfigProblem(flags[1], f"{', '.join(flags)} are all set; keep one attention flag"))
    elif flags and cfg.attn_implementation not in (None, FLAGS[flags[0]][0]):
        flag = flags[0]
        problems.append(
            ConfigProblem(flag, f"{flag}: true asks for {FLAGS[flag][0]} but attn_implementation is "
                          f"{cfg.attn_implementation!r}; keep one of the two")
        )
    missing = _missing_package(cfg)
    if missing:
        key, package = missing
        problems.append(
            ConfigProblem(key, f"needs the {PACKAGES[package]} package, which is not installed; install it, or write "
                          "attn_implementation: sdpa")
        )
    attention = chosen(cfg)
    if getattr(cfg, "sample_packing", False) and attention not in PACKING_SAFE:
        key = "attn_implementation"
        problems.append(
            ConfigProblem(key, f"{attention!r} with sample_packing: gym cannot check that this backend keeps packed "
                          f"samples apart (packing is supported with {', '.join(PACKING_SAFE)}); choose one of "
                          "those or set sample_packing: false")
        )
    return problems or None


def _asked_by(cfg) -> str | None:
    if cfg.flash_attention:
        return "flash_attention: true"
    if (cfg.attn_implementation or "").startswith("flash_attention"):
        return f"attn_implementation: {cfg.attn_implementation}"
    return None


@hookimpl
def gym_before_model_load(cfg):
    asked = _asked_by(cfg)
    if asked and importlib.util.find_spec("flash_attn") is None:  # also for commands that skip validation rules
        raise ModelError(
            f"{asked} needs the flash-attn package, which is not installed (it builds only on machines with a "
            "CUDA GPU); install it, or write attn_implementation: sdpa"
        )
    from gym.api import say

    fused = [key for key in FUSED_OPS if getattr(cfg, key, None)]
    if fused:
        say(f"note: {', '.join(fused)}: gym does not patch in flash-attn's fused ops; not applied, the model's own "
            "modules train (the same math)")
    for flag in flags_set(cfg):
        if flag == "xformers_attention":
            say("note: xformers_attention: transformers has no xformers attention; the model uses sdpa, PyTorch's "
                "memory-efficient attention")
        elif flag != "flash_attention":
            say(f"note: {flag}: true is attn_implementation: {FLAGS[flag][0]}")


@hookimpl
def gym_model_load_kwargs(cfg):
    return {"attn_implementation": chosen(cfg)} if flags_set(cfg) else None
