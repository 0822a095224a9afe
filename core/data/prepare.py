"""From the config's ``datasets:`` to the rows the trainer reads: load, tokenize, check lengths, mix, split, pack.

:func:`prepare_datasets` is the one entry point. Each dataset entry is read, tokenized by its strategy
(one batched ``Dataset.map``), cut to ``sequence_len`` or dropped (``excess_length_strategy``), and
samples with nothing to train are dropped; every such sample is counted in the report. The datasets
are mixed (shuffled with ``seed``), ``val_set_size`` is held out (or ``test_datasets`` are prepared the
same way), and with ``sample_packing`` the samples are packed into rows of ``sequence_len`` tokens.

With ``dataset_prepared_path`` the result is stored under a fingerprint of everything that shapes it
(see :mod:`gym.data.cache`); an unchanged config loads it back memory-mapped.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gym.data import cache as data_cache
from gym.data.loading import content_fingerprint, describe, load_entry
from gym.data.tokenizing import IGNORE_INDEX
from gym.datasets_api import RowError
from gym.errors import ConfigError, DataError, GymError

# A sample's fate, plus CUT when it was truncated first (a truncated sample may still be dropped).
KEEP, TOO_LONG, NO_TRAINED, TOO_SHORT = range(4)
CUT = 4
COLUMNS = ("input_ids", "labels")
PACKED_COLUMNS = ("input_ids", "labels", "position_ids")
MAP_BATCH_SIZE = 1000


# ------------------------------------------------------------------------------------------ report


@dataclass
class DatasetCounts:
    """What happened to the rows of one dataset entry."""

    path: str
    type: str
    role: str  # "train" or "test"
    rows: int = 0
    samples: int = 0  # produced by the strategy (long texts may give several)
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_trained: int = 0
    dropped_too_short: int = 0


@dataclass
class DataReport:
    """Counts for ``gym preprocess`` / the run log; also stored with the cache."""

    datasets: list[DatasetCounts] = field(default_factory=list)
    sequence_len: int = 0
    train_samples: int = 0
    train_rows: int = 0
    train_tokens: int = 0
    train_trained_tokens: int = 0
    eval_samples: int = 0
    eval_rows: int = 0
    eval_tokens: int = 0
    eval_trained_tokens: int = 0
    packed: bool = False
    eval_packed: bool = False
    packing_efficiency: float | None = None
    eval_packing_efficiency: float | None = None
    cache: str = "off"  # "hit", "miss" or "off"
    cache_path: str | None = None
    fingerprint: str = ""
    seconds: float = 0.0

    @property
    def cache_hit(self) -> bool:
        return self.cache == "hit"

    def _total(self, name: str) -> int:
        return sum(getattr(d, name) for d in self.datasets)

    @property
    def rows_read(self) -> int:
        return self._total("rows")

    @property
    def truncated(self) -> int:
        return self._total("truncated")

    @property
    def dropped_too_long(self) -> int:
        return self._total("dropped_too_long")

    @property
    def dropped_no_trained(self) -> int:
        return self._total("dropped_no_trained")

    @property
    def dropped_too_short(self) -> int:
        return self._total("dropped_too_short")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DataReport":
        data = dict(data)
        data["datasets"] = [DatasetCounts(**d) for d in data.get("datasets", [])]
        return cls(**data)


def _n(value: int) -> str:
    return f"{value:,}"


@dataclass
class PreparedData:
    """The prepared rows: columns ``input_ids``, ``labels`` and, when packed, ``position_ids``."""

    train: Any  # datasets.Dataset
    eval: Any | None
    report: DataReport

    def summary(self) -> str:
        r = self.report
        lines = []
        for d in r.datasets:
            dropped = []
            for count, what in (
                (d.dropped_too_long, "too long"),
                (d.dropped_no_trained, "with no trained token"),
                (d.dropped_too_short, "too short"),
            ):
                if count:
                    dropped.append(f"{_n(count)} {what}")
            notes = []
            if dropped:
                notes.append("dropped " + ", ".join(dropped))
            if d.truncated:
                notes.append(f"truncated {_n(d.truncated)}")
            note = f" ({'; '.join(notes)})" if notes else ""
            lines.append(f"{d.role} data {d.path} [{d.type}]: {_n(d.rows)} rows -> {_n(d.kept)} samples{note}")
        for name, samples, rows, tokens, trained, packed, efficiency in (
            ("train", r.train_samples, r.train_rows, r.train_tokens, r.train_trained_tokens, r.packed,
             r.packing_efficiency),
            ("eval", r.eval_samples, r.eval_rows, r.eval_tokens, r.eval_trained_tokens, r.eval_packed,
             r.eval_packing_efficiency),
        ):
            if name == "eval" and self.eval is None:
                lines.append("eval: none")
                continue
            line = f"{name}: {_n(samples)} samples, {_n(tokens)} tokens ({_n(trained)} trained)"
            if packed:
                line += (
                    f", packed into {_n(rows)} rows of {_n(r.sequence_len)} tokens "
                    f"(packing efficiency {100 * (efficiency or 0):.1f}%)"
                )
            lines.append(line)
        if r.cache == "off":
            lines.append("cache: off (set dataset_prepared_path to keep the prepared data)")
        else:
            verb = "loaded from" if r.cache_hit else "written to"
            lines.append(f"cache: {r.cache}, {verb} {r.cache_path} ({r.seconds:.2f}s)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ tokenizing


class TokenizeBatch:
    """The ``Dataset.map`` function: run the strategy, apply the length rules, mark each sample's fate."""

    def __init__(self, strategy: Any, entry: Any, type_name: str, cfg: Any):
        self.strategy = strategy
        self.path = entry.path
        self.type_name = type_name
        self.sequence_len = cfg.sequence_len
        self.truncate = cfg.excess_length_strategy == "truncate"
        self.min_len = cfg.min_sample_len or 0

    def __call__(self, rows: dict[str, list], indices: list[int]) -> dict[str, list]:
        try:
            out = self.strategy.tokenize_batch(rows)
        except GymError:
            raise
        except Exception as exc:
            raise self._locate(rows, indices, exc) from None
        all_ids, all_labels = out["input_ids"], out["labels"]
        if len(all_ids) != len(all_labels):
            raise DataError(f"dataset {self.path}: strategy {self.type_name!r} gave different numbers of input_ids and labels")
        ids_out, labels_out, status_out = [], [], []
        limit = self.sequence_len
        for ids, labels in zip(all_ids, all_labels):
            if not isinstance(ids, list) or not isinstance(labels, list):  # numpy arrays from a third party
                ids, labels = list(ids), list(labels)
            if len(ids) != len(labels):
                raise DataError(
                    f"dataset {self.path}: strategy {self.type_name!r} gave a sample whose input_ids and labels "
                    f"differ in length ({len(ids)} and {len(labels)})"
                )
            fate, cut = KEEP, 0
            if len(ids) > limit:
                if self.truncate:
                    ids, labels, cut = ids[:limit], labels[:limit], CUT
                else:
                    fate = TOO_LONG
            if fate == KEEP:
                if len(ids) < self.min_len:
                    fate = TOO_SHORT
                elif labels[1:].count(IGNORE_INDEX) == len(labels) - 1:  # the first token is never predicted
                    fate = NO_TRAINED
            if fate != KEEP:
                ids, labels = [], []
            ids_out.append(ids)
            labels_out.append(labels)
            status_out.append(fate + cut)
        return {"input_ids": ids_out, "labels": labels_out, "_status": status_out}

    def _locate(self, rows: dict[str, list], indices: list[int], exc: Exception) -> DataError:
        """A DataError naming the dataset, the row and the field of the first row that fails."""
        row = getattr(exc, "row", None)
        if row is None:  # a third-party strategy: try the rows one at a time to find the culprit
            size = len(indices)
            for i in range(size):
                try:
                    self.strategy.tokenize_batch({k: v[i : i + 1] for k, v in rows.items()})
                except Exception as single:
                    row, exc = i, single
                    break
        where = f"row {indices[row]}" if row is not None and row < len(indices) else (
            f"rows {indices[0]}-{indices[-1]}" if indices else "a row"
        )
        if isinstance(exc, RowError):
            field_name = f", field {exc.field!r}" if exc.field else ""
            return DataError(f"dataset {self.path} ({self.type_name}), {where}{field_name}: {exc}")
        return DataError(
            f"dataset {self.path} ({self.type_name}), {where}: the strategy failed: {type(exc).__name__}: {exc}"
        )


