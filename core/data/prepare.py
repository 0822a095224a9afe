"""The data phase: from the config's ``datasets:`` to the rows the trainer reads.

:func:`prepare_data` is the one entry point. The core does what every training method shares: each
dataset entry is read (:mod:`gym.data.loading`) and converted by its strategy (one batched
``Dataset.map``, errors located by file and row); the training method's :class:`gym.methods.DataShape`
checks each source's samples (counting every drop); the sources are mixed (shuffled with ``seed``),
``val_set_size`` is held out (or ``test_datasets`` are prepared the same way); and the shape turns each
split into its rows.

With ``dataset_prepared_path`` the result is stored under a fingerprint of everything that shapes it (see
:mod:`gym.data.cache`); an unchanged config loads it back memory-mapped, without loading the tokenizer.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from pathlib import Path
from typing import Any

from gym.data import cache as data_cache
from gym.output import process_count, process_rank
from gym.data.loading import content_fingerprint, describe, line_of_row, load_entry
from gym.datasets_api import RowError
from gym.errors import DataError, GymError
from gym.methods import SourceCounts

MAP_BATCH_SIZE = 1000


# ------------------------------------------------------------------------------------------ report


@dataclass
class SplitFigures:
    """One split after preparation: samples, rows and the method's own figures (tokens, ...)."""

    samples: int = 0
    rows: int = 0
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataReport:
    """Counts for ``gym preprocess`` / the run log; stored with the cache."""

    method: str = ""
    sources: list[SourceCounts] = field(default_factory=list)
    train: SplitFigures = field(default_factory=SplitFigures)
    eval: SplitFigures | None = None
    cache: str = "off"  # "hit", "miss" or "off"
    cache_path: str | None = None
    fingerprint: str = ""
    seconds: float = 0.0
    built_by: int | None = None  # the global rank that prepared the data, in a run of several processes

    @property
    def cache_hit(self) -> bool:
        return self.cache == "hit"

    @property
    def rows_read(self) -> int:
        return sum(s.rows for s in self.sources)

    def dropped(self, reason: str) -> int:
        return sum(s.dropped.get(reason, 0) for s in self.sources)

    def changed(self, what: str) -> int:
        return sum(s.changed.get(what, 0) for s in self.sources)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def figures(self) -> dict[str, float]:
        """The numbers of this report under flat, stable names (``data/rows_read``, ``data/dropped/too_long``,
        ``data/train/tokens``, ...): what trackers log and the run report shows. Numbers only."""
        out: dict[str, float] = {"data/rows_read": self.rows_read}
        for source in self.sources:
            for reason, count in source.dropped.items():
                out[f"data/dropped/{reason}"] = out.get(f"data/dropped/{reason}", 0) + count
            for what, count in source.changed.items():
                out[f"data/changed/{what}"] = out.get(f"data/changed/{what}", 0) + count
        for split, figures in (("train", self.train), ("eval", self.eval)):
            if figures is None:
                continue
            out[f"data/{split}/samples"] = figures.samples
            out[f"data/{split}/rows"] = figures.rows
            for name, value in figures.figures.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    out[f"data/{split}/{name}"] = value
        out["data/seconds"] = round(self.seconds, 3)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DataReport":
        data = dict(data)
        data["sources"] = [SourceCounts(**d) for d in data.get("sources", [])]
        data["train"] = SplitFigures(**data.get("train", {}))
        data["eval"] = SplitFigures(**data["eval"]) if data.get("eval") else None
        return cls(**data)


class PreparedData:
    """The prepared rows (``datasets.Dataset``, memory-mapped from ``folder`` when first used), what happened to
    the data, and the shape that made them. A cache hit that only reports (``gym preprocess``) never loads them,
    nor the ``datasets`` library."""

    def __init__(self, folder: Path, report: DataReport, shape: Any):
        self.folder = folder
        self.report = report
        self.shape = shape
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            import datasets

            try:
                train = datasets.load_from_disk(str(self.folder / "train"))
                eval_folder = self.folder / "eval"
                eval_set = datasets.load_from_disk(str(eval_folder)) if eval_folder.exists() else None
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"the prepared data in {self.folder} cannot be read ({exc}); delete that folder to rebuild it"
                ) from None
            self._loaded = (train, eval_set)
        return self._loaded

    @property
    def train(self) -> Any:
        return self._load()[0]

    @property
    def eval(self) -> Any | None:
        return self._load()[1]

    def summary(self) -> str:
        r = self.report
        lines = [source.describe() for source in r.sources]
        lines.append(self.shape.describe("train", r.train.samples, r.train.rows, r.train.figures))
        if r.eval is None:
            lines.append("eval: none")
        else:
            lines.append(self.shape.describe("eval", r.eval.samples, r.eval.rows, r.eval.figures))
        if r.cache == "off":
            once = f"prepared once, by rank {r.built_by}, for this machine's processes; " if r.built_by is not None else ""
            lines.append(f"cache: off ({once}set dataset_prepared_path to keep the prepared data)")
        else:
            verb = "loaded from" if r.cache_hit else "written to"
            lines.append(f"cache: {r.cache}, {verb} {r.cache_path} ({r.seconds:.2f}s)")
        return "\n".join(lines)


