"""What dataset strategies share: reading fields of a batch, and encoding many texts in one tokenizer call.

A batch is a dict of columns (``{"instruction": [...], "output": [...]}``) as ``datasets.Dataset.map``
passes it. Strategies turn each row into *segments* (text pieces, each trained or not) and
:class:`SegmentEncoder` tokenizes all segments of the batch in one fast-tokenizer call
(``add_special_tokens=False``), then concatenates them per sample; untrained tokens get label ``-100``.
"""

from __future__ import annotations

from typing import Any, Sequence

from gym.datasets_api import RowError

IGNORE_INDEX = -100

Segment = tuple[str, bool]  # (text, trained)


def row_error(message: str, field: str | None, row: int) -> RowError:
    """A :class:`RowError` that also says which row of the batch failed (gym adds the dataset's index)."""
    error = RowError(message, field, row)
    return error


def column(rows: dict[str, list], name: str, what: str = "field") -> list:
    """The column ``name`` of a batch; a missing column is an error on the batch's first row."""
    if name not in rows:
        available = ", ".join(sorted(rows)) or "none"
        raise row_error(f"the row has no {what} {name!r} (columns: {available})", name, 0)
    return rows[name]


def text_at(values: list, i: int, name: str, optional: bool = False) -> str:
    """The string at row ``i``; ``None`` is ``""`` when ``optional``; numbers (CSV columns) are written out;
    anything else that is not text is an error."""
    value = values[i]
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if value is None:
        if optional:
            return ""
        raise row_error(f"{name!r} is empty (null)", name, i)
    raise row_error(f"{name!r} must be text, got {type(value).__name__}: {_short(value)}", name, i)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def train_on_inputs_for(cfg: Any, dataset: Any) -> bool:
    """The dataset's own ``train_on_inputs`` if set, else the top-level one."""
    own = getattr(dataset, "train_on_inputs", None)
    return bool(cfg.train_on_inputs if own is None else own)


class SegmentEncoder:
    """Tokenizes the segments of many samples in one batch call and builds ``input_ids`` / ``labels``."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False
        )["input_ids"]

    def encode(
        self, samples: Sequence[Sequence[Segment]], eos: Sequence[bool | None] | None = None
    ) -> dict[str, list[list[int]]]:
        """``samples[k]`` is a list of ``(text, trained)``; ``eos[k]`` appends the EOS token (trained or not),
        or nothing when ``None``."""
        texts = [text for segments in samples for text, _ in segments if text]
        pieces = iter(self.encode_texts(texts))
        all_ids: list[list[int]] = []
        all_labels: list[list[int]] = []
        for k, segments in enumerate(samples):
            ids: list[int] = []
            labels: list[int] = []
            for text, trained in segments:
                if not text:
                    continue
                piece = next(pieces)
                ids += piece
                labels += piece if trained else [IGNORE_INDEX] * len(piece)
            end = eos[k] if eos is not None else None
            if end is not None:
                if self.eos_token_id is None:
                    raise ValueError("the tokenizer has no EOS token; set special_tokens: {eos_token: ...}")
                ids.append(self.eos_token_id)
                labels.append(self.eos_token_id if end else IGNORE_INDEX)
            all_ids.append(ids)
            all_labels.append(labels)
        return {"input_ids": all_ids, "labels": all_labels}


def split_into_pieces(ids: list[int], labels: list[int], size: int) -> list[tuple[list[int], list[int]]]:
    """Cut one long sample into consecutive pieces of at most ``size`` tokens (every piece kept)."""
    if len(ids) <= size:
        return [(ids, labels)]
    return [(ids[start : start + size], labels[start : start + size]) for start in range(0, len(ids), size)]
