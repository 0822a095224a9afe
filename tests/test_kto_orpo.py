"""rl: orpo on TRL's ORPOTrainer (orpo_alpha is its beta, no reference model) and rl: kto on TRL's KTOTrainer
(prompt / completion / label rows from the same dataset types, the weights mapped, bad rows counted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gym import testing
from gym.api import ConfigError

DATA = [{"path": "builtin:addition-preferences?rows=64", "type": "passthrough"}]


def test_orpo_alpha_is_trls_beta():
    from gym.api import get_plugin_manager

    cfg = testing.validate({"base_model": "m", "rl": "orpo", "orpo_alpha": 0.2, "datasets": DATA})
    method = get_plugin_manager().training_method(cfg)
    assert method.name == "orpo" and method.arguments_class == "trl.experimental.orpo:ORPOConfig"
    assert method.arguments == {"max_length": 2048, "beta": 0.2}
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": "m", "rl": "orpo", "sample_packing": True, "datasets": DATA})
    assert "sample_packing" in error.value.problems[0]


@pytest.mark.slow
@pytest.mark.parametrize("adapter", [None, "lora"])
def test_orpo_trains(tmp_path, adapter):
    keys = {"adapter": adapter} if adapter else {}
    result = testing.run_config({"rl": "orpo", "orpo_alpha": 0.1, "datasets": DATA, **keys}, steps=2,
                                tmp_path=tmp_path)
    assert result.method == "orpo" and result.steps == 2
    assert "rewards_accuracies" in result.metrics and "log_odds_ratio" in result.metrics
    assert "## Preference training (orpo)" in (Path(result.output_dir) / "README.md").read_text()


KTO = {"rl": "kto", "micro_batch_size": 2}


def test_kto_keys_and_rules():
    from gym.api import get_plugin_manager

    cfg = testing.validate({"base_model": "m", "rl": "kto", "rl_beta": 0.3, "kto_desirable_weight": 1.5,
                            "kto_undesirable_weight": 0.5, "micro_batch_size": 2, "datasets": DATA})
    method = get_plugin_manager().training_method(cfg)
    assert method.name == "kto" and method.arguments_class == "trl:KTOConfig"
    assert method.arguments == {"max_length": 2048, "beta": 0.3, "desirable_weight": 1.5, "undesirable_weight": 0.5}
    assert method.data_shape.columns == ("prompt", "completion", "label")
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": "m", "rl": "kto", "micro_batch_size": 1, "datasets": DATA})
    assert "micro_batch_size" in error.value.problems[0]
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": "m", "kto_desirable_weight": 2.0, "datasets": [{"path": "d", "type": "alpaca"}]})
    assert "used only with rl: kto" in error.value.problems[0]


def test_kto_layouts():
    out = testing.call_strategy("chatml.intel", [{"question": "2+2?", "completion": "4", "label": True}], KTO)
    assert out["prompt"] == ["<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"]
    assert out["completion"] == ["4<|im_end|>"] and out["label"] == [True] and out["chosen"] == [None]
    out = testing.call_strategy("llama3.argilla_chat", [{"completion": [{"role": "user", "content": "hi"},
                                                                         {"role": "assistant", "content": "yo"}],
                                                          "label": False}], KTO)
    assert out["completion"] == ["yo<|eot_id|>"] and out["label"] == [False]
    out = testing.call_strategy("passthrough", [{"prompt": "Q:", "completion": " A", "label": 1}], KTO)
    assert (out["prompt"], out["completion"], out["label"]) == (["Q:"], [" A"], [True])
    entry = {"field_prompt": "q", "field_completion": "a", "field_label": "ok", "prompt_format": "Q: {prompt}\nA: "}
    out = testing.call_strategy("user_defined.default", [{"q": "hi", "a": "yo", "ok": "false"}],
                                {**KTO, "datasets": [entry]})
    assert (out["prompt"], out["completion"], out["label"]) == (["Q: hi\nA: "], ["yo"], [False])
    from gym.api import RowError

    with pytest.raises(RowError) as error:
        testing.call_strategy("chatml.intel", [{"question": "q", "completion": "a", "label": "maybe"}], KTO)
    assert error.value.field == "label"


def test_kto_rows_drop_and_count(tmp_path):
    import json

    from gym.api import prepare_data

    rows = [{"question": "good", "completion": "yes", "label": True},
            {"question": "no completion", "completion": "", "label": True},
            {"question": "no label", "completion": "x"},
            {"question": "", "completion": "x", "label": False},
            {"question": "bad", "completion": "no", "label": False}]
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = testing.validate({"base_model": testing.TINY_MODEL, "rl": "kto", "micro_batch_size": 2,
                            "datasets": [{"path": str(path), "type": "chatml.intel"}]})
    prepared = prepare_data(cfg)
    source = prepared.report.sources[0]
    assert source.kept == 2
    assert source.dropped == {"with no completion": 1, "with no label": 1, "with an empty prompt": 1}
    assert "1 desirable, 1 undesirable" in prepared.summary()


@pytest.mark.slow
@pytest.mark.parametrize("adapter", [None, "lora"])
def test_kto_trains(tmp_path, adapter):
    keys = {"adapter": adapter} if adapter else {}
    result = testing.run_config({"rl": "kto", "datasets": DATA, "micro_batch_size": 4, **keys}, steps=2,
                                tmp_path=tmp_path)
    assert result.method == "kto" and result.steps == 2
    assert "kl" in result.metrics
    out = Path(result.output_dir)
    assert "## Preference training (kto)" in (out / "README.md").read_text()
    if adapter:
        assert (out / "adapter_config.json").is_file() and not (out / "ref").exists()


# ------------------------------------------------------------------------------------- learning proofs


def marked_pairs(count: int, seed: int) -> list[dict]:
    """Addition pairs with a signal a tiny model learns in a few dozen steps: the chosen answer is the right sum
    ending in ".", the rejected one a near miss ending in "?"."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        wrong = a + b + rng.choice((-10, -1, 1, 10))
        rows.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
                     "chosen": [{"role": "assistant", "content": f"{a + b}."}],
                     "rejected": [{"role": "assistant", "content": f"{wrong}?"}]})
    return rows


