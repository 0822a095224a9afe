"""Gradient checkpointing on the CPU: the same loss and gradients, lower peak memory, more time per step.

One forward + backward pass of a randomly initialised Llama-style model (gym's tiny-model builder, sized by the
flags) on a fixed batch, with and without ``gradient_checkpointing`` (enabled as gym's trainer enables it:
``use_reentrant: false``). Each mode runs in its own process; its peak is the resident-set high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs`` once the model and batch exist) minus the resident memory
just before the step, i.e. what the step allocates: activations saved for the backward pass, gradients and the
backward pass's working memory.

    python bench/gradient_checkpointing.py
    python bench/gradient_checkpointing.py --layers 12 --hidden 512 --tokens 1024 --batch 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_result, fmt, print_machine, print_table, run_child, status_kib  # noqa: E402


def child(args: argparse.Namespace) -> None:
    import torch

    from gym.tiny import build_model, build_tokenizer

    torch.set_num_threads(args.threads)
    model = build_model(build_tokenizer(), hidden_size=args.hidden, layers=args.layers, heads=args.heads,
                        kv_heads=args.heads // 2, intermediate_size=args.hidden * 4, max_positions=args.tokens)
    model.config.use_cache = False
    model.train()
    if args.mode == "checkpointing":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.tokens), generator=generator)
    Path("/proc/self/clear_refs").write_text("5")
    before = status_kib("VmRSS")
    started = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    seconds = time.perf_counter() - started
    peak = status_kib("VmHWM")
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()
    params_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    emit_result({"mode": args.mode, "loss": loss.item(), "grad_norm": grad_norm, "peak_mib": (peak - before) / 1024,
                 "seconds": seconds, "params_mib": params_mib})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=["plain", "checkpointing"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    print_machine("Gradient checkpointing: loss, gradients and peak memory of one training step on the CPU")
    print(f"\nLlama-style model: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, fp32; batch "
          f"{args.batch} x {args.tokens} tokens\n")
    results = {mode: run_child(__file__, [*sys.argv[1:], "--mode", mode]) for mode in ("plain", "checkpointing")}
    rows = [[m, fmt(r["loss"], 7), fmt(r["grad_norm"], 7), fmt(r["peak_mib"], 4), fmt(r["seconds"], 3)]
            for m, r in results.items()]
    print_table(["mode", "loss", "gradient norm", "peak MiB (step)", "step s"], rows)
    plain, ckpt = results["plain"], results["checkpointing"]
    print(f"\nloss difference {abs(plain['loss'] - ckpt['loss']):.2e}, gradient-norm difference "
          f"{abs(plain['grad_norm'] - ckpt['grad_norm']):.2e}; peak {plain['peak_mib'] / ckpt['peak_mib']:.1f}x lower "
          f"with checkpointing, step {ckpt['seconds'] / plain['seconds']:.2f}x the time; the parameters "
          f"({plain['params_mib']:,.0f} MiB, and as much again for their gradients) are in both peaks")


if __name__ == "__main__":
    main()
