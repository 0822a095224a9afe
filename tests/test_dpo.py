"""rl: dpo / ipo / simpo: the keys map to TRL's options (or are refused with the reason), runs train on the tiny
model with an adapter and in full, the rewards reach the summary and the model card, the adapter loads in plain
peft and merges. The learning proof is in tests/test_preference_learning.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gym import testing
from gym.api import ConfigError

DATA = [{"path": "builtin:addition-preferences?rows=64", "type": "passthrough"}]


def validate(**keys):
    return testing.validate({"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "chatml.intel"}], **keys})


def method_of(cfg):
    from gym.api import get_plugin_manager

    return get_plugin_manager().training_method(cfg)


def problems(**keys) -> list[str]:
    with pytest.raises(ConfigError) as error:
        validate(**keys)
    return error.value.problems


# ------------------------------------------------------------------------------------------ the keys


def test_dpo_keys_become_dpo_config_values():
    cfg = validate(rl="dpo", rl_beta=0.2, dpo_label_smoothing=0.1, dpo_use_weighting=True, precompute_ref_log_probs=True,
                   rpo_alpha=0.5, sequence_len=256)
    method = method_of(cfg)
    assert method.name == "dpo" and method.arguments_class == "trl:DPOConfig"
    assert method.arguments == {"max_length": 256, "beta": 0.2, "label_smoothing": 0.1, "loss_type": ["sigmoid", "sft"],
                                "loss_weights": [1.0, 0.5], "use_weighting": True, "precompute_ref_log_probs": True}
    assert method.data_shape.columns == ("prompt", "chosen", "rejected")


def test_ipo_norm_loss_and_simpo():
    assert method_of(validate(rl="ipo")).arguments["loss_type"] == ["ipo"]
    assert method_of(validate(rl="dpo", dpo_norm_loss=True)).arguments["loss_type"] == ["sigmoid_norm"]
    assert method_of(validate(rl="dpo", dpo_loss_type=["sigmoid", "sft"], dpo_loss_weights=[1, 0.2])).arguments[
        "loss_weights"] == [1.0, 0.2]
    simpo = method_of(validate(rl="simpo", rl_beta=2.0, simpo_gamma=0.8, cpo_alpha=0.0))
    assert simpo.arguments_class == "trl.experimental.cpo:CPOConfig"
    assert simpo.arguments == {"max_length": 2048, "beta": 2.0, "loss_type": "simpo", "simpo_gamma": 0.8,
                               "cpo_alpha": 0.0}


@pytest.mark.slow  # imports TRL's experimental trainers
def test_the_arguments_classes_accept_the_values():
    """The values gym gives are real options of TRL 1.x's config classes."""
    from trl import DPOConfig
    from trl.experimental.cpo import CPOConfig

    args = DPOConfig(output_dir="/tmp/x", report_to="none", use_cpu=True,
                     **method_of(validate(rl="dpo", rpo_alpha=0.5, dpo_label_smoothing=0.1)).arguments)
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 0.5]
    args = CPOConfig(output_dir="/tmp/x", report_to="none", use_cpu=True,
                     **method_of(validate(rl="simpo", simpo_gamma=0.8)).arguments)
    assert args.loss_type == "simpo" and args.simpo_gamma == 0.8


def test_what_trl_does_not_honour_is_refused_with_the_reason():
    found = problems(rl="dpo", sample_packing=True)
    assert len(found) == 1 and "sample_packing" in found[0] and "not supported" in found[0]
    found = problems(rl="dpo", dpo_padding_free=True)
    assert "dpo_padding_free" in found[0] and "no longer honours" in found[0]
    assert "simpo_gamma" in problems(rl="dpo", simpo_gamma=0.5)[0]
    assert "precompute_ref_log_probs" in problems(rl="simpo", precompute_ref_log_probs=True)[0]
    assert "unknown loss 'nope'" in problems(rl="dpo", dpo_loss_type="nope")[0]
    assert "dpo_loss_type" in problems(rl="ipo", dpo_loss_type="hinge")[0]
    assert "dpo_loss_weights" in problems(rl="dpo", dpo_loss_type=["sigmoid", "hinge"], dpo_loss_weights=[1.0])[0]


