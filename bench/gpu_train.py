"""GPU training throughput: a ~0.5B-parameter Llama-style model (random weights) trained by gym in bf16.

    python bench/gpu_train.py                 # on a CUDA machine: all runs, well under 8 minutes on one H100
    python bench/gpu_train.py --dry-run       # anywhere: print the plan (model size, FLOPs per token, runs)
    python bench/gpu_train.py --smoke         # anywhere: the whole path on the CPU with a tiny model, 3 steps

The model is built from a ``LlamaConfig`` (hidden 1024, 28 layers, 16 heads, 8 kv heads, MLP 4096,
vocabulary 32000: 0.51 B parameters), saved once with random weights, and loaded by ``gym.run.run``
in one fresh process per run:

- ``sdpa-pack``: ``attn_implementation: sdpa``, ``sample_packing: true``;
- ``flash-pack``: ``flash_attention: true`` with packing, when the ``flash-attn`` package is importable;
- ``sdpa-pad``: sdpa without packing, same micro batch (how much packing buys).

The quickstart tokenizer has fewer ids than the model's 32000 rows; the LM head still computes all 32000
logits, so the work per token is that of a real 32k-vocabulary model. Data: generated alpaca rows.
Reported per run: tokens/s (real tokens, padding excluded), seconds per step, peak GPU memory allocated
(and reserved) and model FLOPs utilisation: tokens/s x FLOPs per token / the GPU's peak dense bf16 FLOPS,
with FLOPs per token = 6 x (parameters of every matmul, LM head included) + 12 x layers x hidden x the
mean sample length (attention inside each packed sample, as flash attention's varlen kernel computes it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit_result, print_machine, print_table, run_child  # noqa: E402

# Peak dense bf16 tensor-core FLOPS (no sparsity), from NVIDIA's data sheets; matched on the device name.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4),
    ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0),
]
ALL_RUNS = ("sdpa-pack", "flash-pack", "sdpa-pad")

MODEL_05B = dict(hidden=1024, layers=28, heads=16, kv_heads=8, intermediate=4096, vocab=32000)
MODEL_SMOKE = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512)


def llama_config(size: dict, max_positions: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=size["vocab"], hidden_size=size["hidden"], intermediate_size=size["intermediate"],
        num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
        num_key_value_heads=size["kv_heads"], max_position_embeddings=max_positions,
        tie_word_embeddings=False, rope_theta=10000.0,
    )


def count_params(size: dict) -> tuple[int, int]:
    """(all parameters, parameters of matmuls: everything but the input embedding table), built on 'meta'."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(size, 4096))
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return total, total - embedding


def flops_per_token(matmul_params: int, size: dict, mean_context: float) -> float:
    return 6 * matmul_params + 12 * size["layers"] * size["hidden"] * mean_context


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


def flash_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


# -------------------------------------------------------------------------------------------- setup


def prepare(work: Path, opts, size: dict) -> dict:
    import torch
    from datagen import alpaca_rows
    from _common import quickstart_tokenizer
    from transformers import LlamaForCausalLM

    tokenizer, tokenizer_source = quickstart_tokenizer()
    config = llama_config(size, max(4096, opts.sequence_len))
    config.pad_token_id, config.eos_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id, None
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16 if not opts.smoke else torch.float32)
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    del model
    from train_cpu import alpaca_prompt

    lengths = []
    with (work / "alpaca.jsonl").open("w") as f:
        for row in alpaca_rows(opts.rows, seed=1):
            f.write(json.dumps(row) + "\n")
            if len(lengths) < 2000:
                text = alpaca_prompt(row) + row["output"] + tokenizer.eos_token
                lengths.append(min(len(tokenizer(text)["input_ids"]), opts.sequence_len))
    return {"mean_len": statistics.mean(lengths), "tokenizer": tokenizer_source}


# -------------------------------------------------------------------------------------------- child


def child(work: str, run: str, opts) -> None:
    import torch
    import yaml

    work_dir = Path(work)
    attention, mode = run.split("-")
    config = {
        "base_model": str(work_dir / "model"),
        "datasets": [{"path": str(work_dir / "alpaca.jsonl"), "type": "alpaca"}],
        "dataset_prepared_path": str(work_dir / f"prepared-{mode}"),
        "val_set_size": 0,
        "sequence_len": opts.sequence_len,
        "sample_packing": mode == "pack",
        "micro_batch_size": opts.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "max_steps": opts.warmup + opts.steps,
        "learning_rate": 1e-4,
        "lr_scheduler": "constant",
        "optimizer": "adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch",
        "bf16": not opts.smoke,
        "gradient_checkpointing": opts.gradient_checkpointing,
        "logging_steps": opts.warmup + opts.steps,
        "save_strategy": "no",
        "eval_strategy": "no",
        "output_dir": str(work_dir / f"out-{run}"),
    }
    if attention == "flash":
        config["flash_attention"] = True
    else:
        config["attn_implementation"] = "sdpa"
    if opts.smoke:
        config["use_cpu"] = True
    path = work_dir / f"{run}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    from _throughput import register_with_gym, throughput_callback
    from gym.config import load_config
    from gym.run import run as train

    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(work_dir / "model").pad_token_id
    callback = throughput_callback(pad_id, opts.warmup, cuda=torch.cuda.is_available())
    register_with_gym(callback)
    train(load_config(path))
    result = callback.result()
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    emit_result(result)


