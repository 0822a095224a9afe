"""Memory and compilation settings around the training step.

::

    activation_offloading: true        # on a GPU: activations saved for the backward pass wait in CPU memory
    torch_compile: true                # (a core key)
    torch_compile_backend: inductor
    torch_compile_mode: max-autotune
    torch_compile_options: {coordinate_descent_tuning: true}   # torch._inductor.config flags

``gradient_checkpointing`` and ``gradient_checkpointing_kwargs`` are core keys (see docs/kernels.md for what they
save; ``bench/gradient_checkpointing.py`` measures it).

``activation_offloading: true`` wraps the forward pass of the model the trainer gets in
``torch.autograd.graph.save_on_cpu(pin_memory=True)``: every tensor autograd saves for the backward pass is
copied to (pinned) CPU memory as it is saved and back to the GPU when the backward pass needs it, so the GPU
holds the parameters, the optimizer state and one layer's working set instead of every layer's activations
(slower: each activation crosses the PCIe bus twice). With gradient checkpointing only the checkpoints are
saved, so the two combine. On a machine without a GPU the activations are already in CPU memory: a note says
there is nothing to offload to and the run goes on unchanged.

``torch_compile_backend`` / ``torch_compile_mode`` are passed to the trainer's arguments; they act only when the
model is compiled (``torch_compile: true``, or ``auto`` on a GPU), and setting them otherwise is a validate
error rather than a silent no-op. ``torch_compile_options`` sets ``torch._inductor.config`` flags before the
model is built; a flag inductor does not have is an error naming it.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import Field

from gym.api import ConfigError, ConfigProblem, StrictConfig, hookimpl


class MemoryConfig(StrictConfig):
    """Keys of the memory plugin."""

    activation_offloading: Union[bool, Literal["legacy"], None] = Field(
        None,
        description="Keep the activations saved for the backward pass in CPU memory (a GPU feature; on a CPU a "
        "note says there is nothing to offload to). `legacy` is read as true.",
    )
    torch_compile_backend: str | None = Field(
        None, description="torch.compile backend (inductor, aot_eager, ...), with torch_compile: true."
    )
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = (
        Field(None, description="torch.compile mode, with torch_compile: true.")
    )
    torch_compile_options: dict[str, Union[bool, int, float, str]] | None = Field(
        None, description="torch._inductor.config flags set before compiling, e.g. {coordinate_descent_tuning: true}."
    )


@hookimpl
def gym_config_schema():
    return MemoryConfig


def compiles(cfg: Any) -> bool | None:
    """Whether the model will be compiled: True, False, or None for ``auto`` (decided by the hardware)."""
    if cfg.torch_compile is True:
        return True
    return None if cfg.torch_compile == "auto" else False


@hookimpl
def gym_validate_config(cfg):
    problems = []
    if compiles(cfg) is False:
        for key in ("torch_compile_backend", "torch_compile_mode", "torch_compile_options"):
            if getattr(cfg, key) is not None:
                problems.append(ConfigProblem(key, "acts only when the model is compiled; set torch_compile: true"))
    return problems or None


def _on_gpu(cfg: Any) -> bool:
    import torch

    return torch.cuda.is_available() and not cfg.use_cpu


@hookimpl
def gym_training_arguments(cfg):
    if compiles(cfg) is False or (compiles(cfg) is None and not _on_gpu(cfg)):
        return None  # not compiled here (auto on a CPU): passing these would make transformers compile
    values = {}
    if cfg.torch_compile_backend:
        values["torch_compile_backend"] = cfg.torch_compile_backend
    if cfg.torch_compile_mode:
        values["torch_compile_mode"] = cfg.torch_compile_mode
    return values or None


@hookimpl
def gym_before_model_load(cfg):
    if not cfg.torch_compile_options:
        return
    from torch._inductor import config as inductor_config

    for flag, value in cfg.torch_compile_options.items():
        if not hasattr(inductor_config, flag):
            raise ConfigError(f"torch_compile_options.{flag}: torch._inductor.config has no flag {flag!r}")
        setattr(inductor_config, flag, value)


def offload_activations(model: Any) -> None:
    """Run ``model``'s forward pass (this instance) under ``save_on_cpu``: what autograd saves goes to CPU memory.

    The pack hook is chosen when a tensor is saved, in the forward pass; the backward pass unpacks with it, so
    wrapping the forward alone is enough."""
    import functools

    import torch

    forward = model.forward

    @functools.wraps(forward)
    def offloaded(*args, **kwargs):
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
            return forward(*args, **kwargs)

    model.forward = offloaded


@hookimpl
def gym_after_wrap_model(cfg, model):
    if not cfg.activation_offloading:
        return
    from gym.api import say

    if not _on_gpu(cfg):
        say("note: activation_offloading: the model trains on the CPU, so its activations are already in CPU memory; "
            "there is nothing to offload to (unchanged)")
        return
    offload_activations(model)
    say("activation_offloading: activations saved for the backward pass are kept in pinned CPU memory")
