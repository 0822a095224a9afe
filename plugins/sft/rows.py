"""The shape of supervised rows: ``input_ids`` and ``labels`` (-100 where nothing is trained), cut or dropped
to ``sequence_len``, and packed into rows of ``sequence_len`` tokens with ``sample_packing``.

Per source, every sample's fate is decided in one batched ``Dataset.map`` and counted: kept, cut to
``sequence_len`` (``excess_length_strategy: truncate``), or dropped as too long, too short
(``min_sample_len``) or with no trained token. Per split, tokens and trained tokens are counted and, when
packing, the samples are packed a chunk at a time into an Arrow file, so memory does not grow with the data.
"""

from __future__ import annotations

import uuid
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gym.api import IGNORE_INDEX, DataError, DataShape, SourceCounts

if TYPE_CHECKING:
    import numpy as np

COLUMNS = ("input_ids", "labels")
PACKED_COLUMNS = ("input_ids", "labels", "position_ids")
COUNT_BATCH = 4_000  # rows read at a time when counting and packing
PACK_CHUNK_TOKENS = 2_000_000  # tokens packed at a time
_FATE_COLUMN = "_fate"


class SampleFate(IntEnum):
    """What the length rules decide for one sample; ``CUT`` is added when it was truncated first."""

    KEEP = 0
    TOO_LONG = 1
    NO_TRAINED = 2
    TOO_SHORT = 3
    CUT = 4


DROP_REASONS = {
    SampleFate.TOO_LONG: "longer than sequence_len",
    SampleFate.NO_TRAINED: "with no trained token",
    SampleFate.TOO_SHORT: "shorter than min_sample_len",
}


class LengthRules:
    """The ``Dataset.map`` function deciding each sample's fate (kept samples keep their tokens)."""

    def __init__(self, sequence_len: int, truncate: bool, min_len: int, where: str):
        self.sequence_len = sequence_len
        self.truncate = truncate
        self.min_len = min_len
        self.where = where

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        ids_out, labels_out, fates = [], [], []
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            if len(ids) != len(labels):
                raise DataError(
                    f"{self.where}: the strategy gave a sample whose input_ids and labels differ in length "
                    f"({len(ids)} and {len(labels)})"
                )
            fate, cut = SampleFate.KEEP, 0
            if len(ids) > self.sequence_len:
                if self.truncate:
                    ids, labels, cut = ids[: self.sequence_len], labels[: self.sequence_len], SampleFate.CUT
                else:
                    fate = SampleFate.TOO_LONG
            if fate == SampleFate.KEEP:
                if len(ids) < self.min_len:
                    fate = SampleFate.TOO_SHORT
                elif labels[1:].count(IGNORE_INDEX) == len(labels) - 1:  # the first token is never predicted
                    fate = SampleFate.NO_TRAINED
            if fate != SampleFate.KEEP:
                ids, labels = [], []
            ids_out.append(ids)
            labels_out.append(labels)
            fates.append(int(fate) + int(cut))
        return {"input_ids": ids_out, "labels": labels_out, _FATE_COLUMN: fates}


def _features(with_fate: bool = False):
    import datasets

    columns = {name: datasets.List(datasets.Value("int32")) for name in COLUMNS}
    if with_fate:
        columns[_FATE_COLUMN] = datasets.Value("int8")
    return datasets.Features(columns)


