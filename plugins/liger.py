"""Liger kernels (``liger-kernel``, extra ``liger``): Triton kernels for RoPE, RMSNorm, LayerNorm, the GLU MLP and
the cross entropy, patched into the loaded model through Liger's own ``apply_liger_kernel_to_<family>``.

::

    liger_rope: true
    liger_rms_norm: true
    liger_glu_activation: true               # SwiGLU, or GeGLU for the Gemma families (liger_swiglu: the old name)
    liger_fused_linear_cross_entropy: true   # the loss without the full logits (not with cut_cross_entropy)

The family (the model config's ``model_type``) picks Liger's entry point; a family Liger has none for is an
error when the model is loaded. Every argument of that entry point is passed explicitly (Liger's defaults turn
kernels on that were not asked for). A kernel the entry point has no argument for (``liger_layer_norm`` on a
Llama, ``liger_rms_norm_gated`` / ``liger_use_token_scaling`` where this Liger version has none) is not
applied, and a note names it.

Liger's kernels are Triton kernels for CUDA GPUs. They change speed and memory, not the math, so on a machine
without one (or with ``use_cpu: true``) nothing is patched: a note names each kernel not applied and the run
trains on the model's standard modules.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from pydantic import Field

from gym.api import ConfigProblem, ModelError, StrictConfig, hookimpl

# config key -> the argument names it may have in an ``apply_liger_kernel_to_*`` entry point, first match wins
KERNELS: dict[str, tuple[str, ...]] = {
    "liger_rope": ("rope",),
    "liger_rms_norm": ("rms_norm",),
    "liger_layer_norm": ("layer_norm",),
    "liger_glu_activation": ("swiglu", "geglu"),
    "liger_swiglu": ("swiglu", "geglu"),
    "liger_cross_entropy": ("cross_entropy",),
    "liger_fused_linear_cross_entropy": ("fused_linear_cross_entropy",),
    "liger_rms_norm_gated": ("rms_norm_gated",),
    "liger_use_token_scaling": ("use_token_scaling",),
}


class LigerConfig(StrictConfig):
    """Keys of the liger plugin."""

    liger_rope: bool | None = Field(None, description="Liger's fused rotary position embedding kernel.")
    liger_rms_norm: bool | None = Field(None, description="Liger's RMSNorm kernel.")
    liger_layer_norm: bool | None = Field(None, description="Liger's LayerNorm kernel (families that use LayerNorm).")
    liger_glu_activation: bool | None = Field(
        None, description="Liger's gated MLP kernel: SwiGLU, or GeGLU for the Gemma families."
    )
    liger_swiglu: bool | None = Field(None, description="The older name of liger_glu_activation.")
    liger_cross_entropy: bool | None = Field(None, description="Liger's cross entropy kernel (logits still made).")
    liger_fused_linear_cross_entropy: bool | None = Field(
        None, description="Liger's fused output layer + cross entropy: the full logits are never materialised."
    )
    liger_rms_norm_gated: bool | None = Field(
        None, description="Liger's gated RMSNorm kernel (families with gated RMSNorm, where Liger has it)."
    )
    liger_use_token_scaling: bool | None = Field(
        None, description="Token scaling in Liger's fused linear cross entropy (where this Liger version has it)."
    )


@hookimpl
def gym_config_schema():
    return LigerConfig


def asked(cfg: Any) -> list[str]:
    """The liger keys set to true, in :data:`KERNELS` order."""
    return [key for key in KERNELS if getattr(cfg, key, None)]


@hookimpl
def gym_validate_config(cfg):
    keys = asked(cfg)
    if not keys:
        return None
    problems = []
    if importlib.util.find_spec("liger_kernel") is None:
        problems.append(ConfigProblem(keys[0], "needs the liger-kernel package: pip install 'gym-llm[liger]'"))
    if cfg.liger_cross_entropy and cfg.liger_fused_linear_cross_entropy:
        problems.append(ConfigProblem("liger_cross_entropy", "liger_cross_entropy and "
                                      "liger_fused_linear_cross_entropy both replace the loss; keep one"))
    from gym.plugins.cce import enabled as cut_cross_entropy_enabled

    if cut_cross_entropy_enabled(cfg):
        for key in ("liger_fused_linear_cross_entropy", "liger_cross_entropy"):
            if getattr(cfg, key):
                problems.append(ConfigProblem(key, f"{key} and cut_cross_entropy both replace the loss; keep one"))
    if not problems:
        from gym.plugins.cce import local_model_type

        model_type, families = local_model_type(cfg), liger_families()
        if model_type is not None and families is not None and model_type not in families:
            problems.append(ConfigProblem(keys[0], f"Liger has no kernels for the model family {model_type!r} of "
                                          f"{cfg.base_model}; remove the liger_* keys"))
    if cfg.liger_use_token_scaling and not cfg.liger_fused_linear_cross_entropy:
        problems.append(ConfigProblem("liger_use_token_scaling", "acts only with liger_fused_linear_cross_entropy"))
    if cfg.liger_glu_activation is not None and cfg.liger_swiglu is not None \
            and cfg.liger_glu_activation != cfg.liger_swiglu:
        problems.append(ConfigProblem("liger_swiglu", "liger_swiglu is the old name of liger_glu_activation and the "
                                      "two disagree; keep liger_glu_activation"))
    return problems or None


def liger_families() -> set[str] | None:
    """The model types Liger patches, read from its source without importing it (importing it imports torch,
    which ``gym validate`` never does); ``None`` when they cannot be read (then the model load checks)."""
    import ast
    from pathlib import Path

    spec = importlib.util.find_spec("liger_kernel")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(list(spec.submodule_search_locations)[0]) / "transformers" / "monkey_patch.py"
    try:
        tree = ast.parse(source.read_text())
    except (OSError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        else:
            target = getattr(node, "target", None)
        named = isinstance(target, ast.Name) and target.id == "MODEL_TYPE_TO_APPLY_LIGER_FN"
        if named and isinstance(node.value, ast.Dict):
            return {key.value for key in node.value.keys if isinstance(key, ast.Constant)}
    return None


def plan(cfg: Any, model_type: str) -> tuple[str, dict[str, bool], list[str]]:
    """(the Liger entry point's name, the arguments to give it, the asked-for keys it has no argument for).

    Raises :class:`ModelError` for a family Liger has no entry point for."""
    import inspect

    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    apply_fn = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply_fn is None:
        raise ModelError(
            f"{asked(cfg)[0]}: Liger has no kernels for the model family {model_type!r} (it patches "
            f"{', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}); remove the liger_* keys"
        )
    params = [name for name in inspect.signature(apply_fn).parameters if name not in ("model", "kwargs")]
    arguments = {name: False for name in params}  # every kernel off unless asked: Liger's defaults turn some on
    missing = []
    for key in asked(cfg):
        found = next((name for name in KERNELS[key] if name in arguments), None)
        if found is None:
            missing.append(key)
        else:
            arguments[found] = True
    return apply_fn.__name__, arguments, missing


def apply(model: Any, cfg: Any) -> tuple[str, dict[str, bool], list[str]]:
    """Patch ``model`` (and its family's transformers module, as Liger does) with the planned kernels."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    name, arguments, missing = plan(cfg, model.config.model_type)
    MODEL_TYPE_TO_APPLY_LIGER_FN[model.config.model_type](model=model, **arguments)
    return name, arguments, missing


def gpu_available(cfg: Any) -> bool:
    import torch

    return torch.cuda.is_available() and not cfg.use_cpu and importlib.util.find_spec("triton") is not None


@hookimpl
def gym_after_model_load(cfg, model):
    keys = asked(cfg)
    if not keys:
        return
    from gym.api import say

    model_type = getattr(model.config, "model_type", None)
    name, arguments, missing = plan(cfg, model_type)  # an unsupported family is an error everywhere
    if missing:
        say(f"note: Liger's {name} has no kernel for {', '.join(missing)}; not applied")
    applied = [key for key in keys if key not in missing]
    if not applied:
        return
    if not gpu_available(cfg):
        say(f"note: Liger kernels need a CUDA GPU with Triton; not applied here: {', '.join(applied)}. Training "
            "continues on the model's standard modules (same math, without Liger's speed and memory savings)")
        return
    apply(model, cfg)
    say(f"liger: {name}({', '.join(k for k, v in arguments.items() if v)}) applied to the {model_type} model")