# -------------------------------------------------------------------------------- running strategies


class StrategyBatch:
    """The ``Dataset.map`` function: run the strategy on a batch, check its columns, locate its errors."""

    def __init__(self, converter: Any, columns: tuple[str, ...], entry: Any, type_name: str):
        self.converter = converter
        self.columns = columns
        # what naming a line needs, as plain data: worker processes get a pickled copy of this object
        self.entry = SimpleNamespace(path=entry.path, ds_type=entry.ds_type, shards=entry.shards)
        self.path = entry.path
        self.type_name = type_name

    def __call__(self, rows: dict[str, list], indices: list[int]) -> dict[str, list]:
        try:
            out = self.converter.process_batch(rows)
        except GymError:
            raise
        except Exception as exc:
            raise self._locate(rows, indices, exc) from None
        missing = [c for c in self.columns if c not in out]
        if missing:
            raise DataError(
                f"dataset {self.path}: strategy {self.type_name!r} gave no {', '.join(missing)} column "
                f"(it gave {', '.join(out) or 'nothing'})"
            )
        sizes = {name: len(out[name]) for name in self.columns}
        if len(set(sizes.values())) > 1:
            raise DataError(
                f"dataset {self.path}: strategy {self.type_name!r} gave columns of different lengths: "
                + ", ".join(f"{k} {v}" for k, v in sizes.items())
            )
        return {name: out[name] for name in self.columns}

    def _locate(self, rows: dict[str, list], indices: list[int], exc: Exception) -> DataError:
        """A DataError naming the dataset, the row and the field of the first row that fails."""
        row = getattr(exc, "row", None)
        if row is None:  # a third-party strategy: try the rows one at a time to find the culprit
            for i in range(len(indices)):
                try:
                    self.converter.process_batch({k: v[i : i + 1] for k, v in rows.items()})
                except Exception as single:
                    row, exc = i, single
                    break
        if row is not None and row < len(indices):
            line = line_of_row(self.entry, indices[row])
            where = f"row {indices[row]}" + (f" (line {line})" if line else "")
        else:
            where = f"rows {indices[0]}-{indices[-1]}" if indices else "a row"
        if isinstance(exc, RowError):
            field_name = f", field {exc.field!r}" if exc.field else ""
            return DataError(f"dataset {self.path} ({self.type_name}), {where}{field_name}: {exc}")
        return DataError(
            f"dataset {self.path} ({self.type_name}), {where}: the strategy failed: {type(exc).__name__}: {exc}"
        )


def _strategy_for(entry: Any, manager: Any, method: str) -> tuple[Any, str, str]:
    """(strategy record, the type name, its plugin and version for the fingerprint)."""
    from gym.config import strategy_of

    found = strategy_of(entry, manager, method)
    if found is None:
        raise DataError(
            f"dataset {entry.path}: unknown dataset type {entry.type!r} "
            f"(available: {', '.join(sorted(manager.dataset_strategies()))})"
        )
    strategy, type_name = found
    plugin_name = manager.strategy_for_method(strategy.name, method)[1]
    info = manager.infos.get(plugin_name)
    origin = f"{plugin_name} {info.distribution} {info.version}" if info else plugin_name
    return strategy, type_name, origin


