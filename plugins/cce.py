"""Cut Cross Entropy: ``cut_cross_entropy: true`` computes the training loss without the standard loss's logits.

The loss of a causal language model is ``cross_entropy(hidden @ lm_head.weight.T, labels)``: the logits
matrix (tokens x vocabulary) is the largest tensor of a run with a large vocabulary. With this key the model's
``forward`` is replaced, on the loaded model only, by one that runs the decoder, then hands the hidden states,
the output head's weight and the labels to ``cut_cross_entropy.linear_cross_entropy``:

- on a GPU its ``cce`` implementation (Triton kernels: logits are computed block by block in on-chip memory and
  never stored, in the forward or the backward pass);
- on a CPU (no Triton GPU) its ``torch_compile`` implementation: the product and the loss are one compiled
  graph over the tokens that carry a label only (prompt and padding tokens are dropped first). That graph still
  makes one ``tokens x vocabulary`` product, but none of the copies the standard loss adds (the float upcast,
  the log-softmax, the logits' gradient): ``bench/cce_memory.py`` measures 1.3x one logits matrix at the peak
  against 3x for the standard loss. The first step compiles (seconds to tens of seconds on a small CPU).

The loss is the same number transformers computes (mean over the tokens that carry a label, or the sum over
``num_items_in_batch`` when the trainer passes it). Calls without ``labels`` (generation, ``gym chat``) use
the model's own forward, with logits. Supported model families are the decoder-only ``*ForCausalLM`` models
listed in :data:`FAMILIES` (their output head is a plain linear layer; Gemma 2/3 logit soft-capping and
Cohere/Granite logit scaling are applied); any other family is an error before training, naming it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from pydantic import Field

from gym.api import ConfigProblem, ModelError, StrictConfig, hookimpl

# model_type -> how its output head turns hidden states into logits: (softcap attribute, scale attribute, divide)
FAMILIES: dict[str, tuple[str | None, str | None, bool]] = {
    "llama": (None, None, False),
    "mistral": (None, None, False),
    "qwen2": (None, None, False),
    "qwen3": (None, None, False),
    "gemma": (None, None, False),
    "gemma2": ("final_logit_softcapping", None, False),
    "gemma3_text": ("final_logit_softcapping", None, False),
    "phi3": (None, None, False),
    "olmo": (None, None, False),
    "olmo2": (None, None, False),
    "smollm3": (None, None, False),
    "starcoder2": (None, None, False),
    "cohere": (None, "logit_scale", False),
    "granite": (None, "logits_scaling", True),
    # mixture-of-experts families: the same head; refused when the router's auxiliary loss is asked for
    "mixtral": (None, None, False),
    "qwen2_moe": (None, None, False),
    "qwen3_moe": (None, None, False),
}


class CutCrossEntropyConfig(StrictConfig):
    """Keys of the cut_cross_entropy plugin."""

    cut_cross_entropy: bool | None = Field(
        None,
        description="Compute the training loss with Cut Cross Entropy (cut-cross-entropy package, extra `cce`): on a "
        "GPU its Triton kernels never materialise the logits; on a CPU a torch.compile graph keeps one product "
        "instead of the standard loss's three logits-sized tensors. Unset: on when `plugins:` lists Axolotl's "
        "CutCrossEntropyPlugin (as in Axolotl), else off.",
    )


@hookimpl
def gym_config_schema():
    return CutCrossEntropyConfig


AXOLOTL_PLUGIN = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"


def enabled(cfg: Any) -> bool:
    """``cut_cross_entropy: true``, or unset with Axolotl's plugin listed in ``plugins:`` (Axolotl's default)."""
    value = getattr(cfg, "cut_cross_entropy", None)
    if value is not None:
        return bool(value)
    return AXOLOTL_PLUGIN in (getattr(cfg, "plugins", None) or ())


def local_model_type(cfg: Any) -> str | None:
    """The ``model_type`` of a base model whose config.json is on disk (a local folder or a built-in model),
    read without transformers; ``None`` when it cannot be known before loading."""
    source = cfg.base_model_config or cfg.base_model
    if str(source).startswith("builtin:"):
        return "llama"  # gym's generated test models are Llamas
    path = Path(str(source)).expanduser() / "config.json"
    try:
        return json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def family_problem(model_type: str | None) -> str | None:
    if model_type is None or model_type in FAMILIES:
        return None
    return (f"the model family {model_type!r} is not supported by gym's Cut Cross Entropy patch (supported: "
            f"{', '.join(sorted(FAMILIES))}); remove cut_cross_entropy")


@hookimpl
def gym_validate_config(cfg):
    if not enabled(cfg):
        return None
    if importlib.util.find_spec("cut_cross_entropy") is None:
        return [ConfigProblem("cut_cross_entropy", "needs the cut-cross-entropy package: pip install 'gym-llm[cce]'")]
    problem = family_problem(local_model_type(cfg))
    return [ConfigProblem("cut_cross_entropy", problem)] if problem else None


def implementation(device_type: str) -> str:
    """``cce`` (Triton kernels) on a CUDA GPU with Triton, else ``torch_compile``."""
    if device_type == "cuda" and importlib.util.find_spec("triton") is not None:
        return "cce"
    return "torch_compile"


def patch_model(model: Any) -> str:
    """Replace ``model.forward`` (this instance only) with the Cut Cross Entropy one; returns the family.

    Raises :class:`ModelError` for a model it cannot patch."""
    import types

    model_type = getattr(model.config, "model_type", None)
    problem = family_problem(model_type)
    head = getattr(model, "lm_head", None)
    if problem is None and (getattr(model, "model", None) is None or head is None):
        problem = f"{type(model).__name__} has no `model` decoder and `lm_head` output layer to patch"
    if problem is None and getattr(head, "bias", None) is not None:
        problem = f"{type(model).__name__}'s output head has a bias, which Cut Cross Entropy does not take"
    if problem is None and getattr(model.config, "output_router_logits", False):
        problem = ("the router's auxiliary loss (output_router_logits: true in the model config) is not computed by "
                   "gym's Cut Cross Entropy patch; set model_config_overrides: {output_router_logits: false}")
    if problem:
        raise ModelError(f"cut_cross_entropy: {problem}")
    softcap_key, scale_key, divide = FAMILIES[model_type]
    model._gym_original_forward = model.forward
    model.forward = types.MethodType(_make_forward(softcap_key, scale_key, divide), model)
    return model_type


def _make_forward(softcap_key: str | None, scale_key: str | None, divide: bool):
    def forward(self, input_ids=None, labels=None, **kwargs):
        if labels is None:  # generation and evaluation without labels want the logits
            return self._gym_original_forward(input_ids=input_ids, **kwargs)
        from cut_cross_entropy import linear_cross_entropy
        from transformers.modeling_outputs import CausalLMOutputWithPast

        num_items = kwargs.pop("num_items_in_batch", None)
        kwargs.pop("logits_to_keep", None)  # the loss covers every position
        outputs = self.model(input_ids=input_ids, **kwargs)
        hidden = outputs.last_hidden_state
        if scale_key is not None:  # logits = (h @ W^T) * s  ==  (h * s) @ W^T
            scale = getattr(self.config, scale_key)
            hidden = hidden / scale if divide else hidden * scale
        softcap = getattr(self.config, softcap_key, None) if softcap_key else None
        loss = linear_cross_entropy(
            hidden, self.lm_head.weight, labels.to(hidden.device), shift=True, softcap=softcap,
            reduction="sum" if num_items is not None else "mean", impl=implementation(hidden.device.type),
        )
        if num_items is not None:
            loss = loss / (num_items.to(loss.device) if hasattr(num_items, "to") else num_items)
        return CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=getattr(outputs, "hidden_states", None),
                                      attentions=getattr(outputs, "attentions", None))

    return forward


@hookimpl
def gym_after_model_load(cfg, model):
    if not enabled(cfg):
        return
    from gym.api import say

    family = patch_model(model)
    device = next(model.parameters()).device.type
    import torch

    if device == "cpu" and torch.cuda.is_available() and not getattr(cfg, "use_cpu", False):
        device = "cuda"  # the trainer moves the model to the GPU after this hook
    say(f"cut_cross_entropy: the {family} model's loss is computed by Cut Cross Entropy "
        f"({implementation(device)} implementation)")