def _features():
    import datasets

    return datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "labels": datasets.List(datasets.Value("int32")),
            "_status": datasets.Value("int8"),
        }
    )


def _strategy_for(entry: Any, manager: Any) -> tuple[Any, str, str]:
    """(strategy record, the type name, a description of its plugin for the fingerprint)."""
    from gym.schema import UserDefinedFormat

    strategies = manager.dataset_strategies()
    name = "user_defined" if isinstance(entry.type, UserDefinedFormat) else entry.type
    if name not in strategies:
        raise DataError(
            f"dataset {entry.path}: unknown dataset type {name!r} (available: {', '.join(sorted(strategies))})"
        )
    strategy, plugin_name = strategies[name]
    info = manager.infos.get(plugin_name)
    origin = f"{plugin_name} {info.distribution} {info.version}" if info else plugin_name
    return strategy, name, origin


def _tokenize_entry(
    entry: Any, role: str, cfg: Any, tokenizer: Any, manager: Any, work: Path, key: str
) -> tuple[Any, DatasetCounts]:
    strategy, type_name, _ = _strategy_for(entry, manager)
    counts = DatasetCounts(path=entry.path, type=type_name, role=role)
    raw = load_entry(entry, num_proc=cfg.dataset_processes, local_cache_dir=str(work / "raw"))
    counts.rows = len(raw)
    builder = strategy.load_builder()
    tokenize = TokenizeBatch(builder(tokenizer=tokenizer, cfg=cfg, dataset=entry), entry, type_name, cfg)
    num_proc = cfg.dataset_processes
    if num_proc is not None and (num_proc <= 1 or len(raw) < 2 * MAP_BATCH_SIZE):
        num_proc = None
    tokenized = raw.map(
        tokenize,
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        with_indices=True,
        remove_columns=raw.column_names,
        features=_features(),
        num_proc=num_proc,
        cache_file_name=str(work / f"{key}.arrow"),
        new_fingerprint=f"{key}-{work.name}",
        desc=f"Tokenizing {describe(entry)} ({type_name})",
    )
    status = tokenized.data.column("_status").to_numpy().astype(np.int64)
    fate = status % CUT
    counts.samples = int(len(status))
    counts.truncated = int((status >= CUT).sum())
    counts.dropped_too_long = int((fate == TOO_LONG).sum())
    counts.dropped_no_trained = int((fate == NO_TRAINED).sum())
    counts.dropped_too_short = int((fate == TOO_SHORT).sum())
    keep = np.flatnonzero(fate == KEEP)
    counts.kept = int(len(keep))
    kept = tokenized.select(keep, new_fingerprint=f"{key}-kept-{work.name}").remove_columns("_status")
    return kept, counts


