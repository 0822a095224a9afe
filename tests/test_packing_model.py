"""Packed rows give the same logits and loss as the same samples unpacked (tiny fp32 model, sdpa and eager).

transformers keeps attention inside each packed sample when ``position_ids`` restart at every sample,
no ``attention_mask`` is passed and no cache is used (``masking_utils.find_packed_sequence_indices``);
the collator builds exactly such batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gym.plugins.sft.collator import SupervisedCollator
from gym.plugins.sft.packing import pack_columns, plan_packing


@pytest.fixture(scope="module")
def tok_and_model():
    from gym.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok, hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64).float().eval()
    return tok, model


def make_samples(tok, n=7):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        prompt = tok(f"What is {i} + {i * 3}? " * int(rng.integers(1, 4)), add_special_tokens=False)["input_ids"]
        answer = tok(f"It is {i * 4}.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        samples.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return samples


def packed_rows(samples, capacity):
    lengths = [len(s["input_ids"]) for s in samples]
    bins = plan_packing(lengths, capacity)
    offsets = np.cumsum([0] + lengths)
    ids = np.concatenate([s["input_ids"] for s in samples])
    labels = np.concatenate([s["labels"] for s in samples])
    packed = pack_columns(offsets, ids, labels, bins)
    rows = []
    row_offsets = packed["input_ids"][0]
    for r, (a, b) in enumerate(zip(row_offsets[:-1], row_offsets[1:])):
        rows.append({name: packed[name][1][a:b].tolist() for name in packed})
    return rows, bins


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_equals_unpacked(tok_and_model, attention):
    tok, model = tok_and_model
    model.set_attn_implementation(attention)
    samples = make_samples(tok)
    capacity = max(len(s["input_ids"]) for s in samples) * 2 + 3
    rows, bins = packed_rows(samples, capacity)
    assert len(rows) < len(samples) and any(len(b) > 1 for b in bins)

    unpacked = SupervisedCollator(tok.pad_token_id, packed=False)(samples)
    packed = SupervisedCollator(tok.pad_token_id, packed=True, pad_to=capacity)(rows)
    assert "attention_mask" not in packed and packed["input_ids"].shape[1] == capacity
    with torch.no_grad():
        plain = model(**unpacked, use_cache=False)
        together = model(**packed, use_cache=False)

    for r, members in enumerate(bins):
        start = 0
        for i in members:
            n = len(samples[i]["input_ids"])
            torch.testing.assert_close(
                together.logits[r, start : start + n], plain.logits[i, :n], rtol=0, atol=1e-5
            )
            start += n
    assert abs(together.loss.item() - plain.loss.item()) < 1e-5


def test_a_cache_breaks_packing_so_training_must_pass_use_cache_false(tok_and_model):
    """With a cache transformers ignores position_ids restarts: samples would attend to each other."""
    tok, model = tok_and_model
    model.set_attn_implementation("sdpa")
    samples = make_samples(tok, n=4)
    rows, bins = packed_rows(samples, sum(len(s["input_ids"]) for s in samples))
    assert len(rows) == 1
    batch = SupervisedCollator(tok.pad_token_id, packed=True)(rows)
    with torch.no_grad():
        isolated = model(**batch, use_cache=False).logits
        leaking = model(**batch, use_cache=True).logits
    first = len(samples[bins[0][0]]["input_ids"])
    torch.testing.assert_close(isolated[0, :first], leaking[0, :first])
    assert (isolated[0, first:] - leaking[0, first:]).abs().max() > 1e-3
