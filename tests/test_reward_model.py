"""reward_model: true trains a one-output sequence classifier on preference pairs with TRL's RewardTrainer; the
saved model loads in plain transformers; its accuracy and margin reach the summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from gym import testing
from gym.api import ConfigError

DATA = [{"path": "builtin:addition-preferences?rows=64", "type": "passthrough"}]


def test_reward_model_keys_and_rules():
    from gym.api import get_plugin_manager

    cfg = testing.validate({"base_model": "m", "reward_model": True, "center_rewards_coefficient": 0.01,
                            "datasets": DATA})
    assert cfg.model_type == "AutoModelForSequenceClassification"
    method = get_plugin_manager().training_method(cfg)
    assert method.name == "reward_model" and method.arguments_class == "trl:RewardConfig"
    assert method.arguments == {"max_length": 2048, "center_rewards_coefficient": 0.01}
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": "m", "reward_model": True, "num_labels": 2, "adapter": "lora",
                          "datasets": DATA})
    text = "\n".join(error.value.problems)
    assert "num_labels" in text and "lora_modules_to_save" in text
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": "m", "num_labels": 1, "datasets": [{"path": "d.jsonl", "type": "alpaca"}]})
    assert "used only with reward_model" in error.value.problems[0]


@pytest.mark.slow
def test_a_reward_model_trains_and_loads_in_plain_transformers(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    result = testing.run_config({"reward_model": True, "datasets": DATA, "val_set_size": 16}, steps=3,
                                tmp_path=tmp_path)
    assert result.method == "reward_model" and result.steps == 3
    assert "accuracy" in result.metrics and "eval_accuracy" in result.metrics
    assert any("reward_model rewards at the last log" in line for line in result.notes)
    model = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert model.config.num_labels == 1
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 1)
    assert "## Reward model" in (Path(result.output_dir) / "README.md").read_text()
