"""Batching tokenized rows: pad to the longest row (or a fixed length), labels padded with -100.

Unpacked rows get an ``attention_mask``. Packed rows get ``position_ids`` and *no* attention mask:
transformers then finds the samples of each row from where ``position_ids`` restart
(``masking_utils.find_packed_sequence_indices``) and keeps attention inside each sample. The padding
of a packed row gets positions restarting at 0, so it is a sample of its own that no real token sees.
The model must run without a cache (``use_cache=False``, e.g. ``model.config.use_cache = False`` for
training): with a cache, transformers does not look for packed samples and they attend to each other.
"""

from __future__ import annotations

from typing import Any, Sequence

from gym.api import IGNORE_INDEX


class SupervisedCollator:
    """``SupervisedCollator(pad_token_id, packed, pad_to)(rows) -> {input_ids, labels, attention_mask | position_ids}``.

    ``pad_to`` pads every batch to at least that length (``sequence_len`` with ``pad_to_sequence_len``).
    A ``pad_token_id`` of ``None`` pads with 0: padding is never attended to nor trained.
    """

    def __init__(self, pad_token_id: int | None, packed: bool, pad_to: int | None = None):
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        self.packed = packed
        self.pad_to = pad_to

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not rows:
            raise ValueError("SupervisedCollator got an empty batch")
        lengths = [len(row["input_ids"]) for row in rows]
        width = max(max(lengths), self.pad_to or 0)
        batch = len(rows)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        if self.packed:
            positions = torch.zeros((batch, width), dtype=torch.long)
        else:
            attention = torch.zeros((batch, width), dtype=torch.long)
        for r, (row, n) in enumerate(zip(rows, lengths)):
            input_ids[r, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            row_labels = row.get("labels")
            labels[r, :n] = torch.as_tensor(row_labels if row_labels is not None else row["input_ids"], dtype=torch.long)
            if self.packed:
                given = row.get("position_ids")
                positions[r, :n] = (
                    torch.as_tensor(given, dtype=torch.long) if given is not None else torch.arange(n)
                )
                positions[r, n:] = torch.arange(width - n)
            else:
                attention[r, :n] = 1
        out = {"input_ids": input_ids, "labels": labels}
        if self.packed:
            out["position_ids"] = positions
        else:
            out["attention_mask"] = attention
        return out
