"""Merging a trained LoRA / QLoRA adapter into its base model (``gym merge-lora``).

The base model is loaded in full precision (float32, or bfloat16 / float16 when the config loads weights in
that dtype), never quantized, even for a QLoRA adapter: the adapter's update is added to the original weights,
not to their 4-bit approximation, and the result is an ordinary transformers model in ``output_dir/merged``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from gym.errors import ModelError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"
MERGED_FOLDER = "merged"


def find_adapter_dir(cfg, lora_model_dir: str | None = None) -> Path:
    """Where the adapter to merge is: the given folder, else ``output_dir``, else ``lora_model_dir``."""
    if lora_model_dir:
        candidates = [("--lora-model-dir", Path(lora_model_dir))]
    else:
        candidates = [("output_dir", Path(cfg.output_dir))]
        if getattr(cfg, "lora_model_dir", None):
            candidates.append(("lora_model_dir", Path(cfg.lora_model_dir)))
    for _, folder in candidates:
        if (folder / ADAPTER_CONFIG_FILE).is_file():
            return folder
    tried = ", ".join(f"{name} {folder}" for name, folder in candidates)
    raise ModelError(f"no trained adapter to merge: no {ADAPTER_CONFIG_FILE} in {tried}")


def trains_in_bf16(cfg) -> bool:
    import torch

    gpu_bf16 = torch.cuda.is_available() and not cfg.use_cpu and torch.cuda.is_bf16_supported()
    return cfg.bf16 is True or (cfg.bf16 == "auto" and gpu_bf16)


def merge_dtype(cfg):
    """The dtype the base is loaded and merged in: the config's weight dtype (``torch_dtype``, ``bfloat16``,
    ``float16``, or bfloat16 with bf16), else float32. Never a quantized one."""
    from gym.model import weight_dtype

    return weight_dtype(cfg, mixed_bf16=trains_in_bf16(cfg))


def load_full_precision_base(cfg, tokenizer):
    """The base model as trained on (embeddings resized to the tokenizer), but never quantized."""
    from gym.model import load_model

    plain = cfg.model_copy(update={key: False for key in ("load_in_4bit", "load_in_8bit") if hasattr(cfg, key)})
    return load_model(plain, tokenizer, mixed_bf16=trains_in_bf16(cfg))


def merge_adapter(cfg, lora_model_dir: str | None = None) -> Path:
    """Merge the adapter into a full-precision copy of the base and save it to ``output_dir/merged``."""
    from peft import PeftModel

    from gym.model import load_tokenizer

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
    merged.save_pretrained(target, safe_serialization=cfg.save_safetensors)
    tokenizer.save_pretrained(target)
    logger.info("merged %s into %s: %s", adapter_dir, cfg.base_model, target)
    return target
