"""SupervisedCollator: padding, labels -100, attention_mask for unpacked rows, position_ids (and no mask) for packed."""

from __future__ import annotations

import torch

from gym.plugins.sft.collator import SupervisedCollator

ROWS = [
    {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    {"input_ids": [8, 9], "labels": [8, 9]},
]


def test_unpacked_rows_pad_to_the_longest_with_a_mask():
    batch = SupervisedCollator(pad_token_id=1, packed=False)(ROWS)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, 9, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_to_sequence_len():
    batch = SupervisedCollator(pad_token_id=0, packed=False, pad_to=6)(ROWS)
    assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]


def test_packed_rows_get_position_ids_restarting_in_the_padding_and_no_mask():
    rows = [
        {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, 7, -100, 9], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [3, 4], "labels": [-100, 4], "position_ids": [0, 1]},
    ]
    batch = SupervisedCollator(pad_token_id=2, packed=True, pad_to=8)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert batch["labels"][1].tolist() == [-100, 4, -100, -100, -100, -100, -100, -100]
    assert batch["input_ids"][1].tolist() == [3, 4, 2, 2, 2, 2, 2, 2]


def test_packed_collator_on_rows_without_position_ids_treats_each_row_as_one_sample():
    batch = SupervisedCollator(pad_token_id=None, packed=True)(ROWS)
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]
    assert batch["input_ids"][1].tolist() == [8, 9, 0]


def test_sft_rows_choose_the_collator_from_the_packing_settings():
    from types import SimpleNamespace

    from gym.plugins.sft.rows import SupervisedRows

    tok = SimpleNamespace(pad_token_id=None, eos_token_id=7)
    cfg = SimpleNamespace(sample_packing=True, eval_sample_packing=False, pad_to_sequence_len=True, sequence_len=16,
                          excess_length_strategy="drop", min_sample_len=None)
    train = SupervisedRows(cfg).collator(tok, training=True)
    evaluation = SupervisedRows(cfg).collator(tok, training=False)
    assert (train.packed, evaluation.packed, train.pad_to, train.pad_token_id) == (True, False, 16, 7)
    cfg.eval_sample_packing = None
    assert SupervisedRows(cfg).collator(tok, training=False).packed is True
