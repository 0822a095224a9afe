"""GPU check of the kernel plugins: Liger and Cut Cross Entropy on a ~0.5B model in bf16, against the unpatched model.

    python bench/gpu_kernels.py               # on a CUDA machine: baseline, liger, cce; ~3 minutes on one H100
    python bench/gpu_kernels.py --dry-run     # anywhere: the plan
    python bench/gpu_kernels.py --smoke       # anywhere: the whole path on the CPU with a tiny model (baseline
                                              # and cce; Liger's Triton kernels need a GPU and are skipped)

Each run is a fresh process that builds the same Llama-style model (hidden 1024, 24 layers, 16 heads, 8 kv heads,
MLP 2816, vocabulary 128256: ~0.55 B parameters, random weights, seed 0) in bf16 on the GPU, patches it the way
gym's plugins do, and trains it for ``--steps`` AdamW steps on the same random batches (``--batch`` x
``--tokens``, labels = inputs, no padding):

- ``baseline``: transformers' own modules and loss (sdpa attention);
- ``liger``: ``gym.plugins.liger.apply`` with rope, rms_norm, glu_activation and fused_linear_cross_entropy
  (Liger's ``apply_liger_kernel_to_llama``);
- ``cce``: ``gym.plugins.cce.patch_model`` (Cut Cross Entropy, its Triton ``cce`` implementation on a GPU).

Reported: the loss at every step and its largest relative difference from the baseline's (bf16 kernels round
differently; the check passes under ``--rtol``, default 2e-2), peak GPU memory allocated
(``torch.cuda.max_memory_allocated``), and tokens/s over the steps after the first (warm-up, compilation).
Exit status 1 when a patched run's losses differ from the baseline's beyond the tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_result, fmt, print_machine, print_table, run_child  # noqa: E402

MODEL = dict(hidden=1024, layers=24, heads=16, kv_heads=8, intermediate=2816, vocab=128256)
SMOKE = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=4096)
RUNS = ("baseline", "liger", "cce")
LIGER_KEYS = dict(liger_rope=True, liger_rms_norm=True, liger_glu_activation=True,
                  liger_fused_linear_cross_entropy=True)


def build(size: dict, device: str, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=size["vocab"], hidden_size=size["hidden"], intermediate_size=size["intermediate"],
                         num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                         num_key_value_heads=size["kv_heads"], max_position_embeddings=8192,
                         tie_word_embeddings=False, attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def child(run: str, opts: argparse.Namespace) -> None:
    import torch

    smoke = opts.smoke
    device = "cpu" if smoke else "cuda"
    size = SMOKE if smoke else MODEL
    model = build(size, device, torch.float32 if smoke else torch.bfloat16)
    if run == "liger":
        from gym.plugins.liger import apply

        cfg = SimpleNamespace(**{key: None for key in ("liger_layer_norm", "liger_swiglu", "liger_cross_entropy",
                                                      "liger_rms_norm_gated", "liger_use_token_scaling")},
                              **LIGER_KEYS)
        apply(model, cfg)
    elif run == "cce":
        from gym.plugins.cce import patch_model

        patch_model(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr)
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, size["vocab"], (opts.batch, opts.tokens), generator=generator)
               for _ in range(opts.steps)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    for ids in batches:
        ids = ids.to(device)
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        losses.append(loss.item())
    timed = times[1:] or times
    emit_result({
        "run": run, "losses": losses,
        "tokens_per_s": opts.batch * opts.tokens * len(timed) / sum(timed),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "params": sum(p.numel() for p in model.parameters()),
    })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rtol", type=float, default=2e-2)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--run", choices=RUNS, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.smoke:
        opts.batch, opts.tokens, opts.steps = min(opts.batch, 2), min(opts.tokens, 64), min(opts.steps, 3)
    if opts.run:
        child(opts.run, opts)
        return 0
    runs = [r for r in opts.runs.split(",") if r]
    if opts.smoke and "liger" in runs:
        print("note: --smoke runs on the CPU, where Liger's Triton kernels cannot run; liger skipped")
        runs.remove("liger")
    if opts.dry_run:
        size = SMOKE if opts.smoke else MODEL
        print(f"model {size}, {opts.steps} steps of {opts.batch} x {opts.tokens} tokens, runs {runs}, "
              f"rtol {opts.rtol}")
        return 0
    if not opts.smoke:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA GPU here: run with --smoke (CPU path) or --dry-run")
            return 2
    print_machine("Liger and Cut Cross Entropy against the unpatched model" + (" (smoke, CPU)" if opts.smoke else ""))
    forwarded = [a for a in sys.argv[1:] if a != "--dry-run"]
    results = {run: run_child(__file__, [*forwarded, "--run", run]) for run in runs}
    base = results.get("baseline")
    rows, failed = [], False
    for run, result in results.items():
        worst = None
        if base is not None and run != "baseline":
            worst = max(abs(a - b) / abs(b) for a, b in zip(result["losses"], base["losses"]))
            failed |= worst > opts.rtol
        rows.append([run, " ".join(f"{x:.4f}" for x in result["losses"]), fmt(worst, 3) if worst is not None else "-",
                     fmt(result["peak_gib"], 3) if result["peak_gib"] is not None else "-",
                     fmt(result["tokens_per_s"], 4)])
    params = results[runs[0]]["params"] / 1e9
    print(f"\n{params:.2f} B parameters; {opts.steps} steps of {opts.batch} x {opts.tokens}\n")
    print_table(["run", "loss per step", "max rel. diff vs baseline", "peak GiB", "tokens/s"], rows)
    print("\nlosses " + ("DIFFER beyond" if failed else "agree within") + f" rtol {opts.rtol}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
