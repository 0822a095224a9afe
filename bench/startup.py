"""Start-up cost: a warm ``gym preprocess``, and ``gym run`` up to the first optimizer step of a full fine-tune.

    python bench/startup.py                         # 3 runs of each, builtin:tiny-llama, 10k cached rows
    python bench/startup.py --runs 5 --rows 20000
    python bench/startup.py --model-dir /path/to/model   # any local model folder (config, weights, tokenizer)
    python bench/startup.py --bigger                # a generated ~100M-parameter Llama instead of the tiny one

Everything runs as fresh processes through the installed ``gym`` console script, as a user would run it, with
``OMP_NUM_THREADS`` set (``--threads``, default 1). One config is written to the work folder: the model,
``builtin:addition?rows=N`` as ``chat_template`` data, ``dataset_prepared_path`` and ``output_dir`` in the work
folder, ``max_steps: 1``, ``logging_steps: 1``, ``save_strategy: "no"``, no adapter (a full fine-tune).

- ``gym preprocess`` is run once to build the prepared-data cache (reported as "cold", not a target), then
  ``--runs`` times warm: wall time of the whole process. Target (a): under 1.5 s, and torch not imported.
- baseline: ``python -c "import torch, transformers; AutoModelForCausalLM.from_pretrained(MODEL)"``, wall
  time of the whole process (the child also reports its own split).
- ``gym run CONFIG``: wall time to the first optimizer step, i.e. to the moment the trainer's first loss log
  line (``{'loss': ...}``, logged at step 1) reaches the pipe; the child runs with ``PYTHONUNBUFFERED=1`` and every
  line is timestamped as it arrives. The run is split at gym's own log lines: ``cache: hit`` (imports, tokenizer,
  data), ``[gym] training`` (model loaded, trainer built), the first loss (first step), exit (saving, and the
  interpreter's shutdown). Target (b): first step within 1.5x of the baseline.
- One more run of each gym command (not timed) under ``PYTHONPROFILEIMPORTTIME=1`` and an import tracer that
  calls the function of the ``gym`` console script in-process: which heavy modules it imported (torch for the
  preprocess; peft, trl, bitsandbytes, which a full fine-tune does not need), when, which module and line
  imported each first, and which gym functions were on the stack.

Baseline and ``gym run`` are interleaved (baseline, run, baseline, run, ...) so that load from other jobs hits
both; the ratio is of the medians. About 2 minutes with the defaults on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import RESULT_MARK, print_machine, print_table  # noqa: E402

PREPROCESS_TARGET_S = 1.5
RUN_RATIO_TARGET = 1.5
HEAVY = ("torch", "transformers", "datasets", "pyarrow", "tokenizers", "accelerate", "peft", "trl", "bitsandbytes",
         "deepspeed", "liger_kernel", "flash_attn", "safetensors")
# Modules a full fine-tune (no adapter, no quantization) has no use for.
NOT_NEEDED_FOR_FULL = ("peft", "trl", "bitsandbytes", "deepspeed", "liger_kernel")

CHILD_CWD = [tempfile.gettempdir()]  # the work folder, once made

CACHE_LINE = re.compile(r"cache: (hit|miss|off)\b")
TRAINING_LINE = re.compile(r"^\[gym\] training\b")
LOSS_LINE = re.compile(r"""^\{['"]loss['"]\s*:""")
WHOLE_RUN = re.compile(r"\(whole run ([0-9.]+)s\)")

BASELINE = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import transformers
t2 = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])
t3 = time.perf_counter()
params = sum(p.numel() for p in model.parameters())
print(%r + json.dumps({"import torch": t1 - t0, "import transformers": t2 - t1, "from_pretrained": t3 - t2,
                       "params": params}), flush=True)
""" % RESULT_MARK

# Runs the `gym` console script's function in this process, and writes at exit which heavy modules were imported
# and, for each, when, by which file and line, and through which gym functions (innermost first).
TRACER = r"""
import atexit, json, os, sys, time
WATCH = set(%r)
T0 = time.perf_counter()
FIRST = {}

