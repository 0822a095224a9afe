"""The grpo plugin: ``rl: grpo``, Group Relative Policy Optimization on TRL's ``GRPOTrainer``.

It owns the nested ``trl:`` section (the GRPO settings, Axolotl's key names) and the ``vllm:`` section, checks
them at ``validate`` (reward functions exist, vLLM is installed when asked for, keys TRL 1.x dropped are refused
with the reason), and answers ``gym_training_method`` for ``rl: grpo`` with:

- rows of prompts (:class:`PromptRows`): a ``prompt`` column (text, or chat messages that TRL renders with the
  tokenizer's chat template) and any extra columns the reward functions read as keyword arguments (``answer``);
  empty prompts and prompts that leave no room for ``trl.max_completion_length`` in ``sequence_len`` are counted
  and dropped;
- a trainer built from the parts it needs: ``GRPOTrainer(model, reward_funcs, args, train_dataset,
  processing_class, callbacks)``.

Reward functions are named ``module.function`` (``trl.reward_funcs: [rewards.correct_sum]``) and found in the
config file's folder, the working directory and the folders of local dataset files, in that order. At ``validate``
they are found without running them (the module's file is located with ``importlib`` and read with ``ast``);
at train time each is wrapped so that an exception inside it names the function and the prompt.

The reference model: with an adapter (``adapter: lora``) the policy is a PEFT model and the reference is the same
model with the adapter disabled (no second copy; with ``lora_model_dir`` the saved adapter is the starting
point, so TRL keeps a frozen copy of that adapter, a few MB, as the reference). With full fine-tuning and
``beta > 0`` a frozen copy of the base model built as the policy was (gym hands it to TRL, which would load the
base again from its path, without a token gym added). ``beta: 0`` (TRL's default) needs no reference at all.

Nothing heavy is imported at module level.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

from pydantic import Field, field_validator

from gym.api import ConfigProblem, DataError, DataShape, StrictConfig, TrainingMethod, hookimpl

NAME = "grpo"
NAMES = (NAME, "gdpo")  # gdpo (Axolotl's name): GRPO normalising each reward function's advantages on its own

# Axolotl's TRLConfig keys that TRL 1.x's GRPOConfig no longer has: refused, saying what to do instead.
NOT_HONOURED = {
    "vllm_guided_decoding_regex": "TRL 1.x renamed it; write trl.vllm_structured_outputs_regex",
    "use_liger_loss": "TRL 1.x's GRPOConfig has no Liger loss option",
    "rollout_func": "a GRPOTrainer argument in TRL 1.x, not a setting; gym does not pass custom rollouts yet",
    "use_data_producer": "Axolotl's own GRPO data producer; TRL's GRPOTrainer has no such option",
    "async_prefetch": "Axolotl's own asynchronous rollouts; TRL's GRPOTrainer has no such option",
    "prefetch_depth": "Axolotl's own asynchronous rollouts; TRL's GRPOTrainer has no such option",
    "vllm_sync_interval": "Axolotl's own asynchronous rollouts; TRL's GRPOTrainer has no such option",
    "streaming_partial_batch": "Axolotl's own streaming scorer; TRL's GRPOTrainer has no such option",
    "streaming_min_groups": "Axolotl's own streaming scorer; TRL's GRPOTrainer has no such option",
    "reward_num_workers": "Axolotl's own reward worker pool; TRL calls reward functions in the training process",
    "replay_buffer_size": "Axolotl's own replay buffer; TRL's GRPOTrainer has no such option",
    "replay_recompute_logps": "Axolotl's own replay buffer; TRL's GRPOTrainer has no such option",
    "reroll_start_fraction": "Axolotl's own re-rolling; TRL's GRPOTrainer has no such option",
    "reroll_max_groups": "Axolotl's own re-rolling; TRL's GRPOTrainer has no such option",
    "skip_zero_advantage_batches": "Axolotl's own batch skipping; TRL's GRPOTrainer has no such option",
    "vllm_lora_sync": "Axolotl's own adapter sync to vLLM; TRL's GRPOTrainer has no such option",
}
# The same for the vllm: section: these configure a vLLM server that Axolotl starts; gym starts none.
VLLM_SERVER_ONLY = ("device", "data_parallel_size", "dtype", "enable_prefix_caching", "host", "port",
                    "enable_reasoning", "reasoning_parser", "enforce_eager", "serve_module", "worker_extension_cls")
# vllm: keys that are GRPOConfig settings under another name.
VLLM_TO_GRPO = {
    "gpu_memory_utilization": "vllm_gpu_memory_utilization",
    "tensor_parallel_size": "vllm_tensor_parallel_size",
    "max_model_len": "vllm_max_model_length",
}


def _opt(description: str, default: Any = None) -> Any:
    return Field(default, description=description)


class TrlSettings(StrictConfig):
    """The ``trl:`` section: GRPO's settings, passed to TRL's ``GRPOConfig`` under the same names."""

    beta: Optional[float] = Field(None, ge=0, description="KL coefficient against the reference model (TRL's "
                                  "default 0: no reference model). Same as rl_beta.")
    num_generations: Optional[int] = Field(None, ge=2, description="Completions sampled per prompt (a group); "
                                           "micro_batch_size x gradient_accumulation_steps must be a multiple of it.")
    max_completion_length: Optional[int] = Field(None, ge=1, description="Most tokens generated per completion.")
    reward_funcs: Optional[list[str]] = _opt("Reward functions as `module.function`, found in the config's folder "
                                             "or the working directory; each gets prompts, completions and the "
                                             "dataset's extra columns as keyword arguments and returns one float "
                                             "per completion.")
    reward_weights: Optional[list[float]] = _opt("Weight of each reward function (default: 1 each).")
    generation_batch_size: Optional[int] = Field(None, ge=1, description="Completions generated per generation round.")
    steps_per_generation: Optional[int] = Field(None, ge=1, description="Optimizer micro-steps per generation round.")
    temperature: Optional[float] = Field(None, gt=0, description="Sampling temperature.")
    top_p: Optional[float] = Field(None, gt=0, le=1, description="Top-p (nucleus) sampling.")
    top_k: Optional[int] = Field(None, ge=0, description="Top-k sampling (0: off).")
    min_p: Optional[float] = Field(None, ge=0, le=1, description="Min-p sampling.")
    repetition_penalty: Optional[float] = Field(None, gt=0, description="Repetition penalty while sampling.")
    generation_kwargs: Optional[dict[str, Any]] = _opt("Extra generation settings (transformers or vLLM).")
    chat_template_kwargs: Optional[dict[str, Any]] = _opt("Extra arguments for the chat template of chat prompts.")
    num_iterations: Optional[int] = Field(None, ge=1, description="Optimisation passes over each generated batch (mu).")
    epsilon: Optional[float] = Field(None, gt=0, description="Lower clipping bound of the policy ratio.")
    epsilon_high: Optional[float] = Field(None, gt=0, description="Upper clipping bound (default: epsilon).")
    delta: Optional[float] = Field(None, gt=0, description="Two-sided clipping bound of the ratio (off by default).")
    loss_type: Optional[Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]] = _opt(
        "Loss formulation: grpo, bnpo, dr_grpo, dapo (TRL's default), cispo, sapo, luspo, vespo.")
    scale_rewards: Union[bool, Literal["group", "batch", "none"], None] = _opt(
        "Scale advantages by the reward's standard deviation: group (true), batch, or none (false).")
    mask_truncated_completions: Optional[bool] = _opt("Leave completions cut at max_completion_length out of the loss.")
    importance_sampling_level: Optional[Literal["token", "sequence"]] = _opt("Importance ratios per token or sequence.")
    multi_objective_aggregation: Optional[Literal["sum_then_normalize", "normalize_then_sum"]] = _opt(
        "How several reward functions are combined.")
    sync_ref_model: Optional[bool] = _opt("Move the reference model towards the policy every ref_model_sync_steps.")
    ref_model_mixup_alpha: Optional[float] = Field(None, ge=0, le=1, description="Mix-up weight of sync_ref_model.")
    ref_model_sync_steps: Optional[int] = Field(None, ge=1, description="Steps between reference model syncs.")
    log_completions: Optional[bool] = _opt("Log sampled completions with their rewards.")
    num_completions_to_print: Optional[int] = Field(None, ge=0, description="Completions printed when logging them.")
    use_vllm: bool = Field(False, description="Generate with vLLM (needs the vllm package and a GPU).")
    vllm_mode: Optional[Literal["server", "colocate"]] = _opt("server: a separate `trl vllm-serve`; colocate: in "
                                                               "the training process.")
    vllm_server_base_url: Optional[str] = _opt("URL of the vLLM server (instead of host and port).")
    vllm_server_host: Optional[str] = _opt("Host of the vLLM server.")
    vllm_server_port: Optional[int] = _opt("Port of the vLLM server.")
    vllm_server_timeout: Optional[float] = _opt("Seconds to wait for the vLLM server.")
    vllm_enable_sleep_mode: Optional[bool] = _opt("Let vLLM release GPU memory while training (colocate).")
    vllm_structured_outputs_regex: Optional[str] = _opt("Regex constraining vLLM's completions.")
    vllm_importance_sampling_correction: Optional[bool] = _opt("Correct for the vLLM / training model mismatch.")
    vllm_importance_sampling_mode: Optional[
        Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]] = _opt(
        "How the vLLM importance ratio is bounded.")
    vllm_importance_sampling_cap: Optional[float] = Field(None, gt=0, description="Cap of the vLLM importance ratio.")
    off_policy_mask_threshold: Optional[float] = _opt("KL threshold of off-policy sequence masking (off by default).")
    use_bias_correction_kl: Optional[bool] = _opt("Importance-correct the KL term.")
    # Keys Axolotl has and TRL 1.x does not honour: accepted by the schema only to be refused with the reason.
    vllm_guided_decoding_regex: Optional[str] = _opt("Refused: TRL 1.x renamed it vllm_structured_outputs_regex.")
    use_liger_loss: Optional[bool] = _opt("Refused: not a GRPOConfig option in TRL 1.x.")
    rollout_func: Optional[str] = _opt("Refused: not supported by gym yet.")
    use_data_producer: Optional[bool] = _opt("Refused: Axolotl only.")
    async_prefetch: Optional[bool] = _opt("Refused: Axolotl only.")
    prefetch_depth: Optional[int] = _opt("Refused: Axolotl only.")
    vllm_sync_interval: Optional[int] = _opt("Refused: Axolotl only.")
    streaming_partial_batch: Optional[bool] = _opt("Refused: Axolotl only.")
    streaming_min_groups: Optional[int] = _opt("Refused: Axolotl only.")
    reward_num_workers: Optional[int] = _opt("Refused: Axolotl only.")
    replay_buffer_size: Optional[int] = _opt("Refused: Axolotl only.")
    replay_recompute_logps: Optional[bool] = _opt("Refused: Axolotl only.")
    reroll_start_fraction: Optional[float] = _opt("Refused: Axolotl only.")
    reroll_max_groups: Optional[int] = _opt("Refused: Axolotl only.")
    skip_zero_advantage_batches: Optional[bool] = _opt("Refused: Axolotl only.")
    vllm_lora_sync: Optional[bool] = _opt("Refused: Axolotl only.")

    @field_validator("reward_funcs", mode="before")
    @classmethod
    def _one_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class VllmSettings(StrictConfig):
    """The ``vllm:`` section (Axolotl's names). Only the keys that are GRPOConfig settings act."""

    gpu_memory_utilization: Optional[float] = Field(None, gt=0, le=1, description="GPU memory share of colocated vLLM.")
    tensor_parallel_size: Optional[int] = Field(None, ge=1, description="Tensor parallel size of colocated vLLM.")
    max_model_len: Optional[int] = Field(None, ge=1, description="Context length of colocated vLLM.")
    device: Optional[str] = _opt("Axolotl's vLLM server setting; refused unless 'auto' (gym starts no server).")
    data_parallel_size: Optional[int] = _opt("Axolotl's vLLM server setting; refused (gym starts no server).")
    dtype: Optional[str] = _opt("Axolotl's vLLM server setting; refused unless 'auto' (gym starts no server).")
    enable_prefix_caching: Optional[bool] = _opt("Axolotl's vLLM server setting; refused (gym starts no server).")
    host: Optional[str] = _opt("Axolotl's vLLM server setting; refused unless its default (use trl.vllm_server_host).")
    port: Optional[int] = _opt("Axolotl's vLLM server setting; refused unless its default (use trl.vllm_server_port).")
    enable_reasoning: Optional[bool] = _opt("Axolotl's vLLM server setting; refused (gym starts no server).")
    reasoning_parser: Optional[str] = _opt("Axolotl's vLLM server setting; refused (gym starts no server).")
    enforce_eager: Optional[bool] = _opt("Axolotl's vLLM server setting; refused (gym starts no server).")
    serve_module: Optional[str] = _opt("Axolotl's vLLM server setting; refused (gym starts no server).")
    worker_extension_cls: Optional[str] = _opt("Axolotl's vLLM server setting; refused (gym starts no server).")


# Values of Axolotl's server keys that ask for nothing (its defaults, written out by many configs).
VLLM_HARMLESS = {"device": "auto", "dtype": "auto", "host": "0.0.0.0", "port": 8000}


class GrpoSettings(StrictConfig):
    """Keys of the grpo plugin."""

    trl: Optional[TrlSettings] = Field(None, description="GRPO settings (rl: grpo), TRL's GRPOConfig names.")
    vllm: Optional[VllmSettings] = Field(None, description="vLLM settings for trl.use_vllm.")


@hookimpl
def gym_config_schema():
    return GrpoSettings


# ---------------------------------------------------------------------------- finding user functions


def search_folders(cfg: Any) -> list[Path]:
    """Where ``module.function`` names are looked up: the config's folder, the working directory, then the
    folders of local dataset files."""
    from gym.api import config_folder

    folders = [config_folder(cfg), Path.cwd()]
    for entry in [*(cfg.datasets or ()), *(getattr(cfg, "test_datasets", None) or ())]:
        path = Path(str(entry.path))
        if ":" not in str(entry.path)[:10] and path.exists():
            folders.append((path if path.is_dir() else path.parent).resolve())
    unique: list[Path] = []
    for folder in folders:
        folder = folder.resolve()
        if folder not in unique:
            unique.append(folder)
    return unique


def module_spec(module: str, folders: list[Path]) -> Any:
    """The spec of ``module`` in ``folders`` (then on sys.path), found without running any of its code."""
    parts = module.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0], [str(f) for f in folders])
    if spec is None:
        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            spec = None
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), list(spec.submodule_search_locations))
    return spec


