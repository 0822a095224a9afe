"""FSDP2: the model's parameters, gradients and optimizer state sharded across the processes of a run.

::

    fsdp_version: 2
    fsdp_config:
      auto_wrap_policy: TRANSFORMER_BASED_WRAP
      transformer_layer_cls_to_wrap: LlamaDecoderLayer
      state_dict_type: FULL_STATE_DICT        # or SHARDED_STATE_DICT for the checkpoints
      reshard_after_forward: true

    gym run config.yml --nproc-per-node 2

The config is mapped onto transformers' ``fsdp`` / ``fsdp_config`` training arguments (FSDP version 2), so
accelerate applies ``torch.distributed.fsdp.fully_shard`` to each wrapped layer and to the root. Axolotl's
spellings are accepted: the ``fsdp_`` prefixed keys inside ``fsdp_config``, the legacy ``fsdp:`` list
(``full_shard``, ``shard_grad_op``, ``offload``, ``auto_wrap``) and ``fsdp_version: 1`` (run as FSDP2, said).

On a CPU, accelerate only turns FSDP on for accelerator devices and would quietly train with DDP (every process
holding the whole model). gym makes accelerate's own FSDP2 path run there too (:func:`shard_on_cpu`), checks
at the first step that the model really is sharded (an error otherwise) and prints how many parameters each
process holds. The final model is gathered into one plain Hugging Face checkpoint whatever
``state_dict_type`` the checkpoints use.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import model_validator

from gym.api import ConfigProblem, Field, GymError, StrictConfig, hookimpl, process_count, say

StateDictType = Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT", "LOCAL_STATE_DICT"]

#: The legacy ``fsdp:`` list: item -> what it sets (``None``: refused, with the reason in ``_LEGACY_REFUSED``).
_LEGACY_ITEMS = ("full_shard", "shard_grad_op", "offload", "auto_wrap", "no_shard", "hybrid_shard",
                 "hybrid_shard_zero2")
_LEGACY_REFUSED = {
    "no_shard": "shards nothing (that is DDP, gym's default with several processes): leave fsdp out",
    "hybrid_shard": "FSDP1's hybrid sharding needs a 2-D device mesh, which gym does not set up; use full_shard",
    "hybrid_shard_zero2": "FSDP1's hybrid sharding needs a 2-D device mesh, which gym does not set up; use "
                          "shard_grad_op",
}
#: ``sharding_strategy`` (FSDP1) -> FSDP2's ``reshard_after_forward``.
_STRATEGIES = {"FULL_SHARD": True, "SHARD_GRAD_OP": False}
_STRATEGY_REFUSED = {
    "NO_SHARD": _LEGACY_REFUSED["no_shard"],
    "HYBRID_SHARD": _LEGACY_REFUSED["hybrid_shard"],
    "_HYBRID_SHARD_ZERO2": _LEGACY_REFUSED["hybrid_shard_zero2"],
    "HYBRID_SHARD_ZERO2": _LEGACY_REFUSED["hybrid_shard_zero2"],
}
#: FSDP1 settings FSDP2 has no switch for: key -> (the value FSDP2 always behaves as, why).
_FSDP1_ONLY = {
    "use_orig_params": (True, "FSDP2 always keeps the original parameters (one DTensor each)"),
    "sync_module_states": (True, "with FSDP2 every process starts from the same weights (each loads the same "
                                 "checkpoint, or rank 0 broadcasts them with cpu_ram_efficient_loading)"),
    "limit_all_gathers": (True, "FSDP2 always limits its all-gathers in flight"),
}
FINAL_ONLY_FULL = ("gym always writes the final model gathered (FULL_STATE_DICT) so that it loads in transformers; "
                   "set fsdp_config.state_dict_type: SHARDED_STATE_DICT for sharded checkpoints instead")


class FsdpOptions(StrictConfig):
    """``fsdp_config``: FSDP2's settings (Axolotl's names; the ``fsdp_`` prefixed spellings are accepted too)."""

    fsdp_version: Literal[1, 2] | None = Field(None, description="As the top-level fsdp_version.")
    offload_params: bool | None = Field(
        None, description="Keep the sharded parameters, gradients and optimizer state in CPU memory between uses "
        "(FSDP2's CPUOffloadPolicy); on a CPU they are there already."
    )
    state_dict_type: StateDictType | None = Field(
        None, description="How checkpoints store the model: FULL_STATE_DICT (default: one gathered copy) or "
        "SHARDED_STATE_DICT (each process writes its shard, torch.distributed.checkpoint). The final model in "
        "output_dir is always gathered. LOCAL_STATE_DICT (FSDP1) is refused."
    )
    final_state_dict_type: StateDictType | None = Field(
        None, description="Accepted as FULL_STATE_DICT only: the final model is always gathered."
    )
    auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"] | None = Field(
        None, description="Which modules become their own FSDP unit (sharded and gathered on their own): "
        "TRANSFORMER_BASED_WRAP (default: each decoder layer), SIZE_BASED_WRAP (modules over min_num_params), or "
        "NO_WRAP (the whole model as one unit)."
    )
    transformer_layer_cls_to_wrap: Union[str, list[str], None] = Field(
        None, description="Layer class names to wrap with TRANSFORMER_BASED_WRAP (`LlamaDecoderLayer`; several "
        "as a list or comma-separated). Default: the model's own `_no_split_modules`."
    )
    min_num_params: int | None = Field(
        None, gt=0, description="With SIZE_BASED_WRAP: the parameter count from which a module is wrapped."
    )
    reshard_after_forward: bool | None = Field(
        None, description="Free each unit's gathered parameters after its forward pass (default true: least "
        "memory; false keeps them until the backward pass, like ZeRO-2 / SHARD_GRAD_OP)."
    )
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2",
                               "HYBRID_SHARD_ZERO2"] | None = Field(
        None, description="FSDP1's name for reshard_after_forward: FULL_SHARD (true) or SHARD_GRAD_OP (false); the "
        "others are refused."
    )
    cpu_ram_efficient_loading: bool | None = Field(
        None, description="Only rank 0 keeps the loaded weights; the others get them by broadcast as the model "
        "is sharded."
    )
    activation_checkpointing: bool | None = Field(
        None, description="FSDP's own activation checkpointing of each wrapped layer (recompute activations in "
        "the backward pass). With gradient_checkpointing too, this one is used (said)."
    )
    cpu_offload_pin_memory: bool | None = Field(
        None, description="Accepted as true only (FSDP2's offload always pins its CPU memory here)."
    )
    mixed_precision_policy: str | None = Field(
        None, description="Refused: FSDP2's mixed precision follows bf16 / fp16."
    )
    use_orig_params: bool | None = Field(
        None, description="FSDP1 setting, accepted: FSDP2 always keeps the original parameters (said)."
    )
    sync_module_states: bool | None = Field(
        None, description="FSDP1 setting, accepted as true: FSDP2 starts every process from the same weights."
    )
    limit_all_gathers: bool | None = Field(
        None, description="FSDP1 setting, accepted: FSDP2 always limits its all-gathers in flight (said)."
    )

    @model_validator(mode="before")
    @classmethod
    def _axolotl_prefix(cls, data: Any) -> Any:
        """``fsdp_offload_params`` -> ``offload_params`` (the prefix Axolotl's older configs and accelerate's
        files carry); one key given both ways with different values is an error."""
        if not isinstance(data, dict):
            return data
        plain: dict[str, Any] = {}
        for key, value in data.items():
            name = key[5:] if isinstance(key, str) and key.startswith("fsdp_") and key != "fsdp_version" else key
            if name in plain and plain[name] != value:
                raise ValueError(f"{name} is given twice (as {name} and fsdp_{name}) with different values")
            plain[name] = value
        return plain


class FsdpSettings(StrictConfig):
    """Keys of the fsdp plugin."""

    fsdp_version: Literal[1, 2] | None = Field(
        None, description="FSDP version: 2 (FSDP2, torch's fully_shard). 1 is accepted and run as FSDP2 (said): "
        "transformers deprecated FSDP1."
    )
    fsdp_config: FsdpOptions | None = Field(
        None, description="Shard the model across the processes of the run with FSDP2 (see docs/distributed.md): "
        "offload_params, state_dict_type, auto_wrap_policy, transformer_layer_cls_to_wrap, reshard_after_forward, "
        "cpu_ram_efficient_loading, activation_checkpointing, ..."
    )
    fsdp: Union[list[str], str, None] = Field(
        None, description="Legacy switch for FSDP: a list of full_shard / shard_grad_op / offload / auto_wrap "
        "(or one space-separated string). Prefer fsdp_config."
    )
    fsdp_final_state_dict_type: StateDictType | None = Field(
        None, description="Accepted as FULL_STATE_DICT only: the final model in output_dir is always gathered."
    )


@hookimpl
def gym_config_schema():
    return FsdpSettings


# ---------------------------------------------------------------------------------------- validation


def asked(cfg: Any) -> bool:
    """Whether the config asks for FSDP."""
    return bool(cfg.fsdp_config is not None or legacy_items(cfg) or cfg.fsdp_version is not None)


def legacy_items(cfg: Any) -> list[str]:
    value = cfg.fsdp
    if value is None:
        return []
    return value.split() if isinstance(value, str) else [str(item) for item in value]


@hookimpl
def gym_validate_config(cfg):
    if not asked(cfg):
        return None
    options = cfg.fsdp_config or FsdpOptions()
    problems: list[ConfigProblem] = []

    def problem(field: str, message: str) -> None:
        problems.append(ConfigProblem(field, message))

    if cfg.fsdp_version and options.fsdp_version and cfg.fsdp_version != options.fsdp_version:
        problem("fsdp_config.fsdp_version", f"says {options.fsdp_version} but fsdp_version says {cfg.fsdp_version}")
    for item in legacy_items(cfg):
        if item not in _LEGACY_ITEMS:
            problem("fsdp", f"unknown item {item!r}; one of: full_shard, shard_grad_op, offload, auto_wrap")
        elif item in _LEGACY_REFUSED:
            problem("fsdp", f"{item}: {_LEGACY_REFUSED[item]}")
    if options.sharding_strategy in _STRATEGY_REFUSED:
        problem("fsdp_config.sharding_strategy", f"{options.sharding_strategy}: "
                f"{_STRATEGY_REFUSED[options.sharding_strategy]}")
    if not problems:
        try:
            reshard_after_forward(cfg)
        except ValueError as exc:
            problem("fsdp_config.reshard_after_forward", str(exc))
    if options.state_dict_type == "LOCAL_STATE_DICT":
        problem("fsdp_config.state_dict_type", "LOCAL_STATE_DICT is FSDP1's; use FULL_STATE_DICT or SHARDED_STATE_DICT")
    for field, value in (("fsdp_final_state_dict_type", cfg.fsdp_final_state_dict_type),
                         ("fsdp_config.final_state_dict_type", options.final_state_dict_type)):
        if value not in (None, "FULL_STATE_DICT"):
            problem(field, f"{value}: {FINAL_ONLY_FULL}")
    policy = options.auto_wrap_policy or "TRANSFORMER_BASED_WRAP"
    if policy == "SIZE_BASED_WRAP" and options.min_num_params is None:
        problem("fsdp_config.min_num_params", "SIZE_BASED_WRAP needs min_num_params (the size from which a module "
                "is wrapped)")
    if policy != "SIZE_BASED_WRAP" and options.min_num_params is not None:
        problem("fsdp_config.min_num_params", f"has no effect with auto_wrap_policy {policy}; it is for SIZE_BASED_WRAP")
    if policy != "TRANSFORMER_BASED_WRAP" and options.transformer_layer_cls_to_wrap:
        problem("fsdp_config.transformer_layer_cls_to_wrap",
                f"has no effect with auto_wrap_policy {policy}; it is for TRANSFORMER_BASED_WRAP")
    if options.cpu_offload_pin_memory is False:
        problem("fsdp_config.cpu_offload_pin_memory", "false cannot be passed to FSDP2 here (its offload pins the CPU "
                "memory); leave it out")
    if options.mixed_precision_policy is not None:
        problem("fsdp_config.mixed_precision_policy", "FSDP2's mixed precision follows bf16 / fp16 (parameters kept "
                "in float32, computed in the 16-bit type); set those instead")
    if options.sync_module_states is False:
        problem("fsdp_config.sync_module_states", f"false cannot be honoured: {_FSDP1_ONLY['sync_module_states'][1]}")
    if getattr(cfg, "deepspeed", None):
        problem("fsdp_config" if cfg.fsdp_config is not None else "fsdp",
                "FSDP and DeepSpeed both shard the model; use one of them (remove deepspeed or the fsdp keys)")
    if getattr(cfg, "load_in_8bit", False):
        problem("load_in_8bit", "8-bit weights (bitsandbytes Int8Params) cannot be sharded by FSDP2; use "
                "load_in_4bit (QLoRA, on GPUs) or 16-bit LoRA with FSDP, or 8-bit with DDP (no fsdp keys)")
    return problems


def reshard_after_forward(cfg: Any) -> bool | None:
    """FSDP2's ``reshard_after_forward`` from whichever of its three spellings the config uses; ``ValueError``
    when two of them disagree."""
    options = cfg.fsdp_config or FsdpOptions()
    said: dict[str, bool] = {}
    if options.reshard_after_forward is not None:
        said["fsdp_config.reshard_after_forward"] = options.reshard_after_forward
    if options.sharding_strategy in _STRATEGIES:
        said[f"fsdp_config.sharding_strategy {options.sharding_strategy}"] = _STRATEGIES[options.sharding_strategy]
    for item in legacy_items(cfg):
        if item in ("full_shard", "shard_grad_op"):
            said[f"fsdp: {item}"] = item == "full_shard"
    if len(set(said.values())) > 1:
        raise ValueError("the settings disagree: " + ", ".join(f"{k} ({'true' if v else 'false'})" for k, v in
                                                               said.items()))
    return next(iter(said.values()), None)


def offload_params(cfg: Any) -> bool:
    options = cfg.fsdp_config or FsdpOptions()
    return bool(options.offload_params or "offload" in legacy_items(cfg))


# -------------------------------------------------------------------------------------------- mapping


def transformers_fsdp_config(cfg: Any) -> dict[str, Any]:
    """The ``fsdp_config`` training argument (transformers' names) for this config: FSDP version 2 always."""
    options = cfg.fsdp_config or FsdpOptions()
    config: dict[str, Any] = {
        "version": 2,
        "auto_wrap_policy": options.auto_wrap_policy or "TRANSFORMER_BASED_WRAP",
        "state_dict_type": options.state_dict_type or "FULL_STATE_DICT",
        "reshard_after_forward": reshard_after_forward(cfg) is not False,
        "cpu_ram_efficient_loading": bool(options.cpu_ram_efficient_loading),
        "activation_checkpointing": bool(options.activation_checkpointing),
    }
    if offload_params(cfg):
        config["cpu_offload"] = True  # transformers' name for offload_params
    layers = options.transformer_layer_cls_to_wrap
    if layers:
        names = layers.split(",") if isinstance(layers, str) else layers
        config["transformer_layer_cls_to_wrap"] = [name.strip() for name in names if name.strip()]
    if options.min_num_params is not None:
        config["min_num_params"] = options.min_num_params
    return config


def run_notes(cfg: Any) -> list[str]:
    """What the run does differently from what some keys literally say: said once at the start, never silent."""
    options = cfg.fsdp_config or FsdpOptions()
    notes = []
    if 1 in (cfg.fsdp_version, options.fsdp_version):
        notes.append("fsdp_version 1: transformers deprecated FSDP1; training with FSDP2 (fully_shard), the settings "
                     "mapped onto it")
    for key, (value, why) in _FSDP1_ONLY.items():
        if getattr(options, key) is not None:
            notes.append(f"fsdp_config.{key}: {why}" + ("" if getattr(options, key) == value else
                                                         f"; {key}: {str(getattr(options, key)).lower()} changes nothing"))
    if options.activation_checkpointing and getattr(cfg, "adapter", None):
        notes.append("fsdp_config.activation_checkpointing with an adapter: the model's own gradient checkpointing "
                     "recomputes the activations (FSDP's wrappers would hide the adapter's weights from PEFT's save)")
    elif options.activation_checkpointing and cfg.gradient_checkpointing:
        notes.append("gradient_checkpointing and fsdp_config.activation_checkpointing ask for the same thing; FSDP's own "
                     "(checkpointing each wrapped layer) is used")
    if options.state_dict_type == "SHARDED_STATE_DICT":
        notes.append("checkpoints are sharded (each process writes its part); the final model is gathered into one")
    return notes


def cpu_problem(cfg: Any) -> str | None:
    """Why this FSDP config cannot run on a CPU, or ``None``."""
    if getattr(cfg, "load_in_4bit", False) or getattr(cfg, "adapter", None) == "qlora":
        return ("QLoRA's 4-bit weights are sharded by FSDP2 only on GPUs; on a CPU use LoRA on 16/32-bit weights "
                "with FSDP, or QLoRA with DDP (no fsdp keys)")
    return None


@hookimpl
def gym_launch(cfg):
    """Refuse what cannot run on this hardware before any process starts or any data is prepared."""
    if asked(cfg):
        check_hardware(cfg)
    return None


def on_gpu(cfg: Any) -> bool:
    """Whether this run trains on CUDA GPUs (as gym's precision settings decide: ``use_cpu``, what is there)."""
    from gym.api import resolve_precision

    return resolve_precision(cfg, quiet=True).cuda


def check_hardware(cfg: Any) -> None:
    from gym.api import ConfigError

    if not on_gpu(cfg):
        problem = cpu_problem(cfg)
        if problem:
            raise ConfigError(f"fsdp_config: {problem}")


@hookimpl
def gym_training_arguments(cfg):
    if not asked(cfg):
        return None
    check_hardware(cfg)
    for note in run_notes(cfg):
        say(f"note: {note}")
    if process_count() < 2:
        say("note: fsdp: this run has one process, so there is nothing to shard it across: training unsharded; "
            "start several (gym run CONFIG --nproc-per-node N) to shard")
        if (cfg.fsdp_config or FsdpOptions()).activation_checkpointing:
            return {"activation_checkpointing": True,
                    "activation_checkpointing_kwargs": dict(cfg.gradient_checkpointing_kwargs or {"use_reentrant": False})}
        return None
    config = transformers_fsdp_config(cfg)
    if not on_gpu(cfg):
        shard_on_cpu()
        if config.pop("cpu_offload", False):  # torch's offload pins memory, which needs an accelerator
            say("note: fsdp_config.offload_params: on a CPU the parameters are in CPU memory already; nothing to "
                "offload")
    arguments: dict[str, Any] = {"fsdp": True, "fsdp_config": config}
    if config["activation_checkpointing"]:
        if getattr(cfg, "adapter", None):
            # FSDP's checkpoint wrappers rename the modules, and PEFT then finds no adapter weights in the gathered
            # state dict (it saves an empty adapter): the model's own gradient checkpointing recomputes instead.
            config["activation_checkpointing"] = False
            arguments["activation_checkpointing"] = True
            arguments["activation_checkpointing_kwargs"] = dict(cfg.gradient_checkpointing_kwargs or
                                                                {"use_reentrant": False})
        else:
            arguments["activation_checkpointing"] = False  # FSDP's own does it (transformers refuses both)
    return arguments


def shard_on_cpu() -> None:
    """Let accelerate's FSDP2 path run on CPU processes (gloo).

    ``AcceleratorState`` turns FSDP on only for accelerator devices (``MULTI_GPU``, ``MULTI_XPU``, ...); on CPUs
    (``MULTI_CPU``) it drops the FSDP plugin and the Trainer wraps the model in DDP. torch's ``fully_shard``
    works with gloo, so gym keeps the plugin and reports ``DistributedType.FSDP`` there too: every later step
    (sharding in ``prepare``, gathered and sharded saving, resuming) is accelerate's own. The process-level
    ``PartialState`` keeps ``MULTI_CPU`` (its barriers must not name a device)."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "gym_fsdp_on_cpu", False):
        return

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type != DistributedType.MULTI_CPU:
            return
        if fsdp_plugin is not None and self.__dict__.get("fsdp_plugin") is None:
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
        if self.__dict__.get("fsdp_plugin") is not None:  # every AcceleratorState() copies MULTI_CPU back in
            self.distributed_type = DistributedType.FSDP

    init.gym_fsdp_on_cpu = True  # type: ignore[attr-defined]
    AcceleratorState.__init__ = init


@hookimpl
def gym_after_wrap_model(cfg, model):
    """The layer classes named for wrapping must be in this model (accelerate's own error comes mid-training)."""
    if not asked(cfg) or process_count() < 2:
        return
    config = transformers_fsdp_config(cfg)
    names = config.get("transformer_layer_cls_to_wrap")
    if not names or config["auto_wrap_policy"] != "TRANSFORMER_BASED_WRAP":
        return
    present = {type(module).__name__ for module in model.modules()}
    missing = [name for name in names if name not in present]
    if missing:
        from gym.api import ModelError

        layers = sorted(name for name in present if name.endswith(("Layer", "Block")))
        raise ModelError(f"fsdp_config.transformer_layer_cls_to_wrap: {', '.join(missing)} is not a module of this model "
                         f"(its layer classes: {', '.join(layers) or 'none found'}); name one of those, or leave the "
                         "key out to wrap the model's own decoder layers")


# ------------------------------------------------------------------------------------------ callbacks


@hookimpl
def gym_callbacks(cfg):
    if not asked(cfg) or process_count() < 2:
        return None
    return [shard_callback()]


def parameters_held(model: Any) -> tuple[int, int]:
    """(parameters this process holds, parameters of the whole model): a DTensor counts its local shard."""
    from torch.distributed.tensor import DTensor

    held = total = 0
    for parameter in model.parameters():
        total += parameter.numel()  # a DTensor's numel is the full tensor's
        held += parameter.to_local().numel() if isinstance(parameter, DTensor) else parameter.numel()
    return held, total


def held_line(counts: list[int], total: int) -> str:
    shares = ", ".join(f"rank {rank} {count:,} of {total:,} ({100 * count / total:.1f}%)"
                       for rank, count in enumerate(counts))
    return f"parameters held per process (FSDP2): {shares}"


def shard_callback():
    """A ``TrainerCallback`` that checks at the start of training that the model is sharded (FSDP2 modules, not
    DDP), prints the parameters each process holds, and has the final model gathered whatever the checkpoints'
    ``state_dict_type``."""
    from transformers import TrainerCallback

    class FsdpShards(TrainerCallback):
        gym_metrics: dict[str, Any] = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            import torch.distributed as dist
            from torch.distributed.fsdp import FSDPModule

            if model is None or not any(isinstance(m, FSDPModule) for m in model.modules()):
                raise GymError("fsdp: the model was not sharded (accelerate prepared it without FSDP, which would "
                               "train every process on a whole copy, as DDP); stopping instead of training unsharded")
            held, total = parameters_held(model)
            counts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(counts, held)
            say(held_line(counts, total))
            self.gym_metrics = {"fsdp_parameters_total": total, "fsdp_parameters_held_max": max(counts)}

        def on_train_end(self, args, state, control, **kwargs):
            from accelerate.state import AcceleratorState

            plugin = getattr(AcceleratorState(), "fsdp_plugin", None)
            if plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
                plugin.set_state_dict_type("FULL_STATE_DICT")  # the model in output_dir: one gathered copy

    return FsdpShards()
