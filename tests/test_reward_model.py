"""reward_model: true trains a one-output sequence classifier on preference pairs with TRL's RewardTrainer; the
saved model loads in plain transformers; its accuracy and margin reach the summary; and a learning proof: a few
dozen steps on generated pairs with a learnable signal rank held-out pairs far above chance."""

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


# ------------------------------------------------------------------------------------- learning proof

GOOD, BAD = (".", "!"), ("?", ",")


def marked_pairs(count: int, seed: int) -> list[dict]:
    """Addition pairs with a signal a tiny model learns in a few dozen steps: the chosen answer is the right sum
    ending in "." or "!", the rejected one a near miss ending in "?" or ",". (Right sum against near miss alone
    is arithmetic the untrained tiny model does not have: it stays at chance, see docs/preference.md.)"""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        wrong = a + b + rng.choice((-10, -1, 1, 10))
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
                     "chosen": [{"role": "assistant", "content": f"{a + b}{rng.choice(GOOD)}"}],
                     "rejected": [{"role": "assistant", "content": f"{wrong}{rng.choice(BAD)}"}]})
    return rows


def ranking(model_dir: str, pairs: list[dict], classifier=None) -> tuple[float, float]:
    """The share of ``pairs`` whose chosen answer the reward model scores above the rejected one, and the mean
    margin; each text rendered as TRL renders it (chat template, then the EOS token)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = (classifier or AutoModelForSequenceClassification.from_pretrained(model_dir)).eval()
    margins = []
    with torch.no_grad():
        for pair in pairs:
            scores = []
            for key in ("chosen", "rejected"):
                text = tokenizer.apply_chat_template(pair["prompt"] + pair[key], tokenize=False) + tokenizer.eos_token
                scores.append(model(torch.tensor([tokenizer(text)["input_ids"]])).logits[0, 0].item())
            margins.append(scores[0] - scores[1])
    return sum(m > 0 for m in margins) / len(margins), sum(margins) / len(margins)


@pytest.mark.slow
def test_a_reward_model_learns_to_rank_held_out_pairs(tmp_path):
    """The untrained classifier (the tiny model with a new one-output head) ranks held-out pairs about at chance;
    after 40 steps of 16 pairs it ranks at least 90% of them right, with a clear margin."""
    import json

    import torch
    from transformers import AutoModelForSequenceClassification

    held_out = marked_pairs(64, seed=99)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in marked_pairs(800, seed=1)))
    torch.manual_seed(0)
    untrained = AutoModelForSequenceClassification.from_pretrained(str(testing.tiny_model()), num_labels=1)
    before = ranking(str(testing.tiny_model()), held_out, untrained)
    result = testing.run_config({"reward_model": True, "datasets": [{"path": str(data), "type": "passthrough"}],
                                 "sequence_len": 64, "micro_batch_size": 16, "learning_rate": 1e-3,
                                 "lr_scheduler": "constant", "logging_steps": 10}, steps=40, tmp_path=tmp_path)
    after = ranking(result.output_dir, held_out)
    print(f"held-out ranking accuracy {before[0]:.3f} -> {after[0]:.3f}, margin {before[1]:+.4f} -> {after[1]:+.4f}")
    assert 0.2 <= before[0] <= 0.8 and abs(before[1]) < 0.05
    assert after[0] >= 0.9 and after[1] > 1.0


@pytest.mark.slow
def test_a_reward_model_learns_which_single_digit_sums_are_right(tmp_path):
    """The arithmetic signal alone, small enough for the untrained tiny model: chosen is the right sum of two
    digits, rejected any wrong one (0-18). After 300 steps of 32 pairs, TRL's own evaluation on 128 held-out pairs
    ranks well above chance (measured 2026-12-07: 87.5%, margin +2.84, at learning rate 1e-3; 5e-3 gave 82% on
    an earlier machine and 66% on this one: too high a rate to be repeatable)."""
    import json
    import random

    rng = random.Random(0)
    rows = []
    for _ in range(4000):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        wrong = rng.choice([n for n in range(19) if n != a + b])
        rows.append({"prompt": [{"role": "user", "content": f"{a}+{b}"}],
                     "chosen": [{"role": "assistant", "content": str(a + b)}],
                     "rejected": [{"role": "assistant", "content": str(wrong)}]})
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = testing.run_config({"reward_model": True, "datasets": [{"path": str(data), "type": "passthrough"}],
                                 "val_set_size": 128, "sequence_len": 64, "micro_batch_size": 32,
                                 "learning_rate": 1e-3, "lr_scheduler": "constant", "logging_steps": 50,
                                 "eval_steps": 300}, steps=300, tmp_path=tmp_path)
    print(f"eval accuracy {result.metrics['eval_accuracy']:.3f}, margin {result.metrics['eval_margin']:+.3f}")
    assert result.metrics["eval_accuracy"] >= 0.7 and result.metrics["eval_margin"] > 0.5