def _defines(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return True
        if isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name) and node.target.id == name:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((alias.asname or alias.name.split(".")[0]) == name for alias in node.names):
                return True
        if isinstance(node, (ast.If, ast.Try)):  # definitions under `if` / `try` at top level
            inner = ast.Module(body=[*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                                     *(s for h in getattr(node, "handlers", []) for s in h.body)], type_ignores=[])
            if _defines(inner, name):
                return True
    return False


def function_problem(reference: Any, folders: list[Path]) -> str | None:
    """Why ``module.function`` cannot be found (``None``: it can). Reads the module's source; runs nothing."""
    if not isinstance(reference, str) or "." not in reference.strip(".") or reference.startswith("."):
        return f"{reference!r}: write module.function, e.g. rewards.correct_sum (a function in rewards.py)"
    module, _, name = reference.rpartition(".")
    where = ", ".join(str(f) for f in folders)
    spec = module_spec(module, folders)
    if spec is None:
        return f"no module {module!r} for {reference!r} (looked for {module.replace('.', '/')}.py in {where} and " \
               "installed packages)"
    origin = spec.origin
    if not origin or not origin.endswith(".py"):
        return None  # a compiled or namespace module: its contents can only be checked by importing it
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"), filename=origin)
    except SyntaxError as exc:
        return f"module {module!r} ({origin}) is not valid Python: line {exc.lineno}: {exc.msg}"
    except OSError as exc:
        return f"cannot read module {module!r} ({origin}): {exc}"
    if not _defines(tree, name):
        return f"module {module!r} ({origin}) defines no {name!r}"
    return None


