"""LoRA adapters (and their variants rsLoRA, DoRA; QLoRA with the quantization plugin) through PEFT.

With ``adapter: lora`` or ``adapter: qlora`` the loaded model is wrapped by ``peft.get_peft_model`` (or, with
``lora_model_dir``, by the saved adapter, trainable again); only the adapter's parameters and the modules named
in ``lora_modules_to_save`` train. The trainer then saves only the adapter, in PEFT's own layout, so plain
``peft.PeftModel.from_pretrained(base, output_dir)`` loads it. The command ``gym merge-lora`` (added here) folds
it into the base model. With ``adapter`` unset every hook here returns ``None`` and changes nothing.

torch and peft are imported inside the hooks only.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import Field, field_validator

from gym.api import ConfigError, ConfigProblem, ModelError, StrictConfig, hookimpl

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"

_DEFAULTS = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}


class LoraSettings(StrictConfig):
    """Keys of the lora plugin."""

    adapter: Literal["lora", "qlora"] | None = Field(
        None,
        description="Train an adapter instead of the whole model: `lora`, or `qlora` (LoRA on a 4-bit base; "
        "needs `load_in_4bit: true`). Unset: full fine-tuning.",
    )
    lora_r: int = Field(8, gt=0, description="LoRA rank: the inner dimension of each adapter's two matrices.")
    lora_alpha: Union[int, float] = Field(
        16, gt=0, description="LoRA scaling numerator: updates are scaled by lora_alpha / lora_r "
        "(lora_alpha / sqrt(lora_r) with peft_use_rslora)."
    )
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input during training.")
    lora_target_modules: Union[list[str], str, None] = Field(
        None,
        description="Modules to adapt: a list of module names (`q_proj`, `v_proj`, ...) or one regular "
        "expression matched against full module paths. Unset without lora_target_linear: PEFT's default for "
        "the architecture.",
    )
    lora_target_linear: bool | None = Field(
        None,
        description="Adapt every linear layer except the output head (added to lora_target_modules).",
    )
    lora_modules_to_save: list[str] | None = Field(
        None,
        description="Modules trained in full and saved with the adapter, e.g. [embed_tokens, lm_head] when "
        "new tokens are added.",
    )
    lora_fan_in_fan_out: bool | None = Field(
        None, description="The target layers store weights as (fan_in, fan_out), as GPT-2's Conv1D does."
    )
    peft_use_rslora: bool | None = Field(
        None, description="Rank-stabilised LoRA: scale updates by lora_alpha / sqrt(lora_r)."
    )
    peft_use_dora: bool | None = Field(
        None, description="DoRA: learn each weight's magnitude apart from its LoRA-updated direction."
    )
    peft_layers_to_transform: list[int] | None = Field(
        None, description="Adapt only the decoder layers with these indices (default: all)."
    )
    lora_model_dir: str | None = Field(
        None,
        description="A saved adapter (folder with adapter_config.json) to continue training from; its own "
        "settings (rank, targets, ...) are used.",
    )
    merge_lora: bool = Field(
        False,
        description="After training, also write the adapter merged into the base model to output_dir/merged "
        "(as `gym merge-lora` does).",
    )
    lora_mlp_kernel: bool | None = Field(
        None, description="Accepted for Axolotl configs: gym has no fused LoRA kernels; the standard LoRA path trains "
        "(the same math) and a note says so."
    )
    lora_qkv_kernel: bool | None = Field(None, description="As lora_mlp_kernel, for the q/k/v projections.")
    lora_o_kernel: bool | None = Field(None, description="As lora_mlp_kernel, for the output projection.")

    @field_validator("lora_r", "lora_alpha", "lora_dropout", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any, info) -> Any:
        """Axolotl configs often leave these keys empty (``lora_r:``) in configs without an adapter."""
        return _DEFAULTS[info.field_name] if value is None else value

    @field_validator("lora_target_modules", "lora_modules_to_save", mode="before")
    @classmethod
    def _empty_list_is_none(cls, value: Any) -> Any:
        return value or None


@hookimpl
def gym_config_schema():
    return LoraSettings


# ---------------------------------------------------------------------------------------- validation


def saved_adapter_config(folder: str | Path) -> dict[str, Any] | None:
    """The ``adapter_config.json`` of a local adapter folder, or ``None`` when there is none."""
    path = Path(folder) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


@hookimpl
def gym_validate_config(cfg):
    problems = []
    adapter = cfg.adapter
    if adapter is None:
        if cfg.lora_model_dir:
            problems.append(
                ConfigProblem("lora_model_dir", "a saved adapter is given but `adapter` is not set; set adapter: lora "
                              "(or qlora) to continue training it")
            )
        if cfg.merge_lora:
            problems.append(ConfigProblem("merge_lora", "merging needs an adapter; set adapter: lora or qlora"))
        return problems
    if adapter == "qlora":
        if getattr(cfg, "load_in_8bit", False):
            problems.append(
                ConfigProblem("adapter", "qlora trains on a 4-bit base but load_in_8bit is true; use adapter: lora "
                              "with load_in_8bit, or load_in_4bit: true with qlora")
            )
        elif not getattr(cfg, "load_in_4bit", False):
            problems.append(ConfigProblem("adapter", "qlora needs load_in_4bit: true (or use adapter: lora)"))
    if isinstance(cfg.lora_target_modules, str) and cfg.lora_target_linear:
        problems.append(
            ConfigProblem("lora_target_linear", "cannot be combined with a regular expression in lora_target_modules; "
                          "give lora_target_modules as a list of names, or drop lora_target_linear")
        )
    if cfg.lora_model_dir:
        folder = Path(cfg.lora_model_dir)
        if folder.exists() and saved_adapter_config(folder) is None:
            problems.append(
                ConfigProblem("lora_model_dir", f"{folder} holds no {ADAPTER_CONFIG_FILE}: not a saved adapter folder")
            )
    return problems


# ------------------------------------------------------------------------------------------- model


def output_head_name(model) -> str | None:
    """The module path of the model's output projection (``lm_head``), or ``None``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return None
    return next((name for name, module in model.named_modules() if module is head), None)


