"""The liger plugin: Liger's own entry point with exactly the asked-for kernels, the right modules patched, and on
a machine without a CUDA GPU a note naming each kernel not applied while the run goes on."""

from __future__ import annotations

import pytest

from gym import testing
from gym.api import ConfigError, ModelError

DATA = [{"path": "builtin:addition?rows=64", "type": "alpaca"}]
BASE = {"base_model": testing.TINY_MODEL, "datasets": DATA}


def problems(**keys) -> list[str]:
    with pytest.raises(ConfigError) as error:
        testing.validate({**BASE, **keys})
    return error.value.problems


def test_mutually_exclusive_losses_are_refused_at_validate():
    (problem,) = problems(liger_fused_linear_cross_entropy=True, cut_cross_entropy=True)
    assert problem.startswith("liger_fused_linear_cross_entropy") and "cut_cross_entropy" in problem
    (problem,) = problems(liger_cross_entropy=True, liger_fused_linear_cross_entropy=True)
    assert problem.startswith("liger_cross_entropy") and "keep one" in problem
    (problem,) = problems(liger_use_token_scaling=True)
    assert "liger_fused_linear_cross_entropy" in problem


def test_plan_uses_the_familys_entry_point_with_every_kernel_said():
    from gym.plugins.liger import plan

    cfg = testing.validate({**BASE, "liger_rope": True, "liger_rms_norm": True, "liger_glu_activation": True,
                            "liger_fused_linear_cross_entropy": True, "liger_layer_norm": True})
    name, arguments, missing = plan(cfg, "llama")
    assert name == "apply_liger_kernel_to_llama"
    assert arguments == {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                         "fused_linear_cross_entropy": True}
    assert missing == ["liger_layer_norm"]  # Llama has no LayerNorm
    # the Gemma families' gated MLP is GeGLU
    _, gemma, _ = plan(cfg, "gemma2")
    assert gemma["geglu"] is True and "swiglu" not in gemma
    # nothing asked but the norm: every other kernel is passed as False (Liger's defaults turn them on)
    only_norm = testing.validate({**BASE, "liger_rms_norm": True})
    assert plan(only_norm, "qwen2")[1] == {"rope": False, "rms_norm": True, "swiglu": False, "cross_entropy": False,
                                           "fused_linear_cross_entropy": False}


def test_a_family_liger_cannot_patch_is_an_error():
    from gym.plugins.liger import plan

    cfg = testing.validate({**BASE, "liger_rms_norm": True})
    with pytest.raises(ModelError, match=r"liger_rms_norm: Liger has no kernels for the model family 'gpt2'"):
        plan(cfg, "gpt2")


@pytest.fixture
def restore_llama_module():
    """Liger patches transformers' Llama module as well as the instance: put it back for the other tests."""
    from transformers.models.llama import modeling_llama

    saved = dict(vars(modeling_llama))
    forward = modeling_llama.LlamaForCausalLM.forward
    yield
    for name, value in saved.items():
        setattr(modeling_llama, name, value)
    modeling_llama.LlamaForCausalLM.forward = forward


def test_the_right_modules_are_patched(restore_llama_module):
    """Patched, not run: Liger's Triton kernels cannot run without a CUDA GPU."""
    from liger_kernel.transformers import LigerRMSNorm
    from liger_kernel.transformers.swiglu import LigerSwiGLUMLP
    from transformers.models.llama import modeling_llama

    from gym.plugins.liger import apply
    from gym.tiny import build_model, build_tokenizer

    model = build_model(build_tokenizer(), hidden_size=16, layers=2, heads=2, kv_heads=1, intermediate_size=32)
    cfg = testing.validate({**BASE, "liger_rms_norm": True, "liger_glu_activation": True})
    original_rope = modeling_llama.apply_rotary_pos_emb
    name, _, _ = apply(model, cfg)
    assert name == "apply_liger_kernel_to_llama"
    norms = [model.model.norm] + [m for layer in model.model.layers
                                  for m in (layer.input_layernorm, layer.post_attention_layernorm)]
    assert all(norm.forward.__func__ is LigerRMSNorm.forward for norm in norms)
    assert all(layer.mlp.forward.__func__ is LigerSwiGLUMLP.forward for layer in model.model.layers)
    # asked for neither: the rotary embedding and the loss stay transformers' own
    assert modeling_llama.apply_rotary_pos_emb is original_rope
    assert "forward" not in vars(model)  # no fused linear cross entropy: the model's own forward
    assert all(type(layer.self_attn).forward is modeling_llama.LlamaAttention.forward for layer in model.model.layers)


