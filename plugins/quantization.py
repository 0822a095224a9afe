"""Loading the base model quantized by bitsandbytes: 4-bit (for QLoRA) or 8-bit (for LoRA).

With ``load_in_4bit`` the linear layers become NF4 ``Linear4bit`` (double quantization, compute dtype following
bf16 / fp16, else float32); with ``load_in_8bit`` they become ``Linear8bitLt``. A quantized model trains only
through an adapter, so after loading it is prepared for k-bit training (base frozen, norms in float32, input
gradients for gradient checkpointing). With neither key set every hook here returns ``None``.

torch, transformers and bitsandbytes are imported inside the hooks only.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator

from gym.api import hookimpl
from gym.api import StrictConfig

DtypeName = Literal["float32", "bfloat16", "float16"]


class BnbConfigKwargs(StrictConfig):
    """Options passed on to ``transformers.BitsAndBytesConfig`` (Axolotl's ``bnb_config_kwargs``)."""

    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    bnb_4bit_use_double_quant: bool = Field(True, description="Also quantize the quantization constants.")
    bnb_4bit_compute_dtype: DtypeName | None = Field(
        None, description="dtype of 4-bit matmuls (default: bfloat16 with bf16, float16 with fp16, else float32)."
    )
    bnb_4bit_quant_storage: DtypeName | Literal["uint8"] | None = Field(
        None, description="dtype the packed 4-bit weights are stored in (uint8 by default; FSDP wants bfloat16)."
    )
    llm_int8_threshold: float = Field(6.0, description="8-bit: outlier threshold above which matmuls run in 16 bit.")
    llm_int8_has_fp16_weight: bool = Field(False, description="8-bit: keep 16-bit master weights.")
    llm_int8_skip_modules: list[str] | None = Field(None, description="Modules left unquantized.")


class QuantizationSettings(StrictConfig):
    """Keys of the quantization plugin."""

    load_in_4bit: bool = Field(
        False, description="Load the base model in 4 bit (bitsandbytes NF4); needs adapter: qlora."
    )
    load_in_8bit: bool = Field(
        False, description="Load the base model in 8 bit (bitsandbytes LLM.int8); needs adapter: lora."
    )
    bnb_config_kwargs: BnbConfigKwargs | None = Field(
        None, description="bitsandbytes options: bnb_4bit_quant_type, bnb_4bit_use_double_quant, ..."
    )

    @field_validator("load_in_4bit", "load_in_8bit", mode="before")
    @classmethod
    def _empty_is_false(cls, value: Any) -> Any:
        return False if value is None else value


@hookimpl
def gym_config_schema():
    return QuantizationSettings


def quantized(cfg) -> bool:
    return bool(cfg.load_in_4bit or cfg.load_in_8bit)


def bitsandbytes_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


@hookimpl
def gym_validate_config(cfg):
    from gym.api import ConfigProblem

    adapter = getattr(cfg, "adapter", None)
    problems = []
    if cfg.load_in_4bit and cfg.load_in_8bit:
        problems.append(ConfigProblem("load_in_8bit", "load_in_4bit and load_in_8bit are both true; choose one"))
    elif cfg.load_in_4bit and adapter != "qlora":
        problems.append(
            ConfigProblem(
                "load_in_4bit",
                f"a 4-bit model trains only through a QLoRA adapter: set adapter: qlora (adapter is {adapter})",
            )
        )
    elif cfg.load_in_8bit and adapter is None:
        problems.append(
            ConfigProblem("load_in_8bit", "an 8-bit model trains only through an adapter: set adapter: lora")
        )
    if quantized(cfg) and not bitsandbytes_installed():
        key = "load_in_4bit" if cfg.load_in_4bit else "load_in_8bit"
        problems.append(
            ConfigProblem(key, "needs bitsandbytes, which is not installed: pip install 'gym-llm[qlora]'")
        )
    if cfg.bnb_config_kwargs is not None and not quantized(cfg):
        problems.append(
            ConfigProblem("bnb_config_kwargs", "given but neither load_in_4bit nor load_in_8bit is true")
        )
    return problems


def training_dtype_name(cfg) -> str:
    """float32, bfloat16 or float16: the precision the run computes in, as bf16 / fp16 (``auto`` too) ask."""
    from gym.api import resolve_precision

    precision = resolve_precision(cfg, quiet=True)
    return "bfloat16" if precision.bf16 else "float16" if precision.fp16 else "float32"


def bnb_config(cfg):
    """The ``transformers.BitsAndBytesConfig`` for this config."""
    import torch
    from transformers import BitsAndBytesConfig

    options = cfg.bnb_config_kwargs or BnbConfigKwargs()
    if cfg.load_in_8bit:
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=options.llm_int8_threshold,
            llm_int8_has_fp16_weight=options.llm_int8_has_fp16_weight,
            llm_int8_skip_modules=options.llm_int8_skip_modules,
        )
    compute = options.bnb_4bit_compute_dtype or training_dtype_name(cfg)
    storage = options.bnb_4bit_quant_storage
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=options.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=getattr(torch, compute),
        bnb_4bit_quant_storage=getattr(torch, storage) if storage else None,
        llm_int8_skip_modules=options.llm_int8_skip_modules,
    )


@hookimpl
def gym_model_load_kwargs(cfg):
    if not quantized(cfg):
        return None
    kwargs: dict[str, Any] = {"quantization_config": bnb_config(cfg)}
    import torch

    if cfg.device_map is None and torch.cuda.is_available() and not cfg.use_cpu:
        # bitsandbytes quantizes while the weights move to the GPU: load them there, one copy per process.
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return kwargs


@hookimpl
def gym_after_model_load(cfg, model):
    """Freeze the quantized base and upcast what stays in 16 bit; the trainer turns on checkpointing itself."""
    if not quantized(cfg) or getattr(cfg, "adapter", None) is None:
        return
    from peft import prepare_model_for_kbit_training

    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        # Checkpointed layers (reentrant ones in particular) need an input that requires grad; a frozen,
        # quantized model gives none, and PEFT does not add it for quantized models.
        model.enable_input_require_grads()