def linear_module_names(model) -> set[str]:
    """Last path parts of every linear layer (quantized ones included) except the output head."""
    import torch

    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        linear_types += (Conv1D,)
    except ImportError:  # pragma: no cover - transformers always has it today
        pass
    head = output_head_name(model)
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, linear_types) and name != head
    }


def target_modules(cfg, model) -> Union[list[str], str, None]:
    """What LoraConfig.target_modules gets: the named modules, plus every linear layer with lora_target_linear."""
    named = cfg.lora_target_modules
    if not cfg.lora_target_linear:
        return named
    return sorted(set(named or ()) | linear_module_names(model))


def lora_config(cfg, model):
    """The ``peft.LoraConfig`` the config asks for."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target_modules(cfg, model),
        modules_to_save=cfg.lora_modules_to_save,
        fan_in_fan_out=bool(cfg.lora_fan_in_fan_out),
        use_rslora=bool(cfg.peft_use_rslora),
        use_dora=bool(cfg.peft_use_dora),
        layers_to_transform=cfg.peft_layers_to_transform,
        bias="none",
    )


def _embedding_module_names(model) -> list[str]:
    """Last path parts of the input embedding and the output head (``embed_tokens``, ``lm_head``)."""
    names = []
    inputs = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is inputs:
            names.append(name.rsplit(".", 1)[-1])
            break
    head = output_head_name(model)
    if head:
        names.append(head.rsplit(".", 1)[-1])
    return names


def tokens_added_by_config(cfg, tokenizer) -> list[str]:
    """The tokens that ``tokens`` / ``special_tokens`` added to the base tokenizer's vocabulary (but a pad token)."""
    if not (cfg.tokens or cfg.special_tokens):
        return []
    from transformers import AutoTokenizer

    from gym.api import resolve_source

    key = "tokenizer_config" if cfg.tokenizer_config else "base_model"
    source = resolve_source(cfg.tokenizer_config or cfg.base_model, key)
    base = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    added = tokenizer.convert_ids_to_tokens(list(range(len(base), len(tokenizer))))
    # A new pad token is harmless: padding is masked out and never trained on.
    in_use = {tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token}
    return [token for token in added if token != tokenizer.pad_token or token in in_use]