@pytest.mark.slow
def test_a_cpu_run_continues_with_a_note(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.fail("this test checks the CPU behaviour; on a GPU machine bench/gpu_kernels.py checks Liger")
    result = testing.run_config({"datasets": DATA, "liger_rope": True, "liger_rms_norm": True,
                                 "liger_glu_activation": True, "liger_fused_linear_cross_entropy": True,
                                 "liger_layer_norm": True}, steps=2, tmp_path=tmp_path)
    out = capsys.readouterr().out
    assert "has no kernel for liger_layer_norm; not applied" in out
    assert ("Liger kernels need a CUDA GPU with Triton; not applied here: liger_rope, liger_rms_norm, "
            "liger_glu_activation, liger_fused_linear_cross_entropy") in out
    assert result.steps == 2 and result.final_loss is not None
    assert "forward" not in vars(result.trainer.model)  # the standard modules trained


def test_axolotl_plugins_list_maps_to_gym_plugins_with_a_note(tmp_path):
    """``plugins:`` (Axolotl's import paths) names the gym plugin with the feature; one gym lacks is an error."""
    import yaml

    from gym.config import load_config

    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({**BASE, "plugins": [
        "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin", "axolotl.integrations.liger.LigerPlugin",
        "axolotl.integrations.spectrum.SpectrumPlugin", "liger"]}))
    notes: list[str] = []
    load_config(config, notes=notes)
    assert [n for n in notes if n.startswith("plugins:")] == [
        "plugins: axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin is provided by gym's "
        "'cut_cross_entropy' plugin (gym loads installed plugins by entry point; the list is optional)",
        "plugins: axolotl.integrations.liger.LigerPlugin is provided by gym's 'liger' plugin (gym loads installed "
        "plugins by entry point; the list is optional)",
        "plugins: axolotl.integrations.spectrum.SpectrumPlugin is provided by gym's 'spectrum' plugin (gym loads "
        "installed plugins by entry point; the list is optional)",
    ]
    found = problems(plugins=["axolotl.integrations.liger.LigerPlugin", "axolotl.integrations.kernels.KernelsPlugin",
                              "axolotl.integrations.nope.NopePlugin"])
    assert len(found) == 2
    assert found[0].startswith("plugins.1") and "'axolotl.integrations.kernels.KernelsPlugin'" in found[0]
    assert "mixture-of-experts kernels" in found[0] and "no gym equivalent" in found[0]
    assert found[1].startswith("plugins.2") and "no gym plugin named 'nope'" in found[1]


@pytest.mark.parametrize("adapter", ["lora", None])
def test_fused_lora_kernel_keys_are_accepted_with_a_note(adapter, capsys):
    from gym.plugins import lora

    keys = {"lora_mlp_kernel": True, "lora_qkv_kernel": True, "lora_o_kernel": False}
    cfg = testing.validate({**BASE, **keys, **({"adapter": adapter} if adapter else {})})
    lora.gym_after_wrap_model(cfg)
    out = capsys.readouterr().out
    assert "note: lora_mlp_kernel, lora_qkv_kernel: gym has no fused LoRA kernels" in out
    assert ("training on the standard LoRA path" in out) is (adapter is not None)


def test_a_local_model_liger_cannot_patch_is_refused_at_validate(tmp_path):
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    from gym.plugins.liger import liger_families

    assert liger_families() == set(MODEL_TYPE_TO_APPLY_LIGER_FN)  # read from Liger's source without importing it
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": str(tmp_path), "datasets": DATA, "liger_rms_norm": True})
    (problem,) = error.value.problems
    assert problem.startswith("liger_rms_norm") and "no kernels for the model family 'gpt2'" in problem