def write_rows(path: Path, rows: list[dict]) -> str:
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def kto_rows(pairs: list[dict]) -> list[dict]:
    """Each pair as two KTO rows: the chosen answer desirable, the rejected one not."""
    return [{"prompt": p["prompt"], "completion": p[key], "label": key == "chosen"}
            for p in pairs for key in ("chosen", "rejected")]


def log_prob_margin(model_dir: str, pairs: list[dict]) -> float:
    """Mean over ``pairs`` of log p(chosen) - log p(rejected) under the causal LM in ``model_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    margins = []
    with torch.no_grad():
        for pair in pairs:
            prompt = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
            start = len(tokenizer(prompt)["input_ids"])
            scores = []
            for key in ("chosen", "rejected"):
                ids = torch.tensor([tokenizer(prompt + pair[key][0]["content"] + "<|im_end|>")["input_ids"]])
                logps = model(ids).logits[0, :-1].log_softmax(-1)
                scores.append(logps[torch.arange(start - 1, ids.shape[1] - 1), ids[0, start:]].sum().item())
            margins.append(scores[0] - scores[1])
    return sum(margins) / len(margins)


LEARN = {"sequence_len": 64, "micro_batch_size": 16, "learning_rate": 1e-3, "lr_scheduler": "constant",
         "logging_steps": 10}


@pytest.mark.slow
@pytest.mark.parametrize("rl, keys", [("orpo", {"orpo_alpha": 1.0}), ("kto", {})])
def test_a_short_run_makes_the_policy_prefer_the_chosen_answers(tmp_path, rl, keys):
    """From the untrained tiny model, 30 steps of ORPO (or KTO) on generated pairs raise the held-out log-probability
    margin of chosen over rejected from about 0 to clearly positive; TRL's reward figures agree."""
    held_out = marked_pairs(48, seed=99)
    train = marked_pairs(600, seed=1)
    data = write_rows(tmp_path / "train.jsonl", kto_rows(train) if rl == "kto" else train)
    before = log_prob_margin(str(testing.tiny_model()), held_out)
    result = testing.run_config({"rl": rl, "datasets": [{"path": data, "type": "passthrough"}], **LEARN, **keys}, steps=30,
                                tmp_path=tmp_path)
    after = log_prob_margin(result.output_dir, held_out)
    print(f"{rl}: held-out log-prob margin {before:+.3f} -> {after:+.3f}; "
          f"{ {k: round(v, 3) for k, v in result.metrics.items() if 'rewards' in k} }")
    assert abs(before) < 1.0 and after > before + 2.0
    assert result.metrics["rewards_margins"] > 0