class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name not in WATCH or name in FIRST:
            return None
        caller = sys._getframe(1)  # importlib's _find_spec; a real import calls it from _find_and_load_unlocked
        if caller.f_back is None or caller.f_back.f_code.co_name != "_find_and_load_unlocked":
            return None
        frame, importer, gym_frames = caller, None, []
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if importer is None and not frame.f_code.co_filename.startswith("<frozen"):
                importer = f"{module}:{frame.f_lineno}"
            if module == "gym" or module.startswith("gym."):
                gym_frames.append(f"{module}.{frame.f_code.co_name}:{frame.f_lineno}")
            frame = frame.f_back
        FIRST[name] = {"at": time.perf_counter() - T0, "importer": importer, "gym": gym_frames[:3]}
        return None

sys.meta_path.insert(0, _Watch())

def _report():
    with open(os.environ["GYM_BENCH_TRACE"], "w") as f:
        json.dump({"first": FIRST, "imported": [m for m in sorted(WATCH) if m in sys.modules]}, f)

atexit.register(_report)
from importlib.metadata import entry_points
found = list(entry_points(group="console_scripts", name="gym"))
if found:
    main = found[0].load()
else:
    from gym.cli import main
sys.argv = ["gym", *sys.argv[1:]]
sys.exit(main())
""" % (HEAVY,)

# Writes a random Llama-style model (the tiny model's tokenizer) of the given size into a folder.
MAKE_MODEL = r"""
import sys, torch, transformers
src, dst, hidden, layers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tok = transformers.AutoTokenizer.from_pretrained(src)
config = transformers.AutoConfig.from_pretrained(src)
config.hidden_size, config.num_hidden_layers = hidden, layers
config.intermediate_size = hidden * 11 // 4
config.num_attention_heads, config.num_key_value_heads = max(1, hidden // 64), max(1, hidden // 128)
config.head_dim = 64 if hidden >= 64 else hidden
torch.manual_seed(0)
model = transformers.AutoModelForCausalLM.from_config(config)
model.save_pretrained(dst)
tok.save_pretrained(dst)
print(sum(p.numel() for p in model.parameters()))
"""


# ------------------------------------------------------------------------------------------ helpers


def gym_executable() -> str:
    candidate = Path(sys.executable).with_name("gym")
    found = str(candidate) if candidate.exists() else shutil.which("gym")
    if not found:
        sys.exit("the `gym` command is not installed (pip install -e .)")
    return found


def child_env(threads: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"  # each line reaches the pipe when printed, so that its timestamp is right
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the hub; never wait on the network
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    env.update(extra)
    return env


def run_timed(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, float, list[tuple[float, str]]]:
    """Run ``cmd``; (exit code, wall seconds, [(seconds since start, line)]) with stdout and stderr merged.

    Lines are split at newlines and carriage returns (progress bars), each stamped when it reaches the pipe.
    """
    start = time.perf_counter()
    # Not in the repository: ``python -c`` puts the working folder first on sys.path, where a stale
    # ``*.egg-info`` of an editable install would shadow the installed entry points.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=CHILD_CWD[0],
                            bufsize=0)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    lines: list[tuple[float, str]] = []
    pending = b""
    try:
        while True:
            chunk = proc.stdout.read(65536)
            if not chunk:
                break
            now = time.perf_counter() - start
            pending += chunk
            *done, pending = re.split(rb"[\r\n]", pending)
            lines.extend((now, part.decode(errors="replace")) for part in done if part.strip())
        proc.wait()
    finally:
        killer.cancel()
    wall = time.perf_counter() - start
    if pending.strip():
        lines.append((wall, pending.decode(errors="replace")))
    return proc.returncode, wall, lines


def fail(what: str, cmd: list[str], lines: list[tuple[float, str]], code: int) -> None:
    tail = "\n".join(line for _, line in lines[-40:])
    sys.exit(f"{what} failed (exit {code}): {' '.join(cmd)}\n{tail}")


def first_time(lines: list[tuple[float, str]], pattern: re.Pattern) -> float | None:
    return next((t for t, line in lines if pattern.search(line)), None)


def spread(values: list[float]) -> list[float | None]:
    """min, median, max (Nones when nothing was measured)."""
    values = [v for v in values if v is not None]
    if not values:
        return [None, None, None]
    return [min(values), statistics.median(values), max(values)]


# ----------------------------------------------------------------------------------------- importtime


def parse_importtime(lines: list[str]) -> list[tuple[int, str, float]]:
    """(depth, module, cumulative seconds) of every ``import time:`` line, in the order printed (children first)."""
    out = []
    for line in lines:
        at = line.find("import time:")  # a progress bar may precede it on the same line
        if at < 0 or "cumulative" in line:
            continue
        try:
            _self_us, cumulative_us, name = line[at:].split(":", 1)[1].split("|")
            cumulative = int(cumulative_us) / 1e6
        except ValueError:
            continue
        stripped = name.lstrip(" ")
        depth = (len(name) - len(stripped) - 1) // 2
        out.append((depth, stripped.strip(), cumulative))
    return out


def import_costs(entries: list[tuple[int, str, float]]) -> dict[str, float]:
    """Cumulative seconds of the first import of each module (including what it imported)."""
    costs: dict[str, float] = {}
    for _, name, cumulative in entries:
        costs.setdefault(name, cumulative)
    return costs


def diagnose(args: list[str], threads: int, timeout: float, workdir: Path) -> dict:
    """One extra run of ``gym ARGS`` under the tracer and ``PYTHONPROFILEIMPORTTIME=1``: what it imported, who
    imported each heavy module first (the file and the gym functions on the stack) and what each import cost."""
    trace = workdir / "trace.json"
    trace.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", TRACER, *args]
    env = child_env(threads, PYTHONPROFILEIMPORTTIME="1", GYM_BENCH_TRACE=str(trace))
    code, wall, lines = run_timed(cmd, env, timeout)
    if code != 0 or not trace.exists():
        fail("gym " + " ".join(args) + " (import trace)", cmd, lines, code)
    report = json.loads(trace.read_text())
    entries = parse_importtime([line for _, line in lines])
    report["costs"] = import_costs(entries)
    report["top"] = sorted(((n, c) for d, n, c in entries if d == 0), key=lambda item: -item[1])[:5]
    return report


# -------------------------------------------------------------------------------------------- set-up


def write_config(path: Path, base_model: str, rows: int, workdir: Path) -> None:
    path.write_text(textwrap.dedent(f"""\
        # written by bench/startup.py: a full fine-tune (no adapter), one optimizer step
        base_model: {base_model}
        datasets:
          - path: builtin:addition?rows={rows}
            type: chat_template
        chat_template: tokenizer_default
        sequence_len: 64
        micro_batch_size: 8
        gradient_accumulation_steps: 1
        max_steps: 1
        optimizer: adamw_torch
        learning_rate: 1.0e-3
        lr_scheduler: constant
        logging_steps: 1
        save_strategy: "no"
        seed: 42
        dataset_prepared_path: {workdir / "prepared"}
        output_dir: {workdir / "output"}
        """))


def materialized_builtin(name: str, env: dict[str, str]) -> Path:
    """The local folder of a ``builtin:`` model (gym has made it by now, in its cache)."""
    code = f"from gym.builtin import materialize_model; print(materialize_model({name!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=CHILD_CWD[0])
    if proc.returncode == 0 and proc.stdout.strip():
        return Path(proc.stdout.strip().splitlines()[-1])
    home = Path(env.get("GYM_HOME") or Path.home() / ".cache" / "gym").expanduser()
    short = name.split(":", 1)[1].split("?", 1)[0]
    found = sorted((home / "models").glob(f"{short}-v*/config.json"), key=lambda p: int(p.parent.name.rsplit("-v", 1)[1]))
    if not found:
        sys.exit(f"cannot find the folder of {name} (gym.builtin.materialize_model failed:\n{proc.stderr[-2000:]})")
    return found[-1].parent


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", "--repeat", type=int, default=3, help="timed runs of each measurement (default 3)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows of builtin:addition in the cache (default 10000)")
    parser.add_argument("--base-model", default="builtin:tiny-llama", help="gym's base_model (default builtin:tiny-llama)")
    parser.add_argument("--model-dir", default=None, help="a local model folder to use as base_model (and baseline)")
    parser.add_argument("--bigger", action="store_true",
                        help="generate a ~100M-parameter Llama (hidden 1024, 8 layers) with the tiny tokenizer and use it")
    parser.add_argument("--parts", default="preprocess,run", help="comma-separated: preprocess, run (default both)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for the children (0: leave unset)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a child is killed (default 300)")
    parser.add_argument("--no-importtime", action="store_true", help="skip the extra runs under importtime")
    parser.add_argument("--workdir", default=None, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--verbose", action="store_true", help="echo the children's output")
    opts = parser.parse_args()
    parts = {p.strip() for p in opts.parts.split(",") if p.strip()}
    unknown = parts - {"preprocess", "run"}
    if unknown:
        sys.exit(f"--parts: unknown {', '.join(sorted(unknown))} (preprocess, run)")

    gym = gym_executable()
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="gym-bench-startup-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    CHILD_CWD[0] = str(workdir)
    env = child_env(opts.threads)
    print_machine("Start-up cost")
    try:
        _run(opts, parts, gym, workdir, env)
    finally:
        if opts.keep or opts.workdir:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(opts, parts: set[str], gym: str, workdir: Path, env: dict[str, str]) -> None:
    base_model = opts.base_model
    if opts.model_dir:
        base_model = str(Path(opts.model_dir).resolve())
    config = workdir / "startup.yml"
    write_config(config, base_model, opts.rows, workdir)

    # The cold preprocess also makes the built-in model and dataset (gym's cache); not a target.
    cmd = [gym, "preprocess", str(config)]
    code, cold, lines = run_timed(cmd, env, opts.timeout)
    if code != 0:
        fail("gym preprocess (cold)", cmd, lines, code)
    if opts.verbose:
        print("\n".join(line for _, line in lines), file=sys.stderr)

    if base_model.startswith("builtin:"):
        model_dir = materialized_builtin(base_model, env)
    else:
        model_dir = Path(base_model)
    if opts.bigger:
        big = workdir / "model-100m"
        proc = subprocess.run([sys.executable, "-c", MAKE_MODEL, str(model_dir), str(big), "1024", "8"],
                              capture_output=True, text=True, env=env, timeout=opts.timeout, cwd=CHILD_CWD[0])
        if proc.returncode != 0:
            sys.exit(f"generating the bigger model failed:\n{proc.stderr[-3000:]}")
        model_dir, base_model = big, str(big)
        write_config(config, base_model, opts.rows, workdir)
        code, cold, lines = run_timed(cmd, env, opts.timeout)  # the tokenizer is the same: a cache hit
        if code != 0:
            fail("gym preprocess", cmd, lines, code)

    print(f"config: {config} (base_model {base_model}; {opts.rows:,} rows of builtin:addition; max_steps 1; no adapter)")
    print(f"model folder: {model_dir}; OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', '(unset)')}; "
          f"cold preprocess (builds the cache, not a target): {cold:.2f} s")
    print()

    floor = [run_timed([sys.executable, "-c", "pass"], env, 60)[1] for _ in range(3)]
    reports: list[tuple[str, dict]] = []
    rows: list[list] = [["python -c pass (floor)", *spread(floor), "-", "-"]]

    if "preprocess" in parts:
        times, hits = [], []
        for _ in range(opts.runs):
            code, wall, lines = run_timed(cmd, env, opts.timeout)
            if code != 0:
                fail("gym preprocess (warm)", cmd, lines, code)
            times.append(wall)
            hits.append(next((m.group(1) for _, line in lines for m in [CACHE_LINE.search(line)] if m), "?"))
        torch_seen: bool | str = "?"
        if not opts.no_importtime:
            report = diagnose(["preprocess", str(config)], opts.threads, opts.timeout, workdir)
            torch_seen = "torch" in report["imported"]
            reports.append(("gym preprocess (warm)", report))
        median = statistics.median(times)
        met = median < PREPROCESS_TARGET_S and torch_seen is False
        rows.append([f"gym preprocess, warm (cache {'/'.join(sorted(set(hits)))})", *spread(times), torch_seen,
                     "yes" if met else "MISSED"])

    run_split: list[list] = []
    ratio_rows: list[list] = []
    if "run" in parts:
        base_cmd = [sys.executable, "-c", BASELINE, str(model_dir)]
        run_cmd = [gym, "run", str(config)]
        base_walls, base_parts = [], []
        run_walls, first_steps, data_at, trainer_at, whole = [], [], [], [], []
        for _ in range(opts.runs):
            code, wall, lines = run_timed(base_cmd, env, opts.timeout)
            if code != 0:
                fail("baseline", base_cmd, lines, code)
            base_walls.append(wall)
            for _, line in lines:
                if line.startswith(RESULT_MARK):
                    base_parts.append(json.loads(line[len(RESULT_MARK):]))
            code, wall, lines = run_timed(run_cmd, env, opts.timeout)
            if opts.verbose:
                print("\n".join(f"{t:7.2f} {line}" for t, line in lines), file=sys.stderr)
            if code != 0:
                fail("gym run", run_cmd, lines, code)
            run_walls.append(wall)
            first_steps.append(first_time(lines, LOSS_LINE))
            data_at.append(first_time(lines, CACHE_LINE))
            trainer_at.append(first_time(lines, TRAINING_LINE))
            whole.append(next((float(m.group(1)) for _, line in lines for m in [WHOLE_RUN.search(line)] if m), None))
        if not opts.no_importtime:
            reports.append(("gym run (full fine-tune)", diagnose(["run", str(config)], opts.threads, opts.timeout, workdir)))

        base_median = statistics.median(base_walls)
        step_median = statistics.median([t for t in first_steps if t is not None]) if any(first_steps) else None
        rows.append(["baseline: import torch, transformers + from_pretrained", *spread(base_walls), True, "-"])
        rows.append(["gym run: to the first optimizer step", *spread(first_steps), True,
                     "-" if step_median is None else
                     ("yes" if step_median <= RUN_RATIO_TARGET * base_median else "MISSED")])
        rows.append(["gym run max_steps=1: whole process", *spread(run_walls), True, "-"])

        if base_parts:
            for key in ("import torch", "import transformers", "from_pretrained"):
                run_split.append([f"baseline: {key}", *spread([p[key] for p in base_parts])])
            params = base_parts[0].get("params")
        else:
            params = None

        def gaps(later: list, earlier: list) -> list:
            return [b - a if a is not None and b is not None else None for a, b in zip(earlier, later)]

        zeros = [0.0] * len(run_walls)
        run_split += [
            ["gym run: start -> data ready (`cache: hit`): imports, tokenizer, data", *spread(gaps(data_at, zeros))],
            ["gym run: data ready -> `[gym] training`: model, trainer", *spread(gaps(trainer_at, data_at))],
            ["gym run: `[gym] training` -> first loss logged: first step", *spread(gaps(first_steps, trainer_at))],
            ["gym run: first loss -> exit: save, model card", *spread(gaps(run_walls, first_steps))],
            ["gym run: gym's own `(whole run)` figure", *spread(whole)],
        ]
        if step_median is not None:
            ratio_rows.append(["first optimizer step / baseline", step_median / base_median, RUN_RATIO_TARGET,
                               "yes" if step_median / base_median <= RUN_RATIO_TARGET else "MISSED"])
        ratio_rows.append(["whole `gym run` (max_steps=1) / baseline", statistics.median(run_walls) / base_median,
                           "-", "-"])
        if params:
            print(f"model: {params:,} parameters")
            print()

    print(f"{opts.runs} runs each, seconds of wall time per process (targets: warm preprocess < "
          f"{PREPROCESS_TARGET_S} s without torch; first step within {RUN_RATIO_TARGET}x of the baseline)")
    print()
    print_table(["measurement", "min s", "median s", "max s", "torch imported", "target met"], rows)
    if ratio_rows:
        print_table(["ratio (of medians)", "value", "target", "met"], ratio_rows)
    if run_split:
        print("where the time goes (min / median / max s):")
        print()
        print_table(["part", "min s", "median s", "max s"], run_split)
    if reports:
        print("heavy modules imported (one extra run of each, under PYTHONPROFILEIMPORTTIME=1 and an import tracer; "
              "its times are inflated):")
        print()
        table = []
        for name, report in reports:
            unneeded = [m for m in report["imported"] if m in NOT_NEEDED_FOR_FULL]
            table.append([name, ", ".join(report["imported"]) or "none", ", ".join(unneeded) or "none",
                          ", ".join(f"{n} {s:.2f}" for n, s in report["top"])])
        print_table(["command", "heavy modules", "not needed (full fine-tune)", "largest top-level imports (s)"], table)
        print("who imported them first: the importing module and line, and the innermost gym functions on the stack "
              "(`import s`: importtime's cumulative seconds of that first import, which excludes modules imported "
              "earlier and can miss imports made through importlib):")
        print()
        chain_rows = []
        for name, report in reports:
            for module in ("torch", "transformers", "datasets", "accelerate", *NOT_NEEDED_FOR_FULL):
                first = report["first"].get(module)
                if first:
                    chain_rows.append([name, module, first["at"], report["costs"].get(module), first["importer"] or "-",
                                       " <- ".join(first["gym"]) or "-"])
        print_table(["command", "module", "at s", "import s", "imported by", "gym call stack (innermost first)"],
                    chain_rows)


if __name__ == "__main__":
    main()
