"""The packing plan (valid, efficient, fast), packed rows, and packing through prepare_datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gym.plugins.sft.packing import pack_columns, packing_efficiency, plan_packing


def assert_valid(bins, lengths, capacity):
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths))), "every sample exactly once"
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins), "no bin over capacity"
    assert all(b for b in bins)


def test_plan_is_valid_and_tight_on_random_lengths():
    rng = np.random.default_rng(0)
    for capacity in (64, 2048):
        lengths = rng.integers(1, capacity + 1, size=3000).tolist()
        bins = plan_packing(lengths, capacity)
        assert_valid(bins, lengths, capacity)
        lower_bound = -(-sum(lengths) // capacity)
        assert len(bins) <= 1.05 * lower_bound + 1
    skewed = np.clip(rng.exponential(300, size=5000).astype(int) + 1, 1, 2048).tolist()
    bins = plan_packing(skewed, 2048)
    assert_valid(bins, skewed, 2048)
    assert packing_efficiency(skewed, bins, 2048) > 0.97


def test_plan_edge_cases():
    assert plan_packing([], 10) == []
    assert plan_packing([10, 10, 10], 10) == [[0], [1], [2]]
    assert sorted(map(sorted, plan_packing([5, 5, 3, 7], 10))) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="capacity"):
        plan_packing([11], 10)
    with pytest.raises(ValueError):
        plan_packing([0, 3], 10)


def test_plan_for_100k_samples_is_valid_and_tight():
    """(Its speed is measured in bench/packing.py, not here.)"""
    lengths = np.random.default_rng(1).integers(16, 1024, size=100_000)
    bins = plan_packing(lengths, 2048)
    assert sorted(i for b in bins for i in b) == list(range(100_000))
    assert all(lengths[b].sum() <= 2048 for b in bins)
    assert packing_efficiency(lengths, bins, 2048) > 0.99


def test_pack_columns_restarts_positions_and_masks_first_labels():
    samples = [[10, 11, 12], [20, 21], [30, 31, 32, 33], [40]]
    offsets = np.cumsum([0] + [len(s) for s in samples])
    ids = np.concatenate(samples)
    labels = ids.copy()
    labels[5] = -100  # a masked prompt token of sample 2
    bins = [[2, 1], [0, 3]]
    packed = pack_columns(offsets, ids, labels, bins)
    row_offsets, values = packed["input_ids"]
    rows = [values[a:b].tolist() for a, b in zip(row_offsets[:-1], row_offsets[1:])]
    assert rows == [[30, 31, 32, 33, 20, 21], [10, 11, 12, 40]]
    _, positions = packed["position_ids"]
    assert positions.tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2, 0]
    _, packed_labels = packed["labels"]
    assert packed_labels.tolist() == [-100, 31, 32, 33, -100, 21, -100, 11, 12, -100]


@pytest.fixture(scope="module")
def setup():
    from gym.plugin_manager import GymPluginManager
    from gym.tiny import build_tokenizer

    manager = GymPluginManager()
    manager.load_entry_points(environ={"GYM_PLUGINS": "sft,alpaca,completion"})
    return manager, build_tokenizer()


def test_prepare_with_packing(setup, tmp_path):
    from gym.data.prepare import prepare_data

    manager, tok = setup
    path = tmp_path / "a.jsonl"
    rows = [{"instruction": f"Add {i} and {i}", "input": "x" * (i % 7), "output": str(2 * i)} for i in range(120)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def cfg(**top):
        base = {"base_model": "tiny", "datasets": [{"path": str(path), "type": "alpaca"}], "sequence_len": 512}
        return manager.schema().model.model_validate({**base, **top})

    plain = prepare_data(cfg(val_set_size=20, sample_packing=False), tok, manager=manager)
    packed = prepare_data(cfg(val_set_size=20, sample_packing=True), tok, manager=manager)
    assert packed.train.column_names == ["input_ids", "labels", "position_ids"]
    assert packed.eval.column_names == ["input_ids", "labels", "position_ids"]
    report = packed.report
    assert report.train.samples == 100 and report.train.rows == len(packed.train) < 100
    assert report.train.figures["tokens"] == plain.report.train.figures["tokens"]
    assert report.train.figures["trained_tokens"] == plain.report.train.figures["trained_tokens"]
    assert report.train.figures["packing_efficiency"] == pytest.approx(report.train.figures["tokens"] / (report.train.rows * 512))
    assert "packing efficiency" in packed.summary()
    samples = set()
    for row in packed.train:
        assert len(row["input_ids"]) <= 512
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert starts[0] == 0
        for a, b in zip(starts, starts[1:] + [len(row["input_ids"])]):
            assert row["position_ids"][a:b] == list(range(b - a))
            assert row["labels"][a] == -100
            samples.add(tuple(row["input_ids"][a:b]))
    assert samples == {tuple(x) for x in plain.train["input_ids"]}
    unpacked_eval = prepare_data(
        cfg(val_set_size=20, sample_packing=True, eval_sample_packing=False), tok, manager=manager
    )
    assert unpacked_eval.eval.column_names == ["input_ids", "labels"] and len(unpacked_eval.eval) == 20
