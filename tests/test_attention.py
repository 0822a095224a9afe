"""Attention backends: legacy flags map to attn_implementation, missing packages are validate errors, and every
backend gym accepts with sample_packing keeps packed samples apart (packed loss == unpacked loss)."""

from __future__ import annotations

import importlib.util

import pytest

from gym import testing
from gym.api import ConfigError
from gym.plugins import flash_attention

BASE = {"base_model": testing.TINY_MODEL, "datasets": [{"path": "builtin:addition?rows=64", "type": "alpaca"}]}


def problems(**keys) -> list[str]:
    with pytest.raises(ConfigError) as error:
        testing.validate({**BASE, **keys})
    return error.value.problems


@pytest.mark.parametrize("flag, implementation", [("sdp_attention", "sdpa"), ("flex_attention", "flex_attention")])
def test_legacy_flags_map_to_attn_implementation(flag, implementation, capsys):
    cfg = testing.validate({**BASE, flag: True})
    assert flash_attention.gym_model_load_kwargs(cfg) == {"attn_implementation": implementation}
    flash_attention.gym_before_model_load(cfg)
    assert f"{flag}: true is attn_implementation: {implementation}" in capsys.readouterr().out


def test_missing_backend_packages_are_validate_errors():
    if importlib.util.find_spec("xformers") is None:
        (problem,) = problems(xformers_attention=True)
        assert problem.startswith("xformers_attention") and "needs the xformers package" in problem
    if importlib.util.find_spec("flash_attn") is None:
        for keys in ({"flash_attention": True}, {"attn_implementation": "flash_attention_2"}):
            (problem,) = problems(**keys)
            assert "needs the flash-attn" in problem and "attn_implementation: sdpa" in problem


def test_one_attention_flag_at_a_time():
    found = problems(sdp_attention=True, flex_attention=True)
    assert any(p.startswith("flex_attention") and "keep one attention flag" in p for p in found)
    (problem,) = problems(flex_attention=True, attn_implementation="eager")
    assert problem.startswith("flex_attention") and "keep one of the two" in problem


@pytest.mark.parametrize("attention", ["kernels-community/flash-attn3", "paged|eager"])
def test_backends_gym_cannot_check_are_refused_with_packing(attention):
    (problem,) = problems(attn_implementation=attention, sample_packing=True)
    assert problem.startswith("attn_implementation") and "sample_packing" in problem
    testing.validate({**BASE, "attn_implementation": attention})  # fine without packing


def _samples(tok, n=6):
    samples = []
    for i in range(n):
        prompt = tok(f"What is {i} + {i * 7}? " * (1 + i % 3), add_special_tokens=False)["input_ids"]
        answer = tok(f"It is {i * 8}.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        samples.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return samples


@pytest.mark.parametrize("attention", [
    "eager", "sdpa", pytest.param("flex_attention", marks=pytest.mark.slow),  # flex compiles its kernel
])
def test_packed_loss_equals_unpacked_loss(attention):
    import torch

    from gym.plugins.sft.collator import SupervisedCollator
    from gym.plugins.sft.packing import pack_samples
    from gym.tiny import build_model, build_tokenizer

    assert attention in flash_attention.PACKING_SAFE
    tok = build_tokenizer()
    model = build_model(tok, hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64).float().eval()
    model.set_attn_implementation(attention)
    samples = _samples(tok)
    rows = pack_samples(samples, capacity=max(len(s["input_ids"]) for s in samples) * 2 + 1)
    assert len(rows) < len(samples)
    unpacked = SupervisedCollator(tok.pad_token_id, packed=False)(samples)
    packed = SupervisedCollator(tok.pad_token_id, packed=True)(rows)
    with torch.no_grad():
        plain = model(**unpacked, use_cache=False).loss
        together = model(**packed, use_cache=False).loss
    torch.testing.assert_close(together, plain, rtol=0, atol=2e-5)


def test_flash_attn_fused_op_flags_are_a_note(capsys):
    cfg = testing.validate({**BASE, "flash_attn_rms_norm": True, "flash_attn_fuse_mlp": True,
                            "flash_attn_cross_entropy": False})
    flash_attention.gym_before_model_load(cfg)
    assert ("note: flash_attn_rms_norm, flash_attn_fuse_mlp: gym does not patch in flash-attn's fused ops"
            in capsys.readouterr().out)