@hookimpl
def gym_after_model_load(cfg, model, tokenizer):
    """Refuse to train new tokens whose embeddings the adapter would leave random and frozen."""
    if cfg.adapter is None:
        return
    new_tokens = tokens_added_by_config(cfg, tokenizer)
    if not new_tokens:
        return
    saved = saved_adapter_config(cfg.lora_model_dir) if cfg.lora_model_dir else None
    to_save = set((saved or {}).get("modules_to_save") or cfg.lora_modules_to_save or ())
    needed = _embedding_module_names(model)
    if all(name in to_save for name in needed):
        return
    shown = ", ".join(repr(t) for t in new_tokens[:8]) + (" ..." if len(new_tokens) > 8 else "")
    raise ConfigError(
        f"lora_modules_to_save: {len(new_tokens)} new token(s) were added to the vocabulary ({shown}); their "
        f"embedding rows start untrained and, with adapter: {cfg.adapter}, would stay frozen, so the model could "
        f"neither read nor write them. Add lora_modules_to_save: [{', '.join(needed)}] to train them"
    )


@hookimpl
def gym_wrap_model(cfg, model):
    """Wrap the model in a new LoRA adapter, or in the saved one at ``lora_model_dir`` (trainable)."""
    if cfg.adapter is None:
        return None
    from peft import PeftModel, get_peft_model

    if cfg.lora_model_dir:
        _warn_about_ignored_settings(cfg)
        try:
            wrapped = PeftModel.from_pretrained(model, cfg.lora_model_dir, is_trainable=True)
        except Exception as exc:
            raise ModelError(
                f"lora_model_dir: cannot load the adapter in {cfg.lora_model_dir}: {type(exc).__name__}: {exc}"
            ) from exc
    else:
        config = lora_config(cfg, model)
        try:
            with warnings.catch_warnings():  # PEFT still calls an API transformers 5 deprecated; not the user's to fix
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                wrapped = get_peft_model(model, config)
        except ValueError as exc:
            available = ", ".join(sorted(linear_module_names(model)))
            field = "lora_target_modules"
            raise ConfigError(
                f"{field}: {exc} (linear layers of this model: {available}; or set lora_target_linear: true)"
            ) from exc
    trainable, total = wrapped.get_nb_trainable_parameters()
    logger.info("%s: training %d of %d parameters (%.2f%%)", cfg.adapter, trainable, total, 100 * trainable / total)
    return wrapped


def _warn_about_ignored_settings(cfg) -> None:
    """With a saved adapter its own settings rule; say which of the config's values are therefore unused."""
    saved = saved_adapter_config(cfg.lora_model_dir)
    if saved is None:
        return
    pairs = {
        "lora_r": ("r", cfg.lora_r),
        "lora_alpha": ("lora_alpha", cfg.lora_alpha),
        "peft_use_rslora": ("use_rslora", bool(cfg.peft_use_rslora)),
        "peft_use_dora": ("use_dora", bool(cfg.peft_use_dora)),
    }
    differing = [
        f"{key}={ours!r} (adapter: {saved[name]!r})"
        for key, (name, ours) in pairs.items()
        if name in saved and saved[name] != ours
    ]
    if differing:
        logger.warning(
            "lora_model_dir %s: continuing with the saved adapter's settings; these config values are not used: %s",
            cfg.lora_model_dir,
            ", ".join(differing),
        )


LORA_KERNEL_KEYS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel")


@hookimpl
def gym_after_wrap_model(cfg):
    """The fused LoRA kernel keys: said, never silently dropped."""
    asked = [key for key in LORA_KERNEL_KEYS if getattr(cfg, key)]
    if asked:
        from gym.api import say

        say(f"note: {', '.join(asked)}: gym has no fused LoRA kernels (and they need a CUDA GPU); "
            + ("training on the standard LoRA path, which computes the same" if cfg.adapter else
               "no adapter is trained here, so they have nothing to act on"))


@hookimpl
def gym_after_train(cfg, output_dir):
    """With ``merge_lora: true``, also write the merged model to ``output_dir/merged``."""
    if cfg.adapter is None or not cfg.merge_lora:
        return
    target = merge_adapter(cfg, output_dir)
    logger.info("merged model written to %s", target)