def _convert_entry(
    entry: Any, role: str, cfg: Any, tokenizer: Any, manager: Any, shape: Any, work: Path, key: str
) -> tuple[Any, SourceCounts]:
    strategy, type_name, _ = _strategy_for(entry, manager, manager.training_method(cfg).name)
    counts = SourceCounts(path=entry.path, type=type_name, role=role)
    raw = load_entry(entry, num_proc=cfg.dataset_processes, local_cache_dir=str(work / "raw"))
    counts.rows = len(raw)
    if len(raw) == 0:
        raise DataError(f"dataset {describe(entry)}: the file holds no rows")
    converter = strategy.load_builder()(tokenizer=tokenizer, cfg=cfg, dataset=entry)
    num_proc = cfg.dataset_processes
    if num_proc is not None and (num_proc <= 1 or len(raw) < 2 * MAP_BATCH_SIZE):
        num_proc = None
    converted = raw.map(
        StrategyBatch(converter, strategy.columns, entry, type_name),
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        with_indices=True,
        remove_columns=raw.column_names,
        features=shape.features(strategy.columns),
        num_proc=num_proc,
        cache_file_name=str(work / f"{key}.arrow"),
        new_fingerprint=f"{key}-{work.name}",
        desc=f"Converting {describe(entry)} ({type_name})",
    )
    counts.samples = len(converted)
    kept = shape.samples(converted, counts, work, tokenizer=tokenizer)
    return kept, counts


# --------------------------------------------------------------------------------------- fingerprint


def _eval_count(val_set_size: float, samples: int) -> int:
    if val_set_size <= 0:
        return 0
    count = math.ceil(samples * val_set_size) if val_set_size < 1 else int(val_set_size)
    if count >= samples:
        raise DataError(
            f"val_set_size {val_set_size:g} holds out {count} samples, but there are only {samples}; "
            "lower val_set_size or add data"
        )
    return count


def fingerprint_parts(cfg: Any, manager: Any, tokenizer_key: str) -> dict[str, Any]:
    """Everything that shapes the prepared rows (the cache key): each source's content, strategy and options,
    the tokenizer, the training method, and every value a plugin names in ``gym_data_settings``."""

    def entries(items):
        out = []
        for entry in items or ():
            _, type_name, origin = _strategy_for(entry, manager, method)
            out.append(
                {
                    "entry": entry.model_dump(mode="json"),
                    "content": content_fingerprint(entry),
                    "strategy": type_name,
                    "plugin": origin,
                }
            )
        return out

    method = manager.training_method(cfg).name
    return {
        "datasets": entries(cfg.datasets),
        "test_datasets": entries(cfg.test_datasets),
        "tokenizer": tokenizer_key,
        "method": method,
        "settings": manager.merged_dict(
            "gym_data_settings",
            base={
                "sequence_len": cfg.sequence_len,
                "train_on_inputs": cfg.train_on_inputs,
                "excess_length_strategy": cfg.excess_length_strategy,
                "val_set_size": cfg.val_set_size,
                "seed": cfg.seed,
                "shuffle_merged_datasets": cfg.shuffle_merged_datasets,
            },
            cfg=cfg,
        ),
    }


# ------------------------------------------------------------------------------------------ the flow