# ------------------------------------------------------------------------------------------- parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(ALL_RUNS), help=f"comma-separated, of {', '.join(ALL_RUNS)}")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--sequence-len", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--rows", type=int, default=8000, help="alpaca rows generated (default 8000)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's peak dense bf16 TFLOPS, when its name is not in the built-in table")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit (no GPU needed)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model on the CPU, 3 steps: checks the script end to end without a GPU")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per run (default 300)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    opts, rest = parser.parse_known_args()
    if opts.smoke:
        opts.steps, opts.warmup, opts.sequence_len, opts.micro_batch_size, opts.rows = 3, 1, 256, 2, 200
    size = MODEL_SMOKE if opts.smoke else MODEL_05B

    if rest:
        return child(rest[1], rest[0].lstrip("_"), opts)

    started = time.perf_counter()
    import torch

    runs = [r for r in opts.runs.split(",") if r]
    unknown = set(runs) - set(ALL_RUNS)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}")
    has_cuda = torch.cuda.is_available()
    has_flash = flash_available()
    skipped = []
    if "flash-pack" in runs and not (has_flash and has_cuda):
        runs.remove("flash-pack")
        skipped.append("flash-pack (flash-attn not installed)" if has_cuda else "flash-pack (no CUDA GPU)")
    device = torch.cuda.get_device_name() if has_cuda else "cpu"
    peak = peak_tflops(device, opts.peak_tflops) if has_cuda else None
    total, matmul = count_params(size)

    print_machine("GPU training throughput" + (" (smoke test on the CPU)" if opts.smoke else ""))
    print(f"device: {device}; CUDA {torch.version.cuda}; flash-attn "
          f"{'installed' if has_flash else 'not installed'}; peak bf16 "
          f"{f'{peak:g} TFLOPS' if peak else 'unknown (pass --peak-tflops for MFU)'}")
    print(f"model: Llama-style from a config, random weights: {total / 1e9:.3f} B parameters "
          f"({matmul / 1e9:.3f} B in matmuls), hidden {size['hidden']}, {size['layers']} layers, "
          f"{size['heads']} heads / {size['kv_heads']} kv heads, MLP {size['intermediate']}, vocabulary {size['vocab']}")
    print(f"training: {'fp32 (smoke)' if opts.smoke else 'bf16'}, sequence_len {opts.sequence_len}, micro_batch_size "
          f"{opts.micro_batch_size}, {opts.warmup} warm-up + {opts.steps} timed steps, gradient checkpointing "
          f"{'on' if opts.gradient_checkpointing else 'off'}; runs: {', '.join(runs)}"
          + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    print()
    if opts.dry_run:
        print(f"FLOPs per trained token at a mean sample length of 300: "
              f"{flops_per_token(matmul, size, 300) / 1e9:.2f} GFLOP")
        try:
            import gym.run  # noqa: F401

            print("gym.run: importable")
        except ImportError as exc:
            print(f"gym.run: NOT importable ({exc})")
        print("dry run: nothing trained")
        return
    if not has_cuda and not opts.smoke:
        sys.exit("no CUDA GPU here: run with --smoke (CPU check) or --dry-run (plan only)")

    work = Path(opts.workdir or tempfile.mkdtemp(prefix="gym-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        facts = prepare(work, opts, size)
        print(f"setup (model saved, {opts.rows:,} rows generated; tokenizer {facts['tokenizer']}): "
              f"{time.perf_counter() - started:.0f} s")
        print()
        passthrough = [a for a in ("--smoke",) if opts.smoke]
        passthrough += [f"--sequence-len={opts.sequence_len}", f"--micro-batch-size={opts.micro_batch_size}",
                        f"--steps={opts.steps}", f"--warmup={opts.warmup}"]
        if opts.gradient_checkpointing:
            passthrough.append("--gradient-checkpointing")
        fpt = flops_per_token(matmul, size, facts["mean_len"])
        table = []
        for run in runs:
            run_started = time.perf_counter()
            try:
                r = run_child(HERE / "gpu_train.py", [*passthrough, f"_{run}", str(work)],
                              env={"HF_HUB_OFFLINE": "1"}, timeout=opts.timeout)
            except Exception as exc:  # one failed run (out of memory, kernel missing) must not hide the others
                print(f"{run} failed: {str(exc)[-1500:]}", file=sys.stderr)
                table.append([run, None, None, None, None, None, None, "FAILED (see stderr)"])
                continue
            mfu = r["tokens_per_s"] * fpt / (peak * 1e12) if peak else None
            table.append([
                run, r["s_per_step"], r["tokens_per_s"], f"{r['padding']:.1%}", r["peak_gpu_mib"],
                r["peak_gpu_reserved_mib"], f"{mfu:.1%}" if mfu is not None else "-",
                f"{time.perf_counter() - run_started:.0f} s",
            ])
        print(f"FLOPs per token: {fpt:.3g} (mean sample length {facts['mean_len']:.0f} tokens)")
        print()
        print_table(["run", "s/step", "tokens/s", "padding", "peak GPU MiB", "reserved MiB", "MFU",
                     "run wall"], table)
        print(f"total wall time: {time.perf_counter() - started:.0f} s")
    finally:
        if not opts.keep and not opts.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
