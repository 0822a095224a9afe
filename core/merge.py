"""Merging a trained LoRA / QLoRA adapter into its base model (``gym merge-lora``).

The base model is loaded in full precision (float32, or bfloat16 / float16 when the config loads weights in
that dtype), never quantized, even for a QLoRA adapter: the adapter's update is added to the original weights,
not to their 4-bit approximation, and the result is an ordinary transformers model in ``output_dir/merged``.
"""

from __future__ import annotations

import logging
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


def merge_dtype(cfg):
    """The dtype the base weights are loaded and merged in: the config's weight dtype, else float32."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if cfg.torch_dtype:
        if cfg.torch_dtype not in names:
            from gym.errors import ConfigError

            raise ConfigError(f"torch_dtype: {cfg.torch_dtype!r} is not one of {', '.join(names)}")
        return names[cfg.torch_dtype]
    if cfg.bfloat16 or cfg.bf16 is True:
        return torch.bfloat16
    if cfg.float16:
        return torch.float16
    return torch.float32


def load_full_precision_base(cfg, tokenizer, dtype):
    """The base model as trained on (vocabulary resized to the tokenizer), never quantized."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.base_model,
            dtype=dtype,
            revision=cfg.revision_of_model,
            trust_remote_code=cfg.trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"base_model: cannot load {cfg.base_model} to merge into: {exc}") from exc
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        multiple = 32 if cfg.resize_token_embeddings_to_32x else None
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=multiple)
    return model


def merge_adapter(cfg, lora_model_dir: str | None = None) -> Path:
    """Merge the adapter into a full-precision copy of the base and save it to ``output_dir/merged``."""
    from peft import PeftModel

    from gym.model import load_tokenizer

    adapter_dir = find_adapter_dir(cfg, lora_model_dir)
    tokenizer = load_tokenizer(cfg)
    base = load_full_precision_base(cfg, tokenizer, merge_dtype(cfg))
    try:
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
