"""The quantization plugin with the lora plugin: a 4-bit (QLoRA) or 8-bit base, trained through LoRA on CPU."""

from __future__ import annotations

import pytest

from gym.plugins import lora, quantization
from test_lora import fixed_batch, make_cfg, train_steps


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from gym.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def load_through_hooks(cfg, model_dir):
    """What the model loader does with these plugins: load kwargs, load, after-load, wrap."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    kwargs = quantization.gym_model_load_kwargs(cfg) or {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    quantization.gym_after_model_load(cfg, model)
    lora.gym_after_model_load(cfg, model, tokenizer)
    return lora.gym_wrap_model(cfg, model), tokenizer


def test_4bit_config_is_nf4_with_double_quantization_and_follows_precision():
    import torch

    qcfg = quantization.gym_model_load_kwargs(make_cfg(adapter="qlora", load_in_4bit=True, bf16=False))
    config = qcfg["quantization_config"]
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype == torch.float32

    bf16 = quantization.gym_model_load_kwargs(make_cfg(adapter="qlora", load_in_4bit=True, bf16=True))
    assert bf16["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16
    auto_on_cpu = quantization.gym_model_load_kwargs(make_cfg(adapter="qlora", load_in_4bit=True, bf16="auto"))
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    expected = torch.bfloat16 if gpu_bf16 else torch.float32
    assert auto_on_cpu["quantization_config"].bnb_4bit_compute_dtype == expected

    chosen = make_cfg(adapter="qlora", load_in_4bit=True, bf16=True,
                      bnb_config_kwargs={"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
                                         "bnb_4bit_compute_dtype": "float32"})
    config = quantization.gym_model_load_kwargs(chosen)["quantization_config"]
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == ("fp4", False)
    assert config.bnb_4bit_compute_dtype == torch.float32


def test_qlora_base_layers_are_4bit_and_only_the_adapter_trains(tiny_model_dir):
    import bitsandbytes as bnb

    cfg = make_cfg(base_model=str(tiny_model_dir), adapter="qlora", load_in_4bit=True, bf16=False,
                   lora_target_linear=True)
    model, tokenizer = load_through_hooks(cfg, tiny_model_dir)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    base_linears = [m for n, m in model.named_modules() if n.endswith("base_layer")]
    assert len(base_linears) == 14 and all(isinstance(m, bnb.nn.Linear4bit) for m in base_linears)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    packed_before = q_proj.base_layer.weight.detach().clone()
    losses = train_steps(model, fixed_batch(tokenizer))
    assert losses[-1] < losses[0] - 0.3, losses
    assert q_proj.base_layer.weight.equal(packed_before)


def test_qlora_with_dora_trains(tiny_model_dir):
    cfg = make_cfg(base_model=str(tiny_model_dir), adapter="qlora", load_in_4bit=True, bf16=False,
                   lora_target_modules=["v_proj"], peft_use_dora=True)
    model, tokenizer = load_through_hooks(cfg, tiny_model_dir)
    assert any("lora_magnitude_vector" in n for n, p in model.named_parameters() if p.requires_grad)
    losses = train_steps(model, fixed_batch(tokenizer), steps=4, lr=3e-2)
    assert losses[-1] < losses[0] - 0.1, losses


def test_lora_on_an_8bit_base_trains(tiny_model_dir):
    import bitsandbytes as bnb

    cfg = make_cfg(base_model=str(tiny_model_dir), adapter="lora", load_in_8bit=True, bf16=False,
                   lora_target_linear=True)
    config = quantization.gym_model_load_kwargs(cfg)["quantization_config"]
    assert config.load_in_8bit and not config.load_in_4bit
    model, tokenizer = load_through_hooks(cfg, tiny_model_dir)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear8bitLt)
    losses = train_steps(model, fixed_batch(tokenizer), steps=6)
    assert losses[-1] < losses[0] - 0.2, losses