def test_keys_do_nothing_without_rl():
    from gym.plugins import dpo

    cfg = testing.validate({"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
                            "dpo_loss_type": "hinge"})
    assert method_of(cfg).name == "sft"
    assert dpo.gym_model_card(cfg, None) is None


# ------------------------------------------------------------------------------------------- runs


def run(tmp_path, **keys):
    return testing.run_config({"rl": "dpo", "datasets": DATA, **keys}, steps=2, tmp_path=tmp_path)


@pytest.mark.slow  # the first TRL import alone takes seconds
def test_dpo_with_an_adapter_trains_and_reports_the_rewards(tmp_path):
    result = run(tmp_path, adapter="lora", lora_target_linear=True)
    assert result.method == "dpo" and result.steps == 2
    # the reference is the base with the adapter disabled: no second copy of the adapter is held
    assert list(result.trainer.model.peft_config) == ["default"]
    for key in ("rewards_chosen", "rewards_rejected", "rewards_margins", "rewards_accuracies"):
        assert key in result.metrics
    assert any(line.startswith("dpo rewards at the last log: chosen") and "accuracies" in line for line in result.notes)
    assert "dpo rewards at the last log" in result.summary()
    out = Path(result.output_dir)
    assert (out / "adapter_config.json").is_file() and not (out / "ref").exists()  # TRL's reference copy is not saved
    card = (out / "README.md").read_text()
    assert "## Preference training (dpo)" in card and "trl.DPOTrainer" in card and "rewards_margins" in card


@pytest.mark.slow
def test_full_fine_tuning_uses_a_frozen_reference_copy(tmp_path):
    result = run(tmp_path)
    trainer = result.trainer
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(result.output_dir)  # plain transformers loads it


@pytest.mark.slow
@pytest.mark.parametrize("rl", ["ipo", "simpo"])
def test_ipo_and_simpo_train(tmp_path, rl):
    result = testing.run_config({"rl": rl, "adapter": "lora", "datasets": DATA}, steps=2, tmp_path=tmp_path)
    assert result.method == rl and result.steps == 2
    assert "rewards_margins" in result.metrics
    assert f"## Preference training ({rl})" in (Path(result.output_dir) / "README.md").read_text()


@pytest.mark.slow
def test_the_dpo_adapter_loads_in_plain_peft_and_merges(tmp_path):
    import torch
    from click.testing import CliRunner
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gym.cli import main

    result = run(tmp_path, adapter="lora", lora_target_linear=True, learning_rate=0.01)
    out = Path(result.output_dir)
    config = tmp_path / "config.yml"
    config.write_text((out / "gym_config.yml").read_text())
    base_dir = testing.tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(out)
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(out)).eval()
    ids = torch.tensor([tokenizer("What is 12 + 34?")["input_ids"]])
    with torch.no_grad():
        expected = adapter(ids).logits
    cli = CliRunner().invoke(main, ["merge-lora", str(config)])
    assert cli.exit_code == 0, cli.output
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        assert (base(ids).logits - expected).abs().max() > 1e-4  # the adapter changed something


def test_trl_configs_do_not_turn_checkpointing_on_behind_the_configs_back(tmp_path):
    """TRL's configs default gradient checkpointing to on; gym's gradient_checkpointing key decides."""
    from gym import testing
    from gym.api import get_plugin_manager
    from gym.run import arguments_for

    cfg = testing.validate({"base_model": "builtin:tiny-llama-micro", "rl": "dpo", "output_dir": str(tmp_path),
                            "datasets": [{"path": "builtin:addition-preferences?rows=50", "type": "passthrough"}]})
    manager = get_plugin_manager()
    args = arguments_for(cfg, manager.training_method(cfg), 50, False, manager)
    assert args.activation_checkpointing is False and args.gradient_checkpointing is False
