"""DeepSpeed ZeRO through transformers' own integration (``TrainingArguments(deepspeed=...)``).

::

    deepspeed: zero2                                   # a built-in preset
    deepspeed: deepspeed_configs/zero3_bf16.json       # a JSON file (relative to the config's folder or the
                                                       # working directory); Axolotl's file names that are not
                                                       # files here fall back to gym's preset of that name

Every preset writes ``"auto"`` for the batch sizes, accumulation, gradient clipping and precision, so transformers
fills them from gym's keys (``micro_batch_size``, ``gradient_accumulation_steps``, ``max_grad_norm``, ``bf16`` /
``fp16``); the optimizer and the scheduler are gym's own (``optimizer``, ``lr_scheduler``, ``learning_rate``).
A JSON file's explicit number that disagrees with the config is a validation error. Under ZeRO-3 the run log says
how many parameters each process holds, and the final model is gathered into one plain Hugging Face model.

Nothing here imports torch or deepspeed until a run starts; ``gym validate`` only checks that deepspeed is
installed (``importlib.util.find_spec``).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any, Union

from pydantic import Field

from gym.api import ConfigError, ConfigProblem, StrictConfig, hookimpl, process_count

INSTALL_HINT = "pip install 'gym-llm[deepspeed]'"


def _quiet_unless_verbose(record: logging.LogRecord) -> bool:
    """DeepSpeed's logger sets its own level (INFO) when transformers imports it, which happens whenever deepspeed
    is installed; keep its notices out of the console unless ``gym --verbose`` left the root logger open."""
    return record.levelno >= logging.ERROR or logging.getLogger().level < logging.ERROR


logging.getLogger("DeepSpeed").addFilter(_quiet_unless_verbose)

# ------------------------------------------------------------------------------------------- presets

_COMMON: dict[str, Any] = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
    "zero_allow_untested_optimizer": True,  # gym's optimizer (the `optimizer` key), not one from DeepSpeed
    "wall_clock_breakdown": False,
}

GATHER_ON_SAVE = "stage3_gather_16bit_weights_on_model_save"
_STAGE3 = {
    "stage": 3,
    "overlap_comm": True,
    "contiguous_gradients": True,
    "reduce_bucket_size": "auto",
    "stage3_prefetch_bucket_size": "auto",
    "stage3_param_persistence_threshold": "auto",
    GATHER_ON_SAVE: True,  # the final model is one consolidated file set
}
_CPU = {"device": "cpu", "pin_memory": True}
# With offload, DeepSpeed would insist on its own compiled CPU Adam; gym's optimizer steps on the CPU instead.
_OFFLOAD_TORCH_OPTIMIZER = {"zero_force_ds_cpu_optimizer": False}

PRESETS: dict[str, dict[str, Any]] = {
    "zero1": {**_COMMON, "zero_optimization": {"stage": 1}},
    "zero2": {**_COMMON, "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                                                "reduce_bucket_size": "auto"}},
    "zero3": {**_COMMON, "zero_optimization": dict(_STAGE3)},
    "zero3_offload": {**_COMMON, **_OFFLOAD_TORCH_OPTIMIZER,
                      "zero_optimization": {**_STAGE3, "offload_optimizer": _CPU, "offload_param": _CPU}},
    "zero3_offload_params": {**_COMMON, **_OFFLOAD_TORCH_OPTIMIZER,
                             "zero_optimization": {**_STAGE3, "offload_param": _CPU}},
}

#: What each preset is for (the docs table and the error listing them).
PRESET_PURPOSE = {
    "zero1": "optimizer states split across processes; the model and gradients stay whole on each",
    "zero2": "optimizer states and gradients split; the usual first choice when the model fits one device",
    "zero3": "parameters split too: each process holds 1/N of the model (models that fit no single device)",
    "zero3_offload": "ZeRO-3 with parameters and optimizer states in CPU memory (slowest, least device memory)",
    "zero3_offload_params": "ZeRO-3 with the parameters in CPU memory, optimizer states on the device",
}

#: Axolotl's deepspeed_configs/*.json names -> gym's preset. Precision always follows bf16 / fp16 (the presets
#: say "auto"), so Axolotl's _bf16 variants are the same preset; torch_compile is gym's own key.
AXOLOTL_NAMES = {
    "zero1": "zero1",
    "zero1_torch_compile": "zero1",
    "zero2": "zero2",
    "zero2_torch_compile": "zero2",
    "zero3": "zero3",
    "zero3_bf16": "zero3",
    "zero3_bf16_cpuoffload_all": "zero3_offload",
    "zero3_bf16_cpuoffload_params": "zero3_offload_params",
}


def preset(name: str) -> dict[str, Any]:
    """A fresh copy of the built-in preset ``name``."""
    return copy.deepcopy(PRESETS[name])


# ------------------------------------------------------------------------------------------- keys


class DeepSpeedSettings(StrictConfig):
    """Keys of the deepspeed plugin."""

    deepspeed: Union[str, dict[str, Any], None] = Field(
        None,
        description="Train with DeepSpeed ZeRO: a built-in preset (zero1, zero2, zero3, zero3_offload, "
        "zero3_offload_params), a DeepSpeed JSON file (relative to the config's folder or the working directory; "
        "Axolotl's deepspeed_configs/<name>.json falls back to the preset of that name), or the config inline. "
        "\"auto\" values are filled from micro_batch_size, gradient_accumulation_steps, max_grad_norm, "
        "learning_rate and bf16/fp16. Needs gym-llm[deepspeed].",
    )
    deepcompile: bool | None = Field(
        None, description="DeepSpeed's compiler (DeepCompile); not supported by gym: only false or unset is accepted."
    )


@hookimpl
def gym_config_schema():
    return DeepSpeedSettings


# ----------------------------------------------------------------------------------- resolving the key


class Resolved:
    """What ``deepspeed:`` came to: the DeepSpeed config dict, where it came from, and a note to print."""

    def __init__(self, config: dict[str, Any], source: str, note: str | None = None):
        self.config = config
        self.source = source
        self.note = note

    @property
    def zero(self) -> dict[str, Any]:
        section = self.config.get("zero_optimization")
        return section if isinstance(section, dict) else {}

    @property
    def stage(self) -> int:
        stage = self.zero.get("stage", 0)
        return stage if isinstance(stage, int) and not isinstance(stage, bool) else 0


def _preset_list() -> str:
    return ", ".join(PRESETS)


def _candidates(cfg, value: str) -> list[Path]:
    from gym.api import config_folder

    path = Path(value).expanduser()
    if path.is_absolute():
        return [path]
    return list(dict.fromkeys([config_folder(cfg) / path, Path.cwd() / path]))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"deepspeed: cannot read {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"deepspeed: {path} is not valid JSON: line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"deepspeed: {path} holds a JSON {type(data).__name__}, not an object of DeepSpeed "
                          "settings")
    return data


def _variant_note(stem: str) -> str:
    """What an Axolotl file name promises that gym's preset leaves to gym's own keys."""
    if "torch_compile" in stem:
        return " (torch.compile follows gym's torch_compile key)"
    if "bf16" in stem:
        return " (precision follows gym's bf16 / fp16 keys)"
    return ""


#: What transformers fills from gym's config when the DeepSpeed config says "auto"; a file that leaves one out
#: gets "auto" (else DeepSpeed would quietly not clip, or train in another precision than gym's keys ask).
FILLED_FROM_GYM = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                   "gradient_clipping")


def with_gym_values(config: dict[str, Any]) -> dict[str, Any]:
    for key in FILLED_FROM_GYM:
        config.setdefault(key, "auto")
    for mode in ("bf16", "fp16"):
        section = config.setdefault(mode, {})
        if isinstance(section, dict):
            section.setdefault("enabled", "auto")
    return config


def resolve(cfg) -> Resolved | None:
    """The DeepSpeed config that ``deepspeed:`` names; a :class:`ConfigError` naming the key when it names none."""
    value = cfg.deepspeed
    if value is None:
        return None
    if isinstance(value, dict):
        return Resolved(with_gym_values(copy.deepcopy(value)), "the config (inline)")
    text = value.strip()
    if text in PRESETS:
        return Resolved(preset(text), f"gym's built-in preset {text}")
    for path in _candidates(cfg, text):
        if path.is_file():
            return Resolved(with_gym_values(_read_json(path)), str(path))
    stem = Path(text).name.removesuffix(".json")
    name = AXOLOTL_NAMES.get(stem) or (stem if stem in PRESETS else None)
    if name is not None:
        note = f"deepspeed: {text} is not a file here; using gym's built-in preset {name}"
        return Resolved(preset(name), f"gym's built-in preset {name}", note=note + _variant_note(stem))
    folders = " or ".join(str(p.parent) for p in _candidates(cfg, text))
    raise ConfigError(
        f"deepspeed: {text!r} is neither a built-in preset ({_preset_list()}) nor a file (looked in {folders}); "
        f"Axolotl's file names {', '.join(sorted(AXOLOTL_NAMES))} (.json) also name presets"
    )


# ------------------------------------------------------------------------------------------ validation

def _expected_values(cfg) -> list[tuple[str, str, Any]]:
    """(DeepSpeed key, gym key, gym's value) for the values transformers fills from gym's config."""
    return [
        ("train_micro_batch_size_per_gpu", "micro_batch_size", cfg.micro_batch_size),
        ("gradient_accumulation_steps", "gradient_accumulation_steps", cfg.gradient_accumulation_steps),
        ("gradient_clipping", "max_grad_norm", cfg.max_grad_norm if cfg.max_grad_norm is not None else 0.0),
        ("optimizer.params.lr", "learning_rate", cfg.learning_rate),
        ("optimizer.params.weight_decay", "weight_decay", cfg.weight_decay),
        ("scheduler.params.warmup_max_lr", "learning_rate", cfg.learning_rate),
    ]


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def mismatches(resolved: Resolved, cfg, world_size: int | None = None, precision: Any = None) -> list[str]:
    """The DeepSpeed values written as numbers (not "auto") that disagree with gym's config."""
    config, found = resolved.config, []
    for ds_key, gym_key, ours in _expected_values(cfg):
        theirs = _number(_lookup(config, ds_key))
        if theirs is not None and ours is not None and abs(theirs - float(ours)) > 1e-12 * max(1.0, abs(theirs)):
            said = "unset (0: no clipping)" if gym_key == "max_grad_norm" and cfg.max_grad_norm is None else ours
            found.append(f"{ds_key} is {_lookup(config, ds_key)} in the DeepSpeed config but {gym_key} is {said}")
    per_rank = cfg.micro_batch_size * cfg.gradient_accumulation_steps
    total = _number(config.get("train_batch_size"))
    if total is not None:
        if world_size is not None and total != per_rank * world_size:
            found.append(f"train_batch_size is {int(total)} in the DeepSpeed config but micro_batch_size x "
                         f"gradient_accumulation_steps x processes is {per_rank} x {world_size} = "
                         f"{per_rank * world_size}")
        elif world_size is None and total % per_rank:
            found.append(f"train_batch_size is {int(total)} in the DeepSpeed config, not a multiple of "
                         f"micro_batch_size x gradient_accumulation_steps = {per_rank}")
    for mode in ("bf16", "fp16"):
        enabled = _lookup(config, f"{mode}.enabled")
        if not isinstance(enabled, bool):
            continue
        ours = getattr(precision, mode) if precision is not None else getattr(cfg, mode)
        if isinstance(ours, bool) and ours != enabled:
            found.append(f"{mode}.enabled is {str(enabled).lower()} in the DeepSpeed config but {mode} is "
                         f"{str(ours).lower()} in gym's config" + (" (as resolved on this hardware)"
                                                                   if precision is not None else ""))
    return found


def _engine_problems(cfg, resolved: Resolved) -> list[ConfigProblem]:
    problems = []
    fsdp_keys = [key for key in ("fsdp", "fsdp_config", "fsdp_version") if getattr(cfg, key, None)]
    if fsdp_keys:
        problems.append(ConfigProblem("deepspeed", f"DeepSpeed and FSDP are two engines for the same job; set "
                                      f"deepspeed or {', '.join(fsdp_keys)}, not both"))
    if cfg.deepcompile:
        problems.append(ConfigProblem("deepcompile", "DeepSpeed's compiler is not supported by gym (it needs "
                                      "torch.compile on CUDA GPUs and a DeepSpeed config with a compile section); "
                                      "remove the key or set it to false"))
    return problems


@hookimpl
def gym_validate_config(cfg):
    if cfg.deepspeed is None:
        if cfg.deepcompile:
            return [ConfigProblem("deepcompile", "needs deepspeed (and is not supported by gym); remove the key")]
        return None
    if importlib.util.find_spec("deepspeed") is None:
        return [ConfigProblem("deepspeed", f"needs the deepspeed package, which is not installed: {INSTALL_HINT}")]
    try:
        resolved = resolve(cfg)
    except ConfigError as exc:
        return [ConfigProblem("deepspeed", str(exc).removeprefix("deepspeed: "))]
    zero = resolved.config.get("zero_optimization", {})
    if not isinstance(zero, dict) or zero.get("stage", 0) not in (0, 1, 2, 3):
        return [ConfigProblem("deepspeed", f"zero_optimization in {resolved.source} must be an object whose stage "
                              "is 0, 1, 2 or 3")]
    problems = _engine_problems(cfg, resolved)
    problems.extend(ConfigProblem("deepspeed", f"{message}; write \"auto\" there (gym fills it) or change the "
                                  "gym key") for message in mismatches(resolved, cfg))
    if resolved.stage == 3 and zero.get(GATHER_ON_SAVE) is False:
        problems.append(ConfigProblem("deepspeed", f"{GATHER_ON_SAVE} is false in {resolved.source}: the final "
                                      "model would be left as DeepSpeed shards, not a model transformers loads; "
                                      "set it to true or leave it out (gym sets it)"))
    return problems


# ------------------------------------------------------------------------------------------------- run


def _ensure_distributed_environment() -> None:
    """DeepSpeed always starts torch.distributed; a run of one process started without a launcher gets the
    environment of a one-process group (on a free port), as ``torchrun --nproc-per-node 1`` would give it."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # accelerate sets ACCELERATE_USE_DEEPSPEED itself once it sees DeepSpeed, and never clears it
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port)), ("ACCELERATE_USE_DEEPSPEED", "true")):
        if name not in os.environ:
            os.environ[name] = value
            _SET_HERE[name] = value


#: The variables :func:`_ensure_distributed_environment` set, removed again after the run (DeepSpeed reads
#: LOCAL_RANK while it trains; a later ``gym run --nproc-per-node 2`` started from this process must not take
#: itself for a worker).
_SET_HERE: dict[str, str] = {}


def _forget_distributed_environment() -> None:
    """Undo what :func:`_ensure_distributed_environment` did: the variables, the one-process group, and
    accelerate's process-wide state (which would otherwise hand DeepSpeed to the next run of this process)."""
    if not _SET_HERE:
        return
    import torch.distributed as dist
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name, value in list(_SET_HERE.items()):
        if os.environ.get(name) == value:
            del os.environ[name]
        del _SET_HERE[name]


def start_communication(cfg) -> None:
    """Start DeepSpeed's communication before the model is loaded: ZeRO-3 splits the parameters as they are
    created and must know the number of processes then. (On GPUs transformers' arguments would start it; on a
    CPU they start plain torch.distributed, which DeepSpeed then wraps.)"""
    from datetime import timedelta

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    _ensure_distributed_environment()
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name(), verbose=False,
                               timeout=timedelta(seconds=cfg.ddp_timeout or 1800))