@hookimpl
def gym_model_card(cfg):
    if cfg.adapter is None:
        return None
    return {
        "library_name": "peft",
        "tags": [cfg.adapter],
        "summary": f"A {cfg.adapter} adapter (rank {cfg.lora_r}, alpha {cfg.lora_alpha}) for `{cfg.base_model}`, "
        "trained with gym.",
        "usage": (
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            'model = AutoPeftModelForCausalLM.from_pretrained("{output_dir}")\n'
            'tokenizer = AutoTokenizer.from_pretrained("{output_dir}")'
        ),
        "packages": ["peft"],
    }


# ------------------------------------------------------------------------------------------- merging
#
# The base model is loaded in full precision (float32, or bfloat16 / float16 when the config loads weights in
# that dtype), never quantized, even for a QLoRA adapter: the adapter's update is added to the original weights,
# not to their 4-bit approximation, and the result is an ordinary transformers model in ``output_dir/merged``.

MERGED_FOLDER = "merged"


def find_adapter_dir(cfg, lora_model_dir: str | None = None) -> Path:
    """Where the adapter to merge is: the given folder, else ``output_dir``, else ``lora_model_dir``."""
    if lora_model_dir:
        candidates = [("--lora-model-dir", Path(lora_model_dir))]
    else:
        candidates = [("output_dir", Path(cfg.output_dir))]
        if cfg.lora_model_dir:
            candidates.append(("lora_model_dir", Path(cfg.lora_model_dir)))
    for _, folder in candidates:
        if (folder / ADAPTER_CONFIG_FILE).is_file():
            return folder
    tried = ", ".join(f"{name} {folder}" for name, folder in candidates)
    raise ModelError(f"no trained adapter to merge: no {ADAPTER_CONFIG_FILE} in {tried}")


def load_full_precision_base(cfg, tokenizer):
    """The base model as trained on (embeddings resized, every load hook run), but never quantized."""
    from gym.api import build_model

    plain = cfg.model_copy(update={key: False for key in ("load_in_4bit", "load_in_8bit") if hasattr(cfg, key)})
    return build_model(plain, tokenizer, wrap=False)


# Files saved next to an adapter that a merged model needs as well (a vision model's processor, for one).
COMPANION_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                   "chat_template.jinja", "chat_template.json")


def _copy_companion_files(adapter_dir: Path, target: Path) -> None:
    import shutil

    for name in COMPANION_FILES:
        if (adapter_dir / name).is_file() and not (target / name).is_file():
            shutil.copy2(adapter_dir / name, target / name)


def merge_adapter(cfg, lora_model_dir: str | None = None) -> Path:
    """Merge the adapter into a full-precision copy of the base and save it to ``output_dir/merged``."""
    from peft import PeftModel

    from gym.api import load_tokenizer

    adapter_dir = find_adapter_dir(cfg, lora_model_dir)
    tokenizer = load_tokenizer(cfg)
    base = load_full_precision_base(cfg, tokenizer)
    try:
        with warnings.catch_warnings():  # PEFT still calls an API transformers 5 deprecated; not the user's to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(base, str(adapter_dir))
    except Exception as exc:
        raise ModelError(f"cannot apply the adapter in {adapter_dir} to {cfg.base_model}: {exc}") from exc
    merged = model.merge_and_unload(safe_merge=True)
    target = Path(cfg.output_dir) / MERGED_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    _copy_companion_files(adapter_dir, target)
    logger.info("merged %s into %s: %s", adapter_dir, cfg.base_model, target)
    return target


@hookimpl
def gym_register_commands(cli):
    import click

    @cli.command(name="merge-lora")
    @click.argument("config", type=click.Path(dir_okay=False))
    @click.argument("overrides", nargs=-1)
    @click.option("--lora-model-dir", default=None, help="Adapter folder (default: output_dir).")
    def merge_lora(config, overrides, lora_model_dir):
        """Merge a trained LoRA / QLoRA adapter into its base model, written to OUTPUT_DIR/merged."""
        from gym.api import load_config

        cfg = load_config(config, overrides)
        target = merge_adapter(cfg, lora_model_dir)
        click.echo(f"merged model written to {target}")
