"""Training throughput on the CPU: gym (padding, packing) against bare TRL ``SFTTrainer`` at equal settings.

    python bench/train_cpu.py                       # 4 runs, about 3 minutes on 2 cores
    python bench/train_cpu.py --repeat 3 --steps 40 # less noise
    python bench/train_cpu.py --runs gym-pack,trl-pack --pack-batch 2

One random Llama-style model of a few million parameters (``gym.tiny.build_model`` sizes, saved once with
``save_pretrained``) and the quickstart tokenizer are loaded by every run from the same folder. The data is
generated alpaca rows (``bench/datagen.py``), with rows longer than ``sequence_len`` left out beforehand so
that neither program drops nor truncates anything. Each run is a fresh process:

- ``gym-pad`` / ``gym-pack``: ``gym.run.run(cfg)`` with ``sample_packing`` false / true;
- ``trl-pad`` / ``trl-pack``: ``trl.SFTTrainer`` on the same rows as prompt / completion pairs with
  ``packing`` false / true (TRL's default best-fit-decreasing packing), everything else set alike: fp32,
  AdamW (torch), constant learning rate, no gradient checkpointing, no evaluation, no checkpoints.

Every forward pass of the model is counted by a hook (``bench/_throughput.py``): ``tokens/s`` are real
tokens, ``slots/s`` the full batch shape with padding; the clock runs from the end of the warm-up steps to
the end of the last step. ``tokens/CPU-s`` divides by the process's own CPU time instead of the wall clock:
with one torch thread (the default here) it measures the work a run needed whatever else the machine ran,
so on a shared machine the gym / TRL target is judged on it (the wall-clock ratio is printed too). The
runs of each repeat alternate gym and TRL; the tables give medians over repeats and the ratios.
Targets: gym within 3% of TRL at equal settings; packing well ahead of padding.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit_result, print_machine, print_table, run_child  # noqa: E402

ALL_RUNS = ("gym-pad", "trl-pad", "gym-pack", "trl-pack")
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
TARGET_VS_TRL = 0.03


def alpaca_prompt(row: dict) -> str:
    return (ALPACA_WITH_INPUT if row["input"].strip() else ALPACA_NO_INPUT).format(**row)


# ------------------------------------------------------------------------------------------- setup


def prepare(work: Path, opts) -> tuple[Path, Path, dict]:
    """Save the model and tokenizer, write the rows that fit ``sequence_len``; return their paths and facts."""
    from datagen import alpaca_rows
    from _common import quickstart_tokenizer
    from gym.tiny import build_model

    model_dir = work / "model"
    tokenizer, tokenizer_source = quickstart_tokenizer()
    model = build_model(
        tokenizer, hidden_size=opts.hidden, layers=opts.layers, heads=opts.heads, kv_heads=opts.kv_heads,
        intermediate_size=opts.intermediate, max_positions=max(2048, opts.sequence_len),
    )
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())

    rows, lengths, skipped = [], [], 0
    for row in alpaca_rows(opts.rows * 2, seed=opts.seed):
        n = len(tokenizer(alpaca_prompt(row) + row["output"] + tokenizer.eos_token)["input_ids"])
        if n > opts.sequence_len - 8:  # a little room: gym and TRL may split text into tokens differently
            skipped += 1
            continue
        rows.append(row)
        lengths.append(n)
        if len(rows) == opts.rows:
            break
    data = work / "alpaca.jsonl"
    with data.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    facts = {
        "params": params, "rows": len(rows), "skipped_long": skipped,
        "mean_len": statistics.mean(lengths), "max_len": max(lengths), "tokenizer": tokenizer_source,
    }
    return model_dir, data, facts


def common_settings(opts, packed: bool) -> dict:
    return {
        "micro_batch_size": opts.pack_batch if packed else opts.pad_batch,
        "max_steps": opts.warmup + opts.steps,
        "learning_rate": 1e-4,
    }


# ----------------------------------------------------------------------------------------- children


def child_gym(work: str, packed: bool, opts) -> None:
    import yaml

    work_dir = Path(work)
    settings = common_settings(opts, packed)
    config = {
        "base_model": str(work_dir / "model"),
        "datasets": [{"path": str(work_dir / "alpaca.jsonl"), "type": "alpaca"}],
        "dataset_prepared_path": str(work_dir / f"prepared-{'pack' if packed else 'pad'}"),
        "shuffle_merged_datasets": False,  # keep the file's order, as TRL does: both samplers then draw alike
        "val_set_size": 0,
        "sequence_len": opts.sequence_len,
        "sample_packing": packed,
        "micro_batch_size": settings["micro_batch_size"],
        "gradient_accumulation_steps": 1,
        "max_steps": settings["max_steps"],
        "learning_rate": settings["learning_rate"],
        "lr_scheduler": "constant",
        "optimizer": "adamw_torch",
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "logging_steps": settings["max_steps"],
        "save_strategy": "no",
        "eval_strategy": "no",
        "seed": opts.seed,
        "output_dir": str(work_dir / f"out-gym-{'pack' if packed else 'pad'}"),
    }
    path = work_dir / f"gym-{'pack' if packed else 'pad'}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    from _throughput import register_with_gym, throughput_callback
    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(work_dir / "model").pad_token_id
    callback = throughput_callback(pad_id, opts.warmup)
    register_with_gym(callback)
    from gym.config import load_config
    from gym.run import run as train

    train(load_config(path))
    emit_result(callback.result())


def child_trl(work: str, packed: bool, opts) -> None:
    import torch
    from datagen import read_jsonl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from _throughput import throughput_callback

    work_dir = Path(work)
    settings = common_settings(opts, packed)
    tokenizer = AutoTokenizer.from_pretrained(work_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(work_dir / "model", dtype=torch.float32)
    rows = read_jsonl(work_dir / "alpaca.jsonl")
    dataset = Dataset.from_list([{"prompt": alpaca_prompt(r), "completion": r["output"]} for r in rows])
    args = SFTConfig(
        output_dir=str(work_dir / f"out-trl-{'pack' if packed else 'pad'}"),
        max_length=opts.sequence_len,
        packing=packed,
        per_device_train_batch_size=settings["micro_batch_size"],
        gradient_accumulation_steps=1,
        max_steps=settings["max_steps"],
        learning_rate=settings["learning_rate"],
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        dataloader_num_workers=0,
        logging_steps=settings["max_steps"],
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=opts.seed,
    )
    callback = throughput_callback(tokenizer.pad_token_id, opts.warmup)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[callback])
    trainer.train()
    emit_result(callback.result())


# ------------------------------------------------------------------------------------------- parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(ALL_RUNS), help=f"comma-separated, of {', '.join(ALL_RUNS)}")
    parser.add_argument("--repeat", type=int, default=2, help="repeats of the whole set (default 2); medians reported")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--rows", type=int, default=2000, help="alpaca rows generated (default 2000)")
    parser.add_argument("--sequence-len", type=int, default=1024)
    parser.add_argument("--pad-batch", type=int, default=4, help="micro_batch_size without packing (default 4)")
    parser.add_argument("--pack-batch", type=int, default=1,
                        help="micro_batch_size with packing (default 1: one packed row of sequence_len tokens)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default 1: on a shared machine, 2 threads spin-wait for a "
                             "busy core and steps get up to 10x slower at random; 0 = torch's own choice)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    opts, rest = parser.parse_known_args()

    if opts.threads > 0:
        import torch

        torch.set_num_threads(opts.threads)
    if rest:
        role, work, packed = rest[0], rest[1], rest[2] == "pack"
        return (child_gym if role == "_gym" else child_trl)(work, packed, opts)

    runs = [r for r in opts.runs.split(",") if r]
    unknown = set(runs) - set(ALL_RUNS)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}")
    work = Path(opts.workdir or tempfile.mkdtemp(prefix="gym-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model_dir, data, facts = prepare(work, opts)
        passthrough = [
            f"--{name.replace('_', '-')}={value}" for name, value in vars(opts).items()
            if name not in ("runs", "repeat", "workdir", "keep") and value is not None
        ]
        print_machine("CPU training throughput")
        print(f"model: Llama-style, {facts['params'] / 1e6:.2f} M parameters (hidden {opts.hidden}, {opts.layers} "
              f"layers, {opts.heads} heads, {opts.kv_heads} kv heads, MLP {opts.intermediate}), fp32, sdpa; "
              f"tokenizer {facts['tokenizer']}; "
              f"data: {facts['rows']:,} alpaca rows, mean {facts['mean_len']:.0f} / max {facts['max_len']} tokens "
              f"({facts['skipped_long']} longer than sequence_len left out); sequence_len {opts.sequence_len}; "
              f"micro_batch_size {opts.pad_batch} (padding) / {opts.pack_batch} (packing); "
              f"{opts.warmup} warm-up + {opts.steps} timed steps; torch threads "
              f"{opts.threads or 'torch default'}; {opts.repeat} repeat(s), medians")
        print()
        results: dict[str, list[dict]] = {r: [] for r in runs}
        for i in range(opts.repeat):
            for run in runs:
                program, mode = run.split("-")
                result = run_child(HERE / "train_cpu.py", [*passthrough, f"_{program}", str(work), mode],
                                   env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
                results[run].append(result)
                print(f"repeat {i + 1}: {run}: {result['tokens_per_s']:.0f} tokens/s", file=sys.stderr)

        for run_results in results.values():
            for r in run_results:  # tokens per second of the process's own CPU time: blind to other load
                r["tokens_per_cpu_s"] = r["tokens"] / (r["cpu_s_per_step"] * r["steps"])

        def med(run: str, key: str) -> float:
            return statistics.median(r[key] for r in results[run])

        table = []
        for run in runs:
            losses = [r["losses"][-1] for r in results[run] if r["losses"]]
            table.append([
                run, med(run, "s_per_step"), med(run, "cpu_s_per_step"), med(run, "tokens") / opts.steps,
                f"{med(run, 'padding'):.1%}", med(run, "tokens_per_s"), med(run, "tokens_per_cpu_s"),
                med(run, "slots_per_s"), med(run, "loss_tokens_per_s"), statistics.median(losses) if losses else None,
            ])
        print_table(["run", "s/step", "CPU s/step", "tokens/step", "padding", "tokens/s", "tokens/CPU-s",
                     "slots/s", "loss tokens/s", "loss"], table)
        # With one thread, CPU time is the work a run did, whatever else the machine ran; wall time is not.
        judge = "tokens_per_cpu_s" if opts.threads == 1 else "tokens_per_s"
        comparisons = []
        for mode in ("pad", "pack"):
            g, t = f"gym-{mode}", f"trl-{mode}"
            if g in results and t in results:
                wall = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(results[g], results[t])]
                cpu = [a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"] for a, b in zip(results[g], results[t])]
                judged = statistics.median(cpu if judge == "tokens_per_cpu_s" else wall)
                comparisons.append([
                    f"gym / TRL, {'packing' if mode == 'pack' else 'padding'}",
                    f"{statistics.median(wall):.3f}", f"{statistics.median(cpu):.3f}",
                    ", ".join(f"{x:.3f}" for x in wall), ", ".join(f"{x:.3f}" for x in cpu),
                    "yes" if judged >= 1 - TARGET_VS_TRL else "MISSED",
                ])
        for program in ("gym", "trl"):
            a, b = f"{program}-pack", f"{program}-pad"
            if a in results and b in results:
                wall_ratio = med(a, "tokens_per_s") / med(b, "tokens_per_s")
                cpu_ratio = med(a, "tokens_per_cpu_s") / med(b, "tokens_per_cpu_s")
                judged = cpu_ratio if judge == "tokens_per_cpu_s" else wall_ratio
                comparisons.append([f"{program}: packing / padding", f"{wall_ratio:.2f}", f"{cpu_ratio:.2f}",
                                    "-", "-", "yes" if judged > 1.2 else "MISSED"])
        if comparisons:
            print(f"Ratios of tokens/s (wall clock) and of tokens/CPU-s (the run's own CPU time); medians over "
                  f"repeats. Judged on {'tokens/CPU-s' if judge == 'tokens_per_cpu_s' else 'tokens/s'}. "
                  f"Targets: gym / TRL >= {1 - TARGET_VS_TRL:.2f}; packing / padding > 1.2.")
            print()
            print_table(["comparison", "wall ratio", "CPU ratio", "wall, per repeat", "CPU, per repeat",
                         "target met"], comparisons)
    finally:
        if not opts.keep and not opts.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