def _notes(cfg, resolved: Resolved) -> list[str]:
    notes = [resolved.note] if resolved.note else []
    if "optimizer" in resolved.config:
        kind = (resolved.config["optimizer"] or {}).get("type", "?")
        notes.append(f"deepspeed: {resolved.source} names its own optimizer ({kind}); it replaces gym's "
                     f"optimizer: {cfg.optimizer}")
    if "scheduler" in resolved.config:
        kind = (resolved.config["scheduler"] or {}).get("type", "?")
        notes.append(f"deepspeed: {resolved.source} names its own scheduler ({kind}); it replaces gym's "
                     f"lr_scheduler: {cfg.lr_scheduler}")
    return notes


@hookimpl
def gym_training_arguments(cfg):
    if cfg.deepspeed is None:
        return None
    from gym.api import resolve_precision, say

    resolved = resolve(cfg)
    found = mismatches(resolved, cfg, process_count(), resolve_precision(cfg, quiet=True))
    if found:
        raise ConfigError("deepspeed: the DeepSpeed config disagrees with gym's config: " + "; ".join(found)
                          + '; write "auto" there (gym fills it) or change the gym key')
    start_communication(cfg)
    for note in _notes(cfg, resolved):
        say(f"note: {note}")
    if resolved.stage == 3 and GATHER_ON_SAVE not in resolved.zero:
        resolved.zero[GATHER_ON_SAVE] = True  # the final model: one plain Hugging Face model
        say(f"note: deepspeed: {GATHER_ON_SAVE} set to true, so that the final model is gathered into one file set")
    say(f"deepspeed: ZeRO stage {resolved.stage} from {resolved.source}, {process_count()} process(es)")
    return {"deepspeed": resolved.config}


