"""Preprocessing speed and memory: gym's ``prepare_data`` against the fast tokenizer's batch call alone.

    python bench/preprocess.py                      # alpaca 10k, alpaca 100k, chat 10k
    python bench/preprocess.py --cases alpaca:10000 --repeat 3
    python bench/preprocess.py --cases alpaca:1000000 --sequence-len 8192   # bigger runs

For each case the rows are generated once (``bench/datagen.py``, not timed) and then, each in its own fresh
process so that memory figures belong to one measurement:

- ``floor``: the same texts (rendered with the Alpaca prompt or the chat template beforehand, not timed)
  through the tokenizer's batch call, 1000 texts a call, results dropped after counting;
- ``gym cold``: ``gym.data.prepare.prepare_data(cfg, tokenizer)`` with an empty
  ``dataset_prepared_path`` and an empty datasets cache (``HF_DATASETS_CACHE``);
- ``gym warm``: the same again, the cache left by the cold run in place.

With ``--repeat N`` the three run N times, interleaved (floor, cold, warm, floor, cold, ...), so that a burst
of load from other jobs hits both sides of the comparison; the cold / floor ratio is the median of the
ratios of each pair. Times cover only the call measured (not the interpreter start, imports or building the
tokenizer); CPU time (all threads of the process) is recorded too. Memory:
``peak RSS`` is the process's ``ru_maxrss``; ``peak heap`` is the sampled peak of resident anonymous memory
(the heap, excluding memory-mapped Arrow files) above what the process held just before the call.
Targets: cold within 1.5x of the floor; warm under 1 s; heap not growing with the dataset beyond the data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import dir_size_mib, quickstart_base_model, emit_result, fresh_dir, peak_rss_mib, print_machine, print_table, run_child  # noqa: E402,E501
from _memory import MemorySampler, current_anon_mib, current_file_mib  # noqa: E402

DEFAULT_CASES = "alpaca:10000,alpaca:100000,chat:10000"
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n{output}"
)
FLOOR_BATCH = 1000
COLD_TARGET, WARM_TARGET_S = 1.5, 1.0


# ------------------------------------------------------------------------------------------ helpers


def load_quickstart_tokenizer(cfg):
    """The tokenizer gym itself would load for this config, or ``gym.tiny.build_tokenizer()``."""
    try:
        from gym.model import load_tokenizer
    except ImportError:
        from gym.tiny import build_tokenizer

        return build_tokenizer(), "gym.tiny.build_tokenizer()"
    return load_tokenizer(cfg), f"gym.model.load_tokenizer ({cfg.base_model})"


def write_config(path: Path, kind: str, data: Path, prepared: Path, sequence_len: int, packing: bool) -> None:
    import yaml

    dataset = {"path": str(data), "type": "alpaca" if kind == "alpaca" else "chat_template"}
    if kind == "chat":
        dataset["field_messages"] = "messages"
    config = {
        "base_model": quickstart_base_model(),
        "datasets": [dataset],
        "dataset_prepared_path": str(prepared),
        "sequence_len": sequence_len,
        "sample_packing": packing,
        "val_set_size": 0,
        "output_dir": str(path.parent / "out"),
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def column_token_count(dataset) -> tuple[int, int]:
    """(rows, tokens) of a prepared split, read from the Arrow offsets when it is a ``datasets.Dataset``."""
    if dataset is None:
        return 0, 0
    table = getattr(dataset, "data", None)
    if table is not None and hasattr(table, "column"):
        import pyarrow.compute as pc

        ids = table.column("input_ids")
        return len(dataset), int(pc.sum(pc.list_value_length(ids)).as_py() or 0)
    return len(dataset), sum(len(row["input_ids"]) for row in dataset)


# ------------------------------------------------------------------------------------- child: floor


def child_floor(kind: str, data: str) -> None:
    from datagen import read_jsonl
    from gym.config import load_config

    cfg = load_config(os.environ["GYM_BENCH_CONFIG"])
    tokenizer, source = load_quickstart_tokenizer(cfg)
    rows = read_jsonl(Path(data))
    if kind == "alpaca":
        texts = [
            (ALPACA_WITH_INPUT if r["input"].strip() else ALPACA_NO_INPUT).format(**r) + tokenizer.eos_token
            for r in rows
        ]
    else:
        texts = tokenizer.apply_chat_template([r["messages"] for r in rows], tokenize=False)
    del rows
    baseline, baseline_file = current_anon_mib(), current_file_mib()
    tokens = 0
    with MemorySampler() as memory:
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(0, len(texts), FLOOR_BATCH):
            ids = tokenizer(texts[i:i + FLOOR_BATCH], add_special_tokens=False)["input_ids"]
            tokens += sum(len(x) for x in ids)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    emit_result({
        "seconds": seconds, "cpu_seconds": cpu_seconds, "rows": len(texts), "tokens": tokens, "tokenizer": source,
        "peak_rss_mib": peak_rss_mib(), "peak_heap_mib": memory.peak_anon_mib - baseline,
        "peak_mapped_mib": memory.peak_file_mib - baseline_file,
    })


# --------------------------------------------------------------------------------------- child: gym


def child_gym(config: str) -> None:
    from gym.config import load_config
    from gym.data.prepare import prepare_data

    cfg = load_config(config)
    tokenizer, source = load_quickstart_tokenizer(cfg)
    import datasets  # noqa: F401  (imported before the baseline, as a training run would have)

    baseline, baseline_file = current_anon_mib(), current_file_mib()
    profile_to = os.environ.get("GYM_BENCH_PROFILE")
    profiler = None
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
    with MemorySampler() as memory:
        start, cpu_start = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        prepared = prepare_data(cfg, tokenizer)
        if profiler:
            profiler.disable()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = peak_rss_mib()
    if profiler:
        import io
        import pstats

        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        Path(profile_to).write_text(out.getvalue())
    rows, tokens = column_token_count(prepared.train)
    eval_rows, eval_tokens = column_token_count(getattr(prepared, "eval", None))
    report = getattr(prepared, "report", None)
    if report is not None and getattr(report, "packed", False):  # packed: count the samples, not the rows
        rows, eval_rows = report.train.samples, report.eval.samples
    print(prepared.summary())
    emit_result({
        "seconds": seconds, "cpu_seconds": cpu_seconds, "rows": rows + eval_rows, "tokens": tokens + eval_tokens,
        "tokenizer": source,
        "peak_rss_mib": peak, "peak_heap_mib": memory.peak_anon_mib - baseline,
        "peak_mapped_mib": memory.peak_file_mib - baseline_file,
    })


# ------------------------------------------------------------------------------------------ parent


def _profile_env(folder: Path | None, name: str) -> dict[str, str]:
    return {"GYM_BENCH_PROFILE": str(folder / f"{name}.txt")} if folder else {}


def run_once(args: list[str], env: dict[str, str]) -> dict:
    return run_child(HERE / "preprocess.py", args, env=env)


def fastest(results: list[dict]) -> dict:
    return min(results, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"KIND:ROWS,... (default {DEFAULT_CASES})")
    parser.add_argument("--sequence-len", type=int, default=8192,
                        help="sequence_len (default 8192: long enough that no generated row is dropped)")
    parser.add_argument("--packing", action="store_true", help="also pack (sample_packing: true)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="interleaved runs of each measurement (fastest shown, ratios: median of pairs)")
    parser.add_argument("--workdir", default=None, help="where data and caches go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="write a cProfile report of each gym run to DIR (times then include profiling)")
    opts, rest = parser.parse_known_args()

    if rest:
        if rest[0] == "_floor":
            return child_floor(rest[1], rest[2])
        if rest[0] == "_gym":
            return child_gym(rest[1])
        parser.error(f"unknown arguments {rest}")

    from datagen import write_jsonl

    work = Path(opts.workdir or tempfile.mkdtemp(prefix="gym-bench-preprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    print_machine("Preprocessing")
    print(f"sequence_len {opts.sequence_len}, sample_packing {opts.packing}; {opts.repeat} interleaved run(s) "
          f"of each measurement, the table shows the fastest; "
          f"work folder {work}")
    print()
    table, memory_rows, notes = [], [], []
    try:
        for case in opts.cases.split(","):
            kind, n = case.split(":")
            n = int(n)
            data = write_jsonl(kind, n, work / f"{kind}-{n}.jsonl")
            case_dir = work / f"{kind}-{n}"
            prepared = case_dir / "prepared"
            config = case_dir / "config.yml"
            fresh_dir(case_dir)
            write_config(config, kind, data, prepared, opts.sequence_len, opts.packing)
            env = {
                "GYM_BENCH_CONFIG": str(config),
                "HF_DATASETS_CACHE": str(case_dir / "hf-datasets-cache"),
                "HF_HUB_OFFLINE": "1",
            }

            def empty_caches() -> None:
                for path in (prepared, case_dir / "hf-datasets-cache"):
                    shutil.rmtree(path, ignore_errors=True)

            profile = Path(opts.profile).resolve() / f"{kind}-{n}" if opts.profile else None
            if profile:
                profile.mkdir(parents=True, exist_ok=True)
            floors, colds, warms = [], [], []
            for _ in range(opts.repeat):  # interleaved, so that a burst of load hits floor and gym alike
                floors.append(run_once(["_floor", kind, str(data)], env))
                empty_caches()
                colds.append(run_once(["_gym", str(config)], {**env, **_profile_env(profile, "cold")}))
                warms.append(run_once(["_gym", str(config)], {**env, **_profile_env(profile, "warm")}))
            pair_ratios = [c["seconds"] / f["seconds"] for f, c in zip(floors, colds)]
            cpu_ratios = [c["cpu_seconds"] / f["cpu_seconds"] for f, c in zip(floors, colds)]
            cold_ratio = statistics.median(pair_ratios)
            floor, cold, warm = fastest(floors), fastest(colds), fastest(warms)
            data_mib = data.stat().st_size / 2**20
            cache_mib = dir_size_mib(prepared) if prepared.exists() else 0.0
            label = f"{kind} {n:,}"
            for name, r in (("floor (tokenizer only)", floor), ("gym cold", cold), ("gym warm", warm)):
                table.append([
                    label, name, r["seconds"], r["rows"], r["rows"] / r["seconds"], r["tokens"] / r["seconds"],
                    r["peak_rss_mib"], r["peak_heap_mib"],
                ])
            verdict_cold = "yes" if cold_ratio <= COLD_TARGET else "MISSED"
            verdict_warm = "yes" if warm["seconds"] < WARM_TARGET_S else "MISSED"
            notes.append([label, f"{cold_ratio:.2f}x", ", ".join(f"{x:.2f}" for x in pair_ratios),
                          f"{statistics.median(cpu_ratios):.2f}x", verdict_cold,
                          warm["seconds"], verdict_warm, floor["tokens"], cold["tokens"]])
            memory_rows.append([label, data_mib, cache_mib, cold["peak_heap_mib"], cold["peak_mapped_mib"],
                                warm["peak_heap_mib"], warm["peak_mapped_mib"]])
            print(f"done: {label}", file=sys.stderr)
        print("Times in seconds; rows/s and tokens/s over the call measured; memory in MiB.")
        print()
        print(f"tokenizer: {floor['tokenizer']}")
        print()
        print_table(["data", "measurement", "seconds", "rows", "rows/s", "tokens/s", "peak RSS", "peak heap"],
                    table)
        print(f"Targets: cold <= {COLD_TARGET}x floor, warm < {WARM_TARGET_S} s. cold / floor: median of the "
              "ratios of each interleaved (floor, cold) pair of runs, by wall clock (judged) and by the process's "
              "CPU time (all threads).")
        print()
        print_table(["data", "cold / floor", "per pair", "CPU time ratio", "cold target", "warm s", "warm target",
                     "floor tokens", "gym tokens"], notes)
        print("Memory (MiB): the data file, gym's prepared cache, and for each gym run the peaks, above what the "
              "process held when the call started, of its heap (resident anonymous memory) and of its resident "
              "file-backed pages (memory-mapped Arrow files, newly loaded libraries).")
        print()
        print_table(["data", "jsonl", "prepared cache", "cold heap", "cold mapped", "warm heap", "warm mapped"],
                    memory_rows)
    finally:
        if not opts.keep and not opts.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