def load_function(reference: str, folders: list[Path]) -> Any:
    """Import ``module.function`` with ``folders`` first on ``sys.path``; a ConfigError-free DataError when it fails."""
    module, _, name = reference.rpartition(".")
    for folder in reversed(folders):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    try:
        loaded = importlib.import_module(module)
        function = getattr(loaded, name)
    except Exception as exc:  # noqa: BLE001 - the user's module: say which and why
        raise DataError(f"cannot load {reference!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(function):
        raise DataError(f"{reference!r} is not a function (it is a {type(function).__name__})")
    return function


# ------------------------------------------------------------------------------------------ validation


def _vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _not_honoured(section: Any, prefix: str) -> list[ConfigProblem]:
    problems = []
    for key in sorted(section.model_fields_set):
        value = getattr(section, key)
        if value is None:
            continue
        if prefix == "trl" and key in NOT_HONOURED:
            problems.append(ConfigProblem(f"trl.{key}", f"not honoured by TRL 1.x: {NOT_HONOURED[key]}"))
        elif prefix == "vllm" and key in VLLM_SERVER_ONLY and VLLM_HARMLESS.get(key, object()) != value:
            problems.append(ConfigProblem(
                f"vllm.{key}", "configures the vLLM server Axolotl starts; gym starts none (run `trl vllm-serve` "
                "yourself and set trl.vllm_mode: server with trl.vllm_server_host / vllm_server_port)"))
    return problems


@hookimpl
def gym_validate_config(cfg):
    trl_settings = getattr(cfg, "trl", None)
    vllm_settings = getattr(cfg, "vllm", None)
    if getattr(cfg, "rl", None) not in NAMES:
        problems = []
        if trl_settings is not None and trl_settings.model_fields_set and cfg.rl is None:
            problems.append(ConfigProblem("trl", "the trl section sets GRPO options but rl is not set; add rl: grpo"))
        return problems or None
    trl_settings = trl_settings or TrlSettings()
    problems = _not_honoured(trl_settings, "trl")
    if vllm_settings is not None:
        problems += _not_honoured(vllm_settings, "vllm")
    if cfg.rl == "gdpo" and trl_settings.multi_objective_aggregation == "sum_then_normalize":
        problems.append(ConfigProblem("trl.multi_objective_aggregation", "rl: gdpo normalises each reward on its "
                                      "own (normalize_then_sum); with sum_then_normalize write rl: grpo"))
    if not trl_settings.reward_funcs:
        problems.append(ConfigProblem("trl.reward_funcs", f"rl: {cfg.rl} needs at least one reward function, "
                                      "e.g. reward_funcs: [rewards.correct_sum] (a function in rewards.py)"))
    else:
        folders = search_folders(cfg)
        for i, reference in enumerate(trl_settings.reward_funcs):
            message = function_problem(reference, folders)
            if message:
                problems.append(ConfigProblem(f"trl.reward_funcs.{i}", message))
        weights = trl_settings.reward_weights
        if weights is not None and len(weights) != len(trl_settings.reward_funcs):
            problems.append(ConfigProblem("trl.reward_weights", f"{len(weights)} weights for "
                                          f"{len(trl_settings.reward_funcs)} reward functions; give one each"))
    if trl_settings.use_vllm and not _vllm_installed():
        problems.append(ConfigProblem("trl.use_vllm", "vllm is not installed (pip install vllm, on a machine with a "
                                      "GPU); or set use_vllm: false to generate with transformers"))
    if trl_settings.beta is not None and cfg.rl_beta is not None and trl_settings.beta != cfg.rl_beta:
        problems.append(ConfigProblem("trl.beta", f"differs from rl_beta ({trl_settings.beta} vs {cfg.rl_beta}); "
                                      "set one of them"))
    generations = trl_settings.num_generations or 8
    batch = cfg.micro_batch_size * cfg.gradient_accumulation_steps
    if trl_settings.generation_batch_size is None and trl_settings.steps_per_generation is None and batch % generations:
        problems.append(ConfigProblem("trl.num_generations", f"micro_batch_size x gradient_accumulation_steps "
                                      f"({batch}) must be a multiple of num_generations ({generations}); each "
                                      "batch holds whole groups of completions"))
    completion = trl_settings.max_completion_length or 512
    if completion >= cfg.sequence_len:
        problems.append(ConfigProblem("trl.max_completion_length", f"{completion} leaves no room for the prompt in "
                                      f"sequence_len ({cfg.sequence_len}); prompts get sequence_len - "
                                      "max_completion_length tokens"))
    if getattr(cfg, "sample_packing", False):
        problems.append(ConfigProblem("sample_packing", "GRPO trains on generated completions; there is nothing to "
                                      "pack: remove sample_packing"))
    return problems


# ------------------------------------------------------------------------------------------ the method


def grpo_arguments(cfg: Any) -> dict[str, Any]:
    """The GRPOConfig keywords from the trl / vllm sections and rl_beta."""
    trl_settings = getattr(cfg, "trl", None) or TrlSettings()
    skip = {"reward_funcs", *NOT_HONOURED}
    values = {
        key: getattr(trl_settings, key)
        for key in TrlSettings.model_fields
        if key not in skip and getattr(trl_settings, key) is not None
    }
    if values.get("use_vllm") is False:
        values.pop("use_vllm")
    beta = trl_settings.beta if trl_settings.beta is not None else cfg.rl_beta
    if beta is not None:
        values["beta"] = beta
    vllm_settings = getattr(cfg, "vllm", None)
    if vllm_settings is not None:
        for key, target in VLLM_TO_GRPO.items():
            if getattr(vllm_settings, key) is not None:
                values[target] = getattr(vllm_settings, key)
    values.setdefault("max_completion_length", 512)
    if getattr(cfg, "rl", None) == "gdpo":
        values.setdefault("multi_objective_aggregation", "normalize_then_sum")
    return values


def prompt_limit(cfg: Any) -> int:
    """The most prompt tokens: what ``sequence_len`` leaves after ``trl.max_completion_length``."""
    trl_settings = getattr(cfg, "trl", None) or TrlSettings()
    return max(1, cfg.sequence_len - (trl_settings.max_completion_length or 512))


def rows_per_prompt(cfg: Any) -> int:
    """The batch rows TRL makes of one prompt: ``num_generations`` completions, each trained ``num_iterations``
    times (TRL's defaults 8 and 1)."""
    trl_settings = getattr(cfg, "trl", None) or TrlSettings()
    return (trl_settings.num_generations or 8) * (trl_settings.num_iterations or 1)


@hookimpl
def gym_training_method(cfg):
    if getattr(cfg, "rl", None) not in NAMES:
        return None
    return TrainingMethod(
        name=cfg.rl,
        build_trainer="gym.plugins.grpo:build_trainer",
        arguments_class="trl:GRPOConfig",
        arguments=grpo_arguments(cfg),
        data_shape=PromptRows(cfg, prompt_limit(cfg)),
        rows_per_row=rows_per_prompt(cfg),
        description="Group Relative Policy Optimization on prompts, scored by reward functions (TRL GRPOTrainer)",
    )


@hookimpl
def gym_data_settings(cfg):
    if getattr(cfg, "rl", None) not in NAMES:
        return None
    return {"grpo_prompt_limit": prompt_limit(cfg)}


@hookimpl
def gym_model_card(cfg):
    if getattr(cfg, "rl", None) not in NAMES:
        return None
    values = grpo_arguments(cfg)
    funcs = ", ".join(f"`{f}`" for f in (cfg.trl.reward_funcs or ())) if cfg.trl else ""
    settings = ", ".join(f"{k}={values[k]}" for k in ("beta", "num_generations", "max_completion_length",
                                                          "temperature", "loss_type", "multi_objective_aggregation")
                         if k in values)
    return {"tags": ["grpo", "trl"], "packages": ["trl"],
            "sections": [f"## GRPO\n\nTrained with GRPO (TRL `GRPOTrainer`), reward functions: {funcs}. "
                         f"Settings: {settings or 'TRL defaults'}.\n"]}


# ------------------------------------------------------------------------------------------ the rows

EXTRA = "extra_columns"  # what strategies give besides the prompt: a JSON object, one column a key, for rewards


def is_chat(prompt: Any) -> bool:
    return isinstance(prompt, list)


def prompt_is_empty(prompt: Any) -> bool:
    if prompt is None:
        return True
    if is_chat(prompt):
        return not any(str((m or {}).get("content") or "").strip() for m in prompt)
    return not str(prompt).strip()


def prompt_ids(prompt: Any, tokenizer: Any) -> list[int]:
    """The prompt's tokens as TRL will feed them: chat messages with the template's generation prompt."""
    if is_chat(prompt):
        out = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


class PromptChecks:
    """The ``Dataset.map`` function of :class:`PromptRows`: each prompt's fate (0 kept, 1 empty, 2 too long,
    3 kept after cutting the text from the left)."""

    def __init__(self, tokenizer: Any, limit: int, truncate: bool):
        self.tokenizer = tokenizer
        self.limit = limit
        self.truncate = truncate

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        fates, prompts = [], []
        for prompt in batch["prompt"]:
            fate = 0
            if prompt_is_empty(prompt):
                fate = 1
            elif self.tokenizer is not None:
                ids = prompt_ids(prompt, self.tokenizer)
                if len(ids) > self.limit:
                    if self.truncate and not is_chat(prompt):
                        prompt, fate = self.tokenizer.decode(ids[-self.limit:]), 3
                    else:
                        fate = 2
            fates.append(fate)
            prompts.append(prompt)
        return {"prompt": prompts, "_fate": fates}


class PromptRows(DataShape):
    """:class:`gym.api.DataShape` of GRPO: a ``prompt`` (text or chat messages) and the extra columns the reward
    functions read. Empty prompts and prompts longer than ``sequence_len - trl.max_completion_length`` tokens
    are dropped and counted (``excess_length_strategy: truncate`` keeps the end of a long text prompt)."""

    columns = ("prompt",)

    def __init__(self, cfg: Any, limit: int):
        self.limit = limit
        self.truncate = getattr(cfg, "excess_length_strategy", "drop") == "truncate"

    def samples(self, dataset: Any, counts: Any, work: Path, tokenizer: Any = None) -> Any:
        import uuid

        import numpy as np

        checked = dataset.map(
            PromptChecks(tokenizer, self.limit, self.truncate),
            batched=True,
            batch_size=1000,
            cache_file_name=str(work / f"prompts-{uuid.uuid4().hex}.arrow"),
            desc="Checking prompts",
        )
        fate = np.asarray(checked["_fate"], dtype=np.int64)
        counts.drop("empty prompt", int((fate == 1).sum()))
        counts.drop(f"prompt longer than {self.limit} tokens (sequence_len - max_completion_length)",
                    int((fate == 2).sum()))
        counts.change("truncated", int((fate == 3).sum()))
        keep = np.flatnonzero((fate == 0) | (fate == 3))
        counts.kept = int(len(keep))
        return checked.select(keep).remove_columns("_fate")

    def rows(self, dataset: Any, split: str, work: Path, tokenizer: Any = None) -> tuple[Any, dict[str, Any]]:
        """The extra columns come out of their JSON: TRL passes every column but ``prompt`` to the rewards."""
        import json

        figures: dict[str, Any] = {"prompts": len(dataset)}
        if EXTRA not in dataset.column_names:
            return dataset, figures
        keys: list[str] = []
        for value in dataset[EXTRA]:
            for key in json.loads(value or "{}"):
                if key not in keys and key not in ("prompt", "completion", "completion_ids"):
                    keys.append(key)
        figures["extra_columns"] = keys

        def expand(batch: dict[str, list]) -> dict[str, list]:
            decoded = [json.loads(v or "{}") for v in batch[EXTRA]]
            return {key: [d.get(key) for d in decoded] for key in keys}

        if keys:
            dataset = dataset.map(expand, batched=True, batch_size=1000,
                                  cache_file_name=str(work / f"{split}-prompt-rows.arrow"), desc="Extra columns")
        return dataset.remove_columns(EXTRA), figures

    def describe(self, split: str, samples: int, rows: int, figures: dict[str, Any]) -> str:
        extra = figures.get("extra_columns")
        return f"{split}: {samples:,} prompts" + (f" (with {', '.join(extra)} for the reward functions)" if extra else "")

    def preview(self, dataset: Any, tokenizer: Any, count: int = 3) -> list[str]:
        return [f"prompt {i}: {dataset[i]}" for i in range(min(count, len(dataset)))]


# ------------------------------------------------------------------------------------------ rewards


def _failing_row(function: Any, prompts: list, completions: list, kwargs: dict[str, Any]) -> int | None:
    """The first prompt on which ``function`` raises alone (``None``: none does)."""
    n = len(prompts)
    for i in range(n):
        single = {k: (v[i : i + 1] if isinstance(v, list) and len(v) == n else v) for k, v in kwargs.items()}
        try:
            function(prompts=prompts[i : i + 1], completions=completions[i : i + 1], **single)
        except Exception:  # noqa: BLE001
            return i
    return None


def _text_start(prompt: Any, width: int = 60) -> str:
    if isinstance(prompt, list):  # chat messages: the last message's content
        prompt = next((m.get("content") for m in reversed(prompt) if isinstance(m, dict)), prompt)
    text = str(prompt).replace("\n", " ")
    return text if len(text) <= width else text[:width] + "..."


def named_reward(reference: str, function: Any) -> Any:
    """``function`` wrapped so that an exception in it is a DataError naming it and the failing prompt."""

    def explain(exc: Exception, prompts: list, completions: list, kwargs: dict[str, Any]) -> DataError:
        row = None if inspect.iscoroutinefunction(function) else _failing_row(function, prompts, completions, kwargs)
        where = (f"on prompt {row} of the batch ({_text_start(prompts[row])!r})" if row is not None
                 else f"on a batch of {len(prompts)} prompts (first: {_text_start(prompts[0]) if prompts else ''!r})")
        return DataError(f"reward function {reference} failed {where}: {type(exc).__name__}: {exc}")

    if inspect.iscoroutinefunction(function):
        async def reward(prompts, completions, **kwargs):
            try:
                return await function(prompts=prompts, completions=completions, **kwargs)
            except Exception as exc:  # noqa: BLE001
                raise explain(exc, prompts, completions, kwargs) from exc
    else:
        def reward(prompts, completions, **kwargs):
            try:
                return function(prompts=prompts, completions=completions, **kwargs)
            except Exception as exc:  # noqa: BLE001
                raise explain(exc, prompts, completions, kwargs) from exc

    reward.__name__ = getattr(function, "__name__", reference.rpartition(".")[2])  # TRL logs rewards/<name>
    reward.__qualname__ = reward.__name__
    reward.__doc__ = getattr(function, "__doc__", None)
    reward.gym_reference = reference  # type: ignore[attr-defined]
    return reward


def reward_functions(cfg: Any) -> list[Any]:
    folders = search_folders(cfg)
    return [named_reward(ref, load_function(ref, folders)) for ref in cfg.trl.reward_funcs]


# ------------------------------------------------------------------------------------------ trainer


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template ends an assistant turn with (chatml's ``<|im_end|>``), if any."""
    marker = "GYMANSWERMARK"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Q"}, {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # noqa: BLE001 - no chat template: nothing to add
        return None
    if not isinstance(text, str) or marker not in text:
        return None
    ids = tokenizer(text.split(marker, 1)[1], add_special_tokens=False)["input_ids"]
    return ids[0] if ids and ids[0] in set(tokenizer.all_special_ids) else None


def stop_at_end_of_turn(model: Any, tokenizer: Any, dataset: Any, args: Any = None) -> None:
    """Chat prompts: completions end at the template's end-of-turn token. TRL stops generating (and masks the
    loss) at the model's ``generation_config.eos_token_id`` and the tokenizer's EOS; a chat template whose turns
    end with another token (chatml's ``<|im_end|>`` with ``<|endoftext|>`` as EOS) would otherwise train on
    whatever the model writes after its answer, up to max_completion_length. vLLM loads the model again from its
    folder and never sees the generation config changed here: with ``use_vllm`` the token also goes to vLLM's
    sampling settings (``generation_kwargs``: ``stop_token_ids``)."""
    if dataset is None or len(dataset) == 0 or not isinstance(dataset[0]["prompt"], list):
        return
    token = end_of_turn_id(tokenizer)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "generation_config", None)
    if token is None or config is None:
        return
    current = config.eos_token_id
    current = [] if current is None else [current] if isinstance(current, int) else list(current)
    if token not in current:
        config.eos_token_id = [*current, token]
    if args is not None and getattr(args, "use_vllm", False):
        kwargs = dict(args.generation_kwargs or {})
        kwargs["stop_token_ids"] = sorted({*kwargs.get("stop_token_ids", ()), *current, token})
        args.generation_kwargs = kwargs


FIGURES = (("reward", "reward", "+.4f"), ("reward_std", "reward std", ".4f"), ("kl", "kl", ".4f"),
           ("completions/mean_length", "completion length", ".1f"),
           ("completions/clipped_ratio", "clipped at max_completion_length", ".0%"))
FIGURE_KEYS = {key for key, _, _ in FIGURES}


def figures_callback(method: str) -> Any:
    """A ``TrainerCallback`` reporting the reward, KL and completion length of the first and last logs as
    ``gym_metrics`` and ``gym_summary`` lines (the loss of GRPO says little: it starts at 0)."""
    from transformers import TrainerCallback

    class GrpoFigures(TrainerCallback):
        def __init__(self) -> None:
            self.first: dict[str, float] = {}
            self.last: dict[str, float] = {}
            self.gym_metrics: dict[str, Any] = {}
            self.gym_summary: list[str] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key, value in (logs or {}).items():
                if isinstance(value, (int, float)) and (key in FIGURE_KEYS or key.startswith("rewards/")):
                    self.first.setdefault(key, float(value))
                    self.last[key] = float(value)

        def on_train_end(self, args, state, control, **kwargs):
            self.gym_metrics = {key.replace("/", "_"): value for key, value in self.last.items()}
            shown = []
            for key, label, fmt in FIGURES:
                if key in self.last:
                    first, last = format(self.first[key], fmt), format(self.last[key], fmt)
                    shown.append(f"{label} {first} -> {last}" if first != last else f"{label} {last}")
            if shown:
                self.gym_summary.append(f"{method}, first log -> last log: " + ", ".join(shown))

    return GrpoFigures()


@contextmanager
def gyms_reference(parts: Any) -> Iterator[None]:
    """While TRL's GRPOTrainer is built: with ``beta > 0`` and full fine-tuning it loads its reference model again
    from the policy's path, without what gym did to the policy (a token added to the vocabulary, kernels,
    quantization); hand it gym's reference instead, the base model built as the policy was."""
    import trl.trainer.grpo_trainer as grpo_module

    loader = grpo_module.create_model_from_path
    grpo_module.create_model_from_path = lambda *args, **kwargs: parts.reference_model()
    try:
        yield
    finally:
        grpo_module.create_model_from_path = loader


def build_trainer(parts: Any) -> Any:
    """TRL's GRPOTrainer from the parts it reads (it batches prompts itself: no collator)."""
    from accelerate.utils import is_peft_model
    from trl import GRPOTrainer

    stop_at_end_of_turn(parts.model, parts.tokenizer, parts.train_dataset, parts.args)
    with gyms_reference(parts):
        trainer = GRPOTrainer(
            model=parts.model,
            reward_funcs=reward_functions(parts.cfg),
            args=parts.args,
            train_dataset=parts.train_dataset,
            eval_dataset=parts.eval_dataset,
            processing_class=parts.tokenizer,
            callbacks=[*parts.callbacks, figures_callback(parts.cfg.rl)],
        )
    model = trainer.model
    if is_peft_model(model) and "ref" in model.peft_config and not getattr(parts.cfg, "lora_model_dir", None):
        # TRL copies the adapter as the reference; a new adapter starts as the identity, so the base model with the
        # adapter disabled is the same reference without the copy (and nothing extra is saved with the adapter).
        model.delete_adapter("ref")
        model.set_adapter("default")
    return trainer