@hookimpl
def gym_after_model_load(cfg):
    """Under ZeRO-3, transformers initializes every weight of the model it splits (gathering each in turn) before
    loading the checkpoint over them, which draws from torch's random generator where a plain load draws
    nothing. Reseed, so that what is initialized next (a LoRA adapter's A matrices) starts as it would without
    DeepSpeed."""
    if cfg.deepspeed is None:
        return
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import transformers

        transformers.set_seed(cfg.seed)


@hookimpl
def gym_callbacks(cfg):
    if cfg.deepspeed is None:
        return None
    return [deepspeed_callback(resolve(cfg).stage)]


@hookimpl
def gym_after_train(cfg):
    """The one-process environment set for DeepSpeed goes away with the run (only a run of one process, which
    is the main process, has one)."""
    if cfg.deepspeed is not None:
        _forget_distributed_environment()


def held_parameters(model) -> tuple[int, int]:
    """(elements this process holds, elements of the whole model): a ZeRO-3 partitioned parameter holds
    ``ds_tensor`` (its slice) of ``ds_numel``; any other parameter is held whole."""
    held = total = 0
    for param in model.parameters():
        if hasattr(param, "ds_tensor"):
            held += param.ds_tensor.numel()
            total += param.ds_numel
        else:
            held += param.numel()
            total += param.numel()
    return held, total