# --------------------------------------------------------------------------------- mixing, packing


def _eval_count(val_set_size: float, samples: int) -> int:
    if val_set_size <= 0:
        return 0
    if val_set_size < 1:
        count = int(np.ceil(samples * val_set_size))
    else:
        if val_set_size != int(val_set_size):
            raise ConfigError(f"val_set_size {val_set_size}: a value of 1 or more is a sample count; write a whole number")
        count = int(val_set_size)
    if count >= samples:
        raise DataError(
            f"val_set_size {val_set_size:g} holds out {count} samples, but there are only {samples}; "
            "lower val_set_size or add data"
        )
    return count


def _flat(dataset: Any, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, flat values) of a list column, with the dataset's row selection applied."""
    table = dataset.with_format("arrow")[:]
    array = table.column(column).combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.flatten().to_numpy(zero_copy_only=False)
    return offsets - offsets[0], values


COUNT_BATCH = 4_000  # rows read at a time when counting and packing, so memory does not grow with the data
PACK_CHUNK_TOKENS = 2_000_000  # tokens packed at a time


def _token_counts(dataset: Any) -> tuple[int, int]:
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
    import pyarrow.compute as pc

    parts = [
        pc.list_value_length(batch.column("input_ids")).to_numpy(zero_copy_only=False)
        for batch in dataset.select_columns(["input_ids"]).with_format("arrow").iter(batch_size=COUNT_BATCH)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _packed_dataset(dataset: Any, capacity: int, path: Path) -> tuple[Any, float]:
    """Pack by the plan a chunk of rows at a time into an Arrow file at ``path``, read back memory-mapped.

    Only one chunk's packed rows are ever in memory, so memory does not grow with the dataset.
    """
    import datasets
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    from gym.data.packing import pack_columns, packing_efficiency, plan_packing

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


# ------------------------------------------------------------------------------------------ the flow


def _eval_packing(cfg: Any) -> bool:
    return cfg.sample_packing if cfg.eval_sample_packing is None else bool(cfg.eval_sample_packing)


def fingerprint_parts(cfg: Any, tokenizer: Any, manager: Any) -> dict[str, Any]:
    """Everything that shapes the prepared rows (the cache key)."""

    def entries(items):
        out = []
        for entry in items or ():
            _, type_name, origin = _strategy_for(entry, manager)
            out.append(
                {
                    "entry": entry.model_dump(mode="json"),
                    "content": content_fingerprint(entry),
                    "strategy": type_name,
                    "plugin": origin,
                }
            )
        return out

    return {
        "datasets": entries(cfg.datasets),
        "test_datasets": entries(cfg.test_datasets),
        "tokenizer": data_cache.tokenizer_fingerprint(tokenizer),
        "settings": {
            "sequence_len": cfg.sequence_len,
            "sample_packing": bool(cfg.sample_packing),
            "eval_sample_packing": _eval_packing(cfg),
            "train_on_inputs": cfg.train_on_inputs,
            "excess_length_strategy": cfg.excess_length_strategy,
            "min_sample_len": cfg.min_sample_len,
            "val_set_size": cfg.val_set_size,
            "seed": cfg.seed,
            "shuffle_merged_datasets": cfg.shuffle_merged_datasets,
            "chat_template": cfg.chat_template,
            "chat_template_jinja": cfg.chat_template_jinja,
        },
    }


def prepare_datasets(cfg: Any, tokenizer: Any, manager: Any = None) -> PreparedData:
    """Tokenized (and packed) train and eval datasets for ``cfg``, from the cache when it is up to date."""
    from gym.plugin_manager import get_plugin_manager

    manager = manager or get_plugin_manager()
    started = time.perf_counter()
    fingerprint = data_cache.fingerprint_of(fingerprint_parts(cfg, tokenizer, manager))
    if not cfg.dataset_prepared_path:
        build = Path(tempfile.mkdtemp(prefix="gym-prepared-"))
        atexit.register(shutil.rmtree, build, True)
        report = _build(cfg, tokenizer, manager, build)
        report.fingerprint, report.cache = fingerprint, "off"
        return _finish(_load_prepared(build, report), started)

    root = Path(cfg.dataset_prepared_path).expanduser()
    final = root / fingerprint
    with data_cache.cache_lock(root, fingerprint):
        if not final.exists():
            build = data_cache.new_build_dir(root, fingerprint)
            try:
                report = _build(cfg, tokenizer, manager, build)
                report.fingerprint, report.cache, report.cache_path = fingerprint, "miss", str(final)
                (build / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
            except BaseException:
                shutil.rmtree(build, ignore_errors=True)
                raise
            if data_cache.publish(build, final):
                return _finish(_load_prepared(final, report), started)
    try:
        report = DataReport.from_dict(json.loads((final / "report.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"the prepared data in {final} cannot be read ({exc}); delete that folder to rebuild it") from None
    report.cache, report.cache_path = "hit", str(final)
    return _finish(_load_prepared(final, report), started)


def _finish(prepared: PreparedData, started: float) -> PreparedData:
    prepared.report.seconds = time.perf_counter() - started
    return prepared


def _load_prepared(folder: Path, report: DataReport) -> PreparedData:
    import datasets

    try:
        train = datasets.load_from_disk(str(folder / "train"))
        eval_set = datasets.load_from_disk(str(folder / "eval")) if (folder / "eval").exists() else None
    except (OSError, ValueError) as exc:
        raise DataError(f"the prepared data in {folder} cannot be read ({exc}); delete that folder to rebuild it") from None
    return PreparedData(train=train, eval=eval_set, report=report)


def _build(cfg: Any, tokenizer: Any, manager: Any, out: Path) -> DataReport:
    """Prepare everything into ``out/train`` and ``out/eval``; the report of what was done."""
    import datasets

    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    report = DataReport(sequence_len=cfg.sequence_len)
    try:
        train_parts = []
        for i, entry in enumerate(cfg.datasets):
            part, counts = _tokenize_entry(entry, "train", cfg, tokenizer, manager, work, f"train-{i}")
            train_parts.append(part)
            report.datasets.append(counts)
        test_parts = []
        for i, entry in enumerate(cfg.test_datasets or ()):
            part, counts = _tokenize_entry(entry, "test", cfg, tokenizer, manager, work, f"test-{i}")
            test_parts.append(part)
            report.datasets.append(counts)

        merged = datasets.concatenate_datasets(train_parts) if len(train_parts) > 1 else train_parts[0]
        samples = len(merged)
        if samples == 0:
            raise DataError(_nothing_left(report))
        order = (
            np.random.default_rng(cfg.seed).permutation(samples) if cfg.shuffle_merged_datasets else np.arange(samples)
        )
        held_out = _eval_count(cfg.val_set_size, samples)
        train = merged.select(order[: samples - held_out], new_fingerprint=f"train-{out.name}")
        if held_out:
            eval_set = merged.select(order[samples - held_out :], new_fingerprint=f"eval-{out.name}")
        elif test_parts:
            eval_set = datasets.concatenate_datasets(test_parts) if len(test_parts) > 1 else test_parts[0]
            if len(eval_set) == 0:
                raise DataError("test_datasets: no sample is left after the length checks; see the counts above")
        else:
            eval_set = None

        report.packed, report.eval_packed = bool(cfg.sample_packing), _eval_packing(cfg) and eval_set is not None
        report.train_samples = len(train)
        report.train_tokens, report.train_trained_tokens = _token_counts(train)
        if cfg.sample_packing:
            train, report.packing_efficiency = _packed_dataset(train, cfg.sequence_len, work / "train-packed.arrow")
        else:
            train = train.select_columns(list(COLUMNS))
        report.train_rows = len(train)
        train.save_to_disk(str(out / "train"))
        if eval_set is not None:
            report.eval_samples = len(eval_set)
            report.eval_tokens, report.eval_trained_tokens = _token_counts(eval_set)
            if report.eval_packed:
                eval_set, report.eval_packing_efficiency = _packed_dataset(eval_set, cfg.sequence_len, work / "eval-packed.arrow")
            else:
                eval_set = eval_set.select_columns(list(COLUMNS))
            report.eval_rows = len(eval_set)
            eval_set.save_to_disk(str(out / "eval"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _nothing_left(report: DataReport) -> str:
    return (
        f"no training sample is left: {report.rows_read} rows read, {report.dropped_too_long} longer than "
        f"sequence_len (excess_length_strategy: drop), {report.dropped_no_trained} with no trained token, "
        f"{report.dropped_too_short} shorter than min_sample_len"
    )
