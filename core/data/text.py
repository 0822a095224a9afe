"""Strategy toolkit: raw-text samples, every token trained, an EOS at the end, long texts cut in pieces."""

from __future__ import annotations

from typing import Any

from gym.data.tokenizing import SegmentEncoder, column, split_into_pieces, text_at


class TextStrategy:
    """One text column; each text + EOS becomes as many ``sequence_len`` pieces as it needs (all kept)."""

    def __init__(self, tokenizer: Any, cfg: Any, field: str):
        self.encoder = SegmentEncoder(tokenizer)
        self.field = field
        self.piece_len = cfg.sequence_len

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        texts = column(rows, self.field, "text field (set `field`)")
        samples = [((text_at(texts, i, self.field),  True),) for i in range(len(texts))]
        encoded = self.encoder.encode(samples, eos=[True] * len(samples))
        out_ids: list[list[int]] = []
        out_labels: list[list[int]] = []
        for ids, labels in zip(encoded["input_ids"], encoded["labels"]):
            for piece_ids, piece_labels in split_into_pieces(ids, labels, self.piece_len):
                out_ids.append(piece_ids)
                out_labels.append(piece_labels)
        return {"input_ids": out_ids, "labels": out_labels}
