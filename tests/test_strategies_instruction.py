"""alpaca (and its variants) and user-defined formats: what is trained, what is masked, and bad rows."""

from __future__ import annotations

import pytest

from gym.datasets_api import RowError
from gym.errors import ConfigError

def strategy_for(manager, tok, dataset: dict, **top):
    cfg = manager.schema().model.model_validate({"base_model": "tiny", "datasets": [dataset], **top})
    entry = cfg.datasets[0]
    name = "user_defined" if not isinstance(entry.type, str) else entry.type
    record, _ = manager.dataset_strategies()[name]
    return record.load_builder()(tokenizer=tok, cfg=cfg, dataset=entry)


def trained_text(tok, ids, labels):
    return tok.decode([t for t, label in zip(ids, labels) if label != -100])


def untrained_text(tok, ids, labels):
    return tok.decode([t for t, label in zip(ids, labels) if label == -100])


ROWS = {
    "instruction": ["Add the numbers", "Say hello"],
    "input": ["2 and 3", ""],
    "output": ["5", "Hello there"],
}


def test_alpaca_trains_only_the_output_and_eos(manager, tok):
    strategy = strategy_for(manager, tok, {"path": "d.jsonl", "type": "alpaca"})
    out = strategy.process_batch(ROWS)
    assert len(out["input_ids"]) == 2
    for ids, labels, output in zip(out["input_ids"], out["labels"], ROWS["output"]):
        assert len(ids) == len(labels)
        assert trained_text(tok, ids, labels) == output + tok.eos_token
        assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id
    first = tok.decode(out["input_ids"][0])
    assert "### Input:\n2 and 3\n\n### Response:\n5" in first
    second = tok.decode(out["input_ids"][1])
    assert "### Input" not in second and "### Instruction:\nSay hello\n\n### Response:\nHello there" in second
    assert "### Instruction" in untrained_text(tok, out["input_ids"][0], out["labels"][0])


def test_train_on_inputs_top_level_and_per_dataset(manager, tok):
    everything = strategy_for(manager, tok, {"path": "d.jsonl", "type": "alpaca"}, train_on_inputs=True)
    out = everything.process_batch(ROWS)
    assert out["labels"] == out["input_ids"]
    overridden = strategy_for(
        manager, tok, {"path": "d.jsonl", "type": "alpaca", "train_on_inputs": False}, train_on_inputs=True
    )
    out = overridden.process_batch(ROWS)
    assert trained_text(tok, out["input_ids"][0], out["labels"][0]) == "5" + tok.eos_token
    per_dataset = strategy_for(manager, tok, {"path": "d.jsonl", "type": "alpaca", "train_on_inputs": True})
    out = per_dataset.process_batch(ROWS)
    assert out["labels"] == out["input_ids"]


def test_alpaca_variants_use_their_own_prompts(manager, tok):
    chat = strategy_for(manager, tok, {"path": "d.jsonl", "type": "alpaca:chat"}).process_batch(ROWS)
    assert tok.decode(chat["input_ids"][1]).startswith("USER: Say hello\nASSISTANT: Hello there")
    assert trained_text(tok, chat["input_ids"][1], chat["labels"][1]) == "Hello there" + tok.eos_token
    phi = strategy_for(manager, tok, {"path": "d.jsonl", "type": "alpaca:phi"}).process_batch(ROWS)
    assert tok.decode(phi["input_ids"][0]).startswith("<|user|>\nAdd the numbers\n2 and 3<|end|>\n<|assistant|>\n5")


def test_missing_input_column_is_fine_missing_output_is_a_row_error(manager, tok):
    strategy = strategy_for(manager, tok, {"path": "d.jsonl", "type": "alpaca"})
    out = strategy.process_batch({"instruction": ["Say hi"], "output": ["hi"]})
    assert trained_text(tok, out["input_ids"][0], out["labels"][0]) == "hi" + tok.eos_token
    with pytest.raises(RowError) as err:
        strategy.process_batch({"instruction": ["a"], "answer": ["b"]})
    assert err.value.field == "output" and "answer" in str(err.value)
    with pytest.raises(RowError) as err:
        strategy.process_batch({"instruction": ["a", "b"], "output": ["fine", ["a", "list"]]})
    assert err.value.field == "output" and err.value.row == 1 and "list" in str(err.value)
    numbers = strategy.process_batch({"instruction": ["a"], "output": [42]})  # CSV columns of numbers
    assert trained_text(tok, numbers["input_ids"][0], numbers["labels"][0]) == "42" + tok.eos_token


def test_user_defined_format(manager, tok):
    spec = {
        "field_instruction": "question",
        "field_output": "answer",
        "field_system": "persona",
        "format": "[INST] {instruction} {input} [/INST] ",
        "no_input_format": "[INST] {instruction} [/INST] ",
        "system_format": "<<{system}>>\n",
        "system_prompt": "Be exact.",
    }
    strategy = strategy_for(manager, tok, {"path": "d.jsonl", "type": spec})
    rows = {
        "question": ["What is 2 + 2?", "Name a colour"],
        "input": ["show work", None],
        "answer": ["4", "blue"],
        "persona": ["", "You are a painter."],
    }
    out = strategy.process_batch(rows)
    assert tok.decode(out["input_ids"][0]) == "<<Be exact.>>\n[INST] What is 2 + 2? show work [/INST] 4" + tok.eos_token
    assert tok.decode(out["input_ids"][1]) == "<<You are a painter.>>\n[INST] Name a colour [/INST] blue" + tok.eos_token
    assert trained_text(tok, out["input_ids"][1], out["labels"][1]) == "blue" + tok.eos_token
    flipped = strategy_for(manager, tok, {"path": "d.jsonl", "type": spec}, train_on_inputs=True)
    out = flipped.process_batch(rows)
    assert out["labels"] == out["input_ids"]


def test_user_defined_without_format_uses_alpaca_and_bad_placeholders_are_config_errors(manager, tok):
    strategy = strategy_for(manager, tok, {"path": "d.jsonl", "type": {"field_instruction": "q", "field_output": "a"}})
    out = strategy.process_batch({"q": ["Say hi"], "a": ["hi"]})
    assert "### Instruction:\nSay hi\n\n### Response:\nhi" in tok.decode(out["input_ids"][0])
    with pytest.raises(ConfigError, match=r"\{question\}"):
        strategy_for(manager, tok, {"path": "d.jsonl", "type": {"format": "Q: {question}"}})
