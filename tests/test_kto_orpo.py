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
