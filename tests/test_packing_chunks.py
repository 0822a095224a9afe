"""Packing and counting work a chunk at a time (bounded memory); chunk sizes must not change the result."""

from __future__ import annotations

import numpy as np

from gym.plugins.sft import rows as prepare


def samples_dataset(n=300, seed=0):
    import datasets

    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for _ in range(n):
        length = int(rng.integers(1, 60))
        row = rng.integers(5, 500, size=length).tolist()
        ids.append(row)
        labels.append([-100 if i < length // 2 else t for i, t in enumerate(row)])
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": labels})


def test_chunked_packing_and_counting_equal_one_pass(monkeypatch, tmp_path):
    data = samples_dataset()
    whole, whole_eff = prepare.packed_dataset(data, 128, tmp_path / "whole.arrow")
    whole_counts = prepare.token_counts(data)
    monkeypatch.setattr(prepare, "PACK_CHUNK_TOKENS", 300)  # two packed rows per chunk
    monkeypatch.setattr(prepare, "COUNT_BATCH", 7)
    chunked, chunked_eff = prepare.packed_dataset(data, 128, tmp_path / "chunked.arrow")
    assert prepare.token_counts(data) == whole_counts
    assert chunked_eff == whole_eff
    assert len(chunked) == len(whole) > 10
    for column in ("input_ids", "labels", "position_ids"):
        assert chunked[column] == whole[column]
    lengths = [len(r) for r in data["input_ids"]]
    assert whole_counts[0] == sum(lengths)
    assert sum(len(r) for r in chunked["input_ids"]) == sum(lengths)
