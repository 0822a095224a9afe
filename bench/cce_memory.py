"""Peak memory and time of the loss head with and without Cut Cross Entropy, on the CPU.

What a causal LM's loss costs past the decoder: ``hidden (tokens x H) @ lm_head.weight.T (V x H)`` and the
cross entropy, forward and backward. "standard" is what transformers does (full logits, upcast to float,
``ForCausalLMLoss``); "cce" is gym's ``cut_cross_entropy: true`` path on a CPU
(``cut_cross_entropy.linear_cross_entropy(..., impl="torch_compile")``). Each measurement runs in its own
process; its peak is the resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``
after inputs are built and the compiled graph is warmed up) minus the resident memory just before the step,
so it counts only what the loss step allocates (the V x H weight's gradient, the same for both, included).

    python bench/cce_memory.py                                   # vocab 128256, 2048 tokens, hidden 512
    python bench/cce_memory.py --vocab 128256 --tokens 4096 --hidden 1024 --prompt-fraction 0.5
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

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    def inputs(tokens: int):
        hidden = (torch.randn(1, tokens, args.hidden) * 0.5).requires_grad_()
        weight = (torch.randn(args.vocab, args.hidden) * 0.02).requires_grad_()
        labels = torch.randint(0, args.vocab, (1, tokens))
        labels[0, : int(tokens * args.prompt_fraction)] = -100  # the prompt carries no label
        return hidden, weight, labels

    if args.impl == "standard":
        from transformers.loss.loss_utils import ForCausalLMLoss

        def step(hidden, weight, labels):
            logits = hidden @ weight.T  # what lm_head returns: the full tokens x vocab logits
            return ForCausalLMLoss(logits, labels, vocab_size=args.vocab)
    else:
        from cut_cross_entropy import linear_cross_entropy

        def step(hidden, weight, labels):
            return linear_cross_entropy(hidden, weight, labels, shift=True, impl="torch_compile")

    warm = inputs(64)
    started = time.perf_counter()
    step(*warm).backward()  # compiles the cce graph (dynamic shapes: once for all sizes)
    warm_seconds = time.perf_counter() - started
    del warm
    hidden, weight, labels = inputs(args.tokens)
    fixed_mib = weight.numel() * weight.element_size() / 2**20  # the weight's gradient, made by both
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    before = status_kib("VmRSS")
    started = time.perf_counter()
    loss = step(hidden, weight, labels)
    loss.backward()
    seconds = time.perf_counter() - started
    peak = status_kib("VmHWM")
    emit_result({
        "impl": args.impl, "loss": float(loss), "peak_mib": (peak - before) / 1024, "seconds": seconds,
        "warm_seconds": warm_seconds, "fixed_mib": fixed_mib,
        "grad_norm": float(hidden.grad.norm()),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--prompt-fraction", type=float, default=0.0,
                        help="Share of tokens labelled -100 (a prompt); cce skips them before the product.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--impl", choices=["standard", "cce"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        child(args)
        return
    print_machine("Cut Cross Entropy: loss-head peak memory on the CPU")
    logits_mib = args.tokens * args.vocab * 4 / 2**20
    print(f"\nvocab {args.vocab:,}, {args.tokens:,} tokens, hidden {args.hidden}, fp32, prompt share "
          f"{args.prompt_fraction:g}; one fp32 logits matrix is {logits_mib:,.0f} MiB\n")
    rows, results = [], {}
    for impl in ("standard", "cce"):
        forwarded = [a for a in sys.argv[1:]]
        result = run_child(__file__, [*forwarded, "--impl", impl])
        results[impl] = result
        rows.append([impl, fmt(result["loss"], 6), fmt(result["peak_mib"], 4), fmt(result["peak_mib"] / logits_mib, 3),
                     fmt(result["seconds"], 3), fmt(result["warm_seconds"], 3)])
    print_table(["loss", "value", "peak MiB (step)", "peak / one logits matrix", "step s", "first call s"], rows)
    ratio = results["standard"]["peak_mib"] / max(results["cce"]["peak_mib"], 1e-9)
    print(f"\nstandard / cce peak: {ratio:.1f}x; loss difference "
          f"{abs(results['standard']['loss'] - results['cce']['loss']):.2e}; both peaks include the weight's gradient "
          f"({results['cce']['fixed_mib']:,.0f} MiB)")


if __name__ == "__main__":
    main()