def deepspeed_callback(stage: int):
    """A ``TrainerCallback`` that, as training begins, says how many parameters each process holds (ZeRO-3; also
    in the final metrics), and as it ends switches off transformers' global ZeRO-3 loading."""
    from transformers import TrainerCallback

    class DeepSpeedRun(TrainerCallback):
        def __init__(self) -> None:
            self.gym_metrics: dict[str, Any] = {}
            self.shares: list[tuple[int, int]] = []

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if stage == 3 and model is not None:
                self.report_shares(model)
            return control

        def on_train_end(self, args, state, control, **kwargs):
            # transformers' global "ZeRO-3 is on" lives as long as the arguments do (the trainer keeps them): a
            # model built after training in this process (merge_lora, a test) must load plainly, not split.
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            return control

        def report_shares(self, model) -> None:
            import torch.distributed as dist

            from gym.api import say

            mine = held_parameters(model)
            if dist.is_available() and dist.is_initialized():
                shares: list[Any] = [None] * dist.get_world_size()
                dist.all_gather_object(shares, mine)
            else:
                shares = [mine]
            self.shares = [tuple(s) for s in shares]
            parts = [f"rank {rank} {held:,} of {total:,} ({100 * held / max(total, 1):.1f}%)"
                     for rank, (held, total) in enumerate(self.shares)]
            say("parameters held per process (ZeRO-3): " + ", ".join(parts))
            largest = max(held / max(total, 1) for held, total in self.shares)
            self.gym_metrics = {"zero3_params_total": self.shares[0][1],
                                "zero3_params_held_rank0": self.shares[0][0],
                                "zero3_params_held_max_fraction": round(largest, 4)}

    return DeepSpeedRun()