class SupervisedRows(DataShape):
    """:class:`gym.api.DataShape` of supervised fine-tuning."""

    columns = COLUMNS

    def __init__(self, cfg: Any):
        self.sequence_len = cfg.sequence_len
        self.truncate = cfg.excess_length_strategy == "truncate"
        self.min_len = cfg.min_sample_len or 0
        self.packed = bool(cfg.sample_packing)
        self.eval_packed = self.packed if cfg.eval_sample_packing is None else bool(cfg.eval_sample_packing)
        self.pad_to = cfg.sequence_len if cfg.pad_to_sequence_len else None

    def features(self, columns: tuple[str, ...]) -> Any:
        return _features() if tuple(columns) == COLUMNS else None

    def samples(self, dataset: Any, counts: SourceCounts, work: Path, tokenizer: Any = None) -> Any:
        import numpy as np

        checked = dataset.map(
            LengthRules(self.sequence_len, self.truncate, self.min_len, f"dataset {counts.path} ({counts.type})"),
            batched=True,
            batch_size=1000,
            features=_features(with_fate=True),
            cache_file_name=str(work / f"lengths-{uuid.uuid4().hex}.arrow"),
            desc="Checking lengths",
        )
        status = checked.data.column(_FATE_COLUMN).to_numpy().astype(np.int64)
        fate = status % SampleFate.CUT
        counts.change("truncated", int((status >= SampleFate.CUT).sum()))
        for reason, text in DROP_REASONS.items():
            counts.drop(text, int((fate == reason).sum()))
        keep = np.flatnonzero(fate == SampleFate.KEEP)
        counts.kept = int(len(keep))
        return checked.select(keep).remove_columns(_FATE_COLUMN)

    def rows(self, dataset: Any, split: str, work: Path, tokenizer: Any = None) -> tuple[Any, dict[str, Any]]:
        tokens, trained = token_counts(dataset)
        figures: dict[str, Any] = {"tokens": tokens, "trained_tokens": trained}
        packed = self.packed if split == "train" else self.eval_packed
        if packed:
            rows, efficiency = packed_dataset(dataset, self.sequence_len, work / f"{split}-packed.arrow")
            figures.update(packed=True, packing_efficiency=efficiency)
            return rows, figures
        return dataset.select_columns(list(COLUMNS)), figures

    def describe(self, split: str, samples: int, rows: int, figures: dict[str, Any]) -> str:
        line = (
            f"{split}: {samples:,} samples, {figures.get('tokens', 0):,} tokens "
            f"({figures.get('trained_tokens', 0):,} trained)"
        )
        if figures.get("packed"):
            line += (
                f", packed into {rows:,} rows of {self.sequence_len:,} tokens "
                f"(packing efficiency {100 * (figures.get('packing_efficiency') or 0):.1f}%)"
            )
        return line

    def collator(self, tokenizer: Any, training: bool) -> Any:
        from gym.plugins.sft.collator import SupervisedCollator

        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        packed = self.packed if training else self.eval_packed
        return SupervisedCollator(pad_id, packed=packed, pad_to=self.pad_to)

    def preview(self, dataset: Any, tokenizer: Any, count: int = 3) -> list[str]:
        """Each token with its label (-100: not trained)."""
        lines = []
        for i in range(min(count, len(dataset))):
            row = dataset[i]
            pieces = [f"{tokenizer.decode([t])!r}({label})" for t, label in zip(row["input_ids"], row["labels"])]
            lines.append(f"sample {i}: " + " ".join(pieces))
        return lines


# ------------------------------------------------------------------------------------ counting, packing


def _flat(dataset: Any, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat values) of a list column, with the dataset's row selection applied."""
    import numpy as np

    table = dataset.with_format("arrow")[:]
    array = table.column(column).combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.flatten().to_numpy(zero_copy_only=False)
    return offsets - offsets[0], values


def token_counts(dataset: Any) -> tuple[int, int]:
    """(tokens, trained tokens); a sample's first label never counts, as nothing predicts it."""
    tokens = trained = 0
    for start in range(0, len(dataset), COUNT_BATCH):
        offsets, labels = _flat(dataset.select(range(start, min(start + COUNT_BATCH, len(dataset)))), "labels")
        is_trained = labels != IGNORE_INDEX
        is_trained[offsets[:-1][offsets[1:] > offsets[:-1]]] = False
        tokens += len(labels)
        trained += int(is_trained.sum())
    return tokens, trained


def _lengths(dataset: Any) -> np.ndarray:
    import numpy as np
    import pyarrow.compute as pc

    parts = [
        pc.list_value_length(batch.column("input_ids")).to_numpy(zero_copy_only=False)
        for batch in dataset.select_columns(["input_ids"]).with_format("arrow").iter(batch_size=COUNT_BATCH)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def packed_dataset(dataset: Any, capacity: int, path: Path) -> tuple[Any, float]:
    """Pack by the plan a chunk of rows at a time into an Arrow file at ``path``, read back memory-mapped.

    Only one chunk's packed rows are ever in memory, so memory does not grow with the dataset.
    """
    import datasets
    import numpy as np
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    from gym.plugins.sft.packing import pack_columns, packing_efficiency, plan_packing

    lengths = _lengths(dataset)
    bins = plan_packing(lengths, capacity)
    columns = dataset.select_columns(list(COLUMNS))
    rows_per_chunk = max(1, PACK_CHUNK_TOKENS // capacity)
    features = datasets.Features({name: datasets.List(datasets.Value("int32")) for name in PACKED_COLUMNS})
    with ArrowWriter(features=features, path=str(path)) as writer:
        for start in range(0, len(bins), rows_per_chunk):
            chunk = bins[start : start + rows_per_chunk]
            part = columns.select([i for b in chunk for i in b])
            offsets, ids = _flat(part, "input_ids")
            _, labels = _flat(part, "labels")
            local, k = [], 0
            for b in chunk:  # the chunk's samples are numbered 0.. in the order they were selected
                local.append(range(k, k + len(b)))
                k += len(b)
            packed = pack_columns(offsets, ids.astype(np.int32), labels.astype(np.int32), local)
            arrays = [
                pa.ListArray.from_arrays(pa.array(packed[n][0].astype(np.int32)), pa.array(packed[n][1].astype(np.int32)))
                for n in PACKED_COLUMNS
            ]
            writer.write_table(pa.Table.from_arrays(arrays, names=list(PACKED_COLUMNS)))
        writer.finalize()
    return datasets.Dataset.from_file(str(path)), packing_efficiency(lengths, bins, capacity)
