"""Tests of the qa plugin with gym's kit: no install needed (run with this folder on PYTHONPATH)."""

from __future__ import annotations

import json
import math

import pytest

import gym_plugin_qa as qa
from gym import testing
from gym.api import ConfigError, RowError

ROWS = [{"question": "What is 2 + 3?", "answer": "5"}, {"question": "Capital of France?", "answer": "Paris"}]


def config(**keys):
    return {"base_model": "builtin:tiny-llama-micro", "datasets": [{"path": "faq.jsonl", "type": "qa"}], **keys}


def test_config_key_and_dataset_options_validate():
    cfg = testing.validate(config(qa_answer_prefix="Answer:"), qa)
    assert cfg.qa_answer_prefix == "Answer:" and cfg.datasets[0].qa_question_field == "question"
    with pytest.raises(ConfigError) as err:
        testing.validate(config(qa_answer_prefix="  "), qa)
    assert any("qa_answer_prefix" in p and "blank" in p for p in err.value.problems)
    with pytest.raises(ConfigError) as err:
        testing.validate({**config(), "datasets": [{"path": "d.jsonl", "type": "alpaca", "qa_answer_field": "a"}]}, qa)
    assert any("datasets.0.qa_answer_field" in p for p in err.value.problems)


def test_prompt_is_masked_and_answer_and_eos_are_trained():
    tok = testing.tiny_tokenizer()
    out = testing.call_strategy("qa", ROWS, None, qa, tokenizer=tok)
    for ids, labels, row in zip(out["input_ids"], out["labels"], ROWS):
        assert tok.decode(ids) == f"Q: {row['question']}\nA: {row['answer']}{tok.eos_token}"
        trained = [t for t, label in zip(ids, labels) if label != -100]
        assert tok.decode(trained) == row["answer"] + tok.eos_token and labels[0] == -100


def test_train_on_inputs_and_own_field_names():
    rows = [{"q": "Why?", "a": "Because."}]
    out = testing.call_strategy("qa", rows, {"train_on_inputs": True, "qa_answer_prefix": ">>",
                                             "datasets": [{"qa_question_field": "q", "qa_answer_field": "a"}]}, qa)
    assert out["labels"] == out["input_ids"]
    with pytest.raises(RowError, match="'question'"):
        testing.call_strategy("qa", rows, None, qa)


def test_short_run_trains(tmp_path):
    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS * 4))
    result = testing.run_config({"datasets": [{"path": str(data), "type": "qa"}]}, qa, tmp_path=tmp_path)
    assert result.steps == 3 and math.isfinite(result.final_loss)