def prepare_data(cfg: Any, tokenizer: Any = None, manager: Any = None) -> PreparedData:
    """The prepared train and eval rows for ``cfg``, from the cache when it is up to date.

    ``tokenizer`` may be ``None``: it is then loaded only if the data must be built (a cache hit never
    needs it, nor torch).
    """
    from gym.plugin_manager import get_plugin_manager

    manager = manager or get_plugin_manager()
    started = time.perf_counter()
    method = manager.training_method(cfg)
    tokenizer_key = data_cache.tokenizer_files_fingerprint(cfg)
    if tokenizer_key is None:  # a tokenizer with no local files: fingerprint the loaded one
        tokenizer = tokenizer or _load_tokenizer(cfg)
        tokenizer_key = data_cache.tokenizer_fingerprint(tokenizer)
    fingerprint = data_cache.fingerprint_of(fingerprint_parts(cfg, manager, tokenizer_key))

    def build(out: Path) -> DataReport:
        return _build(cfg, tokenizer or _load_tokenizer(cfg), manager, method, out)

    if not cfg.dataset_prepared_path:
        data_cache.remove_stale_builds(Path(tempfile.gettempdir()), "gym-prepared-")
        shared = _run_folder()
        if shared is None:
            folder = Path(tempfile.mkdtemp(prefix=f"gym-prepared-{data_cache.owner_tag()}-"))
            atexit.register(shutil.rmtree, folder, True)
            report = build(folder)
            report.fingerprint, report.cache = fingerprint, "off"
            return _finish(_load_prepared(folder, report, method), started)
        root, cache_label = shared, "off"
    else:
        root, cache_label = Path(cfg.dataset_prepared_path).expanduser(), None
        data_cache.remove_stale_builds(root, ".tmp-")
    final = root / fingerprint
    with data_cache.cache_lock(root, fingerprint):
        if not final.exists():
            report = data_cache.build_and_publish(root, fingerprint, build, final)
            if report is not None:
                report.fingerprint, report.cache, report.cache_path = fingerprint, "miss", str(final)
                report.built_by = process_rank() if cache_label else None
                (final / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
                report.cache = cache_label or report.cache
                return _finish(_load_prepared(final, report, method), started)
    try:
        report = DataReport.from_dict(json.loads((final / "report.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"the prepared data in {final} cannot be read ({exc}); delete that folder to rebuild it") from None
    report.cache, report.cache_path = cache_label or "hit", str(final)
    return _finish(_load_prepared(final, report, method), started)


def _run_folder() -> Path | None:
    """Where the processes of one run on this machine prepare the data once, without ``dataset_prepared_path``
    (``None`` for a run of one process). The first to take the lock builds; the others wait and load its rows.

    The folder is named after what the local processes share: the launcher that started them (their parent:
    torchrun's agent or another launcher) or, under ``srun``, the job step. Its host~pid tag
    lets a later run remove it when that launcher died without cleaning up."""
    env = os.environ
    if process_count() <= 1:
        return None
    host = data_cache.owner_tag().split("~")[0]
    if "SLURM_STEP_ID" in env and not env.get("TORCHELASTIC_RUN_ID"):
        name = f"gym-prepared-slurm-{env.get('SLURM_JOB_ID', '0')}.{env['SLURM_STEP_ID']}"
    else:
        name = f"gym-prepared-{host}~{os.getppid()}-run"
    folder = Path(tempfile.gettempdir()) / name
    if env.get("LOCAL_RANK", "0") == "0":
        atexit.register(shutil.rmtree, folder, True)
    return folder


def _load_tokenizer(cfg: Any) -> Any:
    from gym.model import load_tokenizer

    return load_tokenizer(cfg)


def _finish(prepared: PreparedData, started: float) -> PreparedData:
    prepared.report.seconds = time.perf_counter() - started
    return prepared


def _load_prepared(folder: Path, report: DataReport, method: Any) -> PreparedData:
    for split in ("train", "eval") if report.eval is not None else ("train",):
        if not (folder / split).is_dir():
            raise DataError(f"the prepared data in {folder} has no {split} split; delete that folder to rebuild it")
    return PreparedData(folder, report, method.data_shape)


def _build(cfg: Any, tokenizer: Any, manager: Any, method: Any, out: Path) -> DataReport:
    """Prepare everything into ``out/train`` and ``out/eval``; the report of what was done."""
    import numpy as np

    shape = method.data_shape
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    report = DataReport(method=method.name)
    try:
        parts: dict[str, list[Any]] = {"train": [], "test": []}
        for role, items in (("train", cfg.datasets), ("test", cfg.test_datasets or ())):
            for i, entry in enumerate(items):
                part, counts = _convert_entry(entry, role, cfg, tokenizer, manager, shape, work, f"{role}-{i}")
                parts[role].append(part)
                report.sources.append(counts)

        merged = _concatenate(parts["train"])
        samples = len(merged)
        if samples == 0:
            raise DataError(_nothing_left(report))
        order = np.random.default_rng(cfg.seed).permutation(samples) if cfg.shuffle_merged_datasets else np.arange(samples)
        held_out = _eval_count(cfg.val_set_size, samples)
        train = merged.select(order[: samples - held_out], new_fingerprint=f"train-{out.name}")
        if held_out:
            eval_set = merged.select(order[samples - held_out :], new_fingerprint=f"eval-{out.name}")
        elif parts["test"]:
            eval_set = _concatenate(parts["test"])
            if len(eval_set) == 0:
                raise DataError("test_datasets: no sample is left after the checks; see the counts above")
        else:
            eval_set = None

        for split, dataset in (("train", train), ("eval", eval_set)):
            if dataset is None:
                continue
            rows, figures = shape.rows(dataset, split, work, tokenizer=tokenizer)
            setattr(report, split, SplitFigures(samples=len(dataset), rows=len(rows), figures=figures))
            rows.save_to_disk(str(out / split))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _concatenate(parts: list[Any]) -> Any:
    import datasets

    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _nothing_left(report: DataReport) -> str:
    reasons = {reason for source in report.sources for reason in source.dropped}
    detail = ", ".join(f"{report.dropped(reason):,} {reason}" for reason in sorted(reasons)) or "none dropped"
    sources = "; ".join(source.describe() for source in report.sources)
    return f"no training sample is left: {report.rows_read:,} rows read; dropped: {detail} ({sources})"

