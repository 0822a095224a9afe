"""completion / pretrain (raw text, split into pieces) and input_output (labelled segments)."""

from __future__ import annotations

import pytest

from gym.datasets_api import RowError
from gym.errors import ConfigError

def strategy_for(manager, tok, dataset: dict, **top):
    cfg = manager.schema().model.model_validate({"base_model": "tiny", "datasets": [dataset], **top})
    record, _ = manager.dataset_strategies()[cfg.datasets[0].type]
    return record.load_builder()(tokenizer=tok, cfg=cfg, dataset=cfg.datasets[0])


LONG = " ".join(f"word{i} is the number {i}." for i in range(60))


def test_completion_splits_long_text_and_keeps_every_piece(manager, tok):
    strategy = strategy_for(manager, tok, {"path": "d.jsonl", "type": "completion"}, sequence_len=32)
    out = strategy.process_batch({"text": [LONG, "short one"]})
    whole = tok(LONG, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    pieces = out["input_ids"][:-1]
    assert all(len(p) == 32 for p in pieces[:-1]) and 0 < len(pieces[-1]) <= 32
    assert [t for p in pieces for t in p] == whole
    assert out["labels"] == out["input_ids"]
    assert tok.decode(out["input_ids"][-1]) == "short one" + tok.eos_token


def test_completion_field_and_pretrain_text_column(manager, tok):
    completion = strategy_for(manager, tok, {"path": "d.jsonl", "type": "completion", "field": "body"})
    assert tok.decode(completion.process_batch({"body": ["hello"]})["input_ids"][0]) == "hello" + tok.eos_token
    with pytest.raises(RowError) as err:
        completion.process_batch({"text": ["hello"]})
    assert err.value.field == "body"
    pretrain = strategy_for(manager, tok, {"path": "d.jsonl", "type": "pretrain", "text_column": "content"}, sequence_len=16)
    out = pretrain.process_batch({"content": [LONG]})
    assert len(out["input_ids"]) > 3 and all(len(p) <= 16 for p in out["input_ids"])
    assert out["labels"] == out["input_ids"]
    with pytest.raises(ConfigError, match="disagree"):
        strategy_for(manager, tok, {"path": "d.jsonl", "type": "pretrain", "text_column": "a", "field": "b"})


def test_input_output_segments(manager, tok):
    strategy = strategy_for(manager, tok, {"path": "d.jsonl", "type": "input_output"})
    rows = {
        "segments": [
            [
                {"text": "Q: what is 1 + 1?\n", "label": False},
                {"text": "A: 2", "label": True},
                {"text": "\nQ: and 2 + 2?\n", "label": False},
                {"text": "A: 4", "label": True},
            ]
        ]
    }
    out = strategy.process_batch(rows)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert tok.decode(ids) == "Q: what is 1 + 1?\nA: 2\nQ: and 2 + 2?\nA: 4"
    assert tok.decode([t for t, label in zip(ids, labels) if label != -100]) == "A: 2A: 4"
    assert ids[-1] != tok.eos_token_id
    everything = strategy_for(manager, tok, {"path": "d.jsonl", "type": "input_output"}, train_on_inputs=True)
    out = everything.process_batch(rows)
    assert out["labels"] == out["input_ids"]
    with pytest.raises(RowError) as err:
        strategy.process_batch({"segments": [[{"text": "x", "label": True}], [{"text": "y", "label": "yes"}]]})
    assert err.value.row == 1 and err.value.field == "segments[0].label"
