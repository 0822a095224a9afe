"""GPU check: every attention backend gym accepts with ``sample_packing`` keeps packed samples apart.

    python bench/gpu_attention_packing.py              # on a CUDA machine: sdpa, flex_attention, flash_attention_2/3
    python bench/gpu_attention_packing.py --dry-run    # anywhere: the plan
    python bench/gpu_attention_packing.py --smoke      # anywhere: eager and sdpa on the CPU in fp32

On the CPU, tests/test_attention.py proves it for eager, sdpa and flex_attention. The flash-attention family needs a
CUDA GPU and the flash-attn package (``flash_attention_3``: flash-attn 3's ``flash_attn_interface``), so its proof
lives here. For each backend the same model (gym's tiny Llama-style builder, hidden 256, 4 layers, 8 heads, 4 kv
heads, random weights, seed 0, the attention projections scaled up so that attention depends on what it reads; bf16
on a GPU, as flash attention requires) scores the same 48 generated supervised
samples (20 to 300 tokens, the prompt half masked) twice: padded, one sample a row with an attention mask, and packed
the way gym packs them (``gym.plugins.sft.packing.pack_samples``: rows of up to 1024 tokens, ``position_ids``
restarting at each sample, no attention mask). A backend that let a sample attend to the one before it would give a
different loss. Reported per backend: both losses and their relative difference; exit status 1 when one differs by
more than ``--rtol`` (default 2e-4 in bf16, 2e-5 in fp32). A control row shows that the check can fail: the first
backend again, with position_ids counting on across each packed row (no restart), must differ (on the CPU in bf16:
packed within 4e-7 of padded, the control 2.3e-3 away). Seconds on one GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine, print_table  # noqa: E402

GPU_BACKENDS = ("sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")
CPU_BACKENDS = ("eager", "sdpa")
SHARPEN = 16.0
PACKAGE = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def samples(tokenizer, count: int = 48, seed: int = 0) -> list[dict]:
    """Supervised samples of 20 to 300 tokens: words from the tokenizer's vocabulary, the first half masked."""
    rng = random.Random(seed)
    words = [w for w in tokenizer.get_vocab() if w.isalpha()][:2000]
    out = []
    for _ in range(count):
        ids = tokenizer(" ".join(rng.choice(words) for _ in range(rng.randint(20, 300))),
                        add_special_tokens=False)["input_ids"][:300] + [tokenizer.eos_token_id]
        half = len(ids) // 2
        out.append({"input_ids": ids, "labels": [-100] * half + ids[half:]})
    return out


def losses(backend: str, device: str, dtype, rows: list[dict], packed_rows: list[dict], pad_id: int, tokenizer):
    """(padded loss, packed loss) of the same model with ``backend``."""
    import torch

    from gym.plugins.sft.collator import SupervisedCollator
    from gym.tiny import build_model

    model = build_model(tokenizer, hidden_size=256, layers=4, heads=8, kv_heads=4, intermediate_size=512)
    with torch.no_grad():  # sharper attention and larger values than the random init gives: a leak shows more
        for name, weight in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                weight.mul_(SHARPEN)
            elif name.endswith(("v_proj.weight", "o_proj.weight")):
                weight.mul_(SHARPEN / 2)
    model = model.to(device=device, dtype=dtype).eval()
    model.set_attn_implementation(backend)

    def loss(batch: dict) -> float:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            return float(model(**batch, use_cache=False).loss)

    return (loss(SupervisedCollator(pad_id, packed=False)(rows)),
            loss(SupervisedCollator(pad_id, packed=True)(packed_rows)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--smoke", action="store_true", help="eager and sdpa on the CPU in fp32")
    parser.add_argument("--rtol", type=float, default=None, help="largest relative difference allowed")
    opts = parser.parse_args()

    import torch

    from gym.plugins.sft.packing import pack_samples
    from gym.tiny import build_tokenizer

    cuda = torch.cuda.is_available() and not opts.smoke
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    rtol = opts.rtol if opts.rtol is not None else (2e-4 if cuda else 2e-5)
    wanted = GPU_BACKENDS if cuda else CPU_BACKENDS
    skipped = {b: f"{PACKAGE[b]} not installed" for b in wanted
               if b in PACKAGE and importlib.util.find_spec(PACKAGE[b]) is None}
    backends = [b for b in wanted if b not in skipped]

    print_machine("Attention backends with sample packing" + (" (smoke test on the CPU)" if opts.smoke else ""))
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}, {str(dtype).split('.')[-1]}; "
          f"backends: {', '.join(backends)}" + "".join(f"; skipped {b} ({why})" for b, why in skipped.items()))
    if opts.dry_run:
        print("dry run: nothing computed")
        return 0

    tokenizer = build_tokenizer()
    rows = samples(tokenizer)
    packed_rows = pack_samples(rows, capacity=1024)
    print(f"{len(rows)} samples, {sum(len(r['input_ids']) for r in rows):,} tokens -> {len(packed_rows)} packed rows")
    table, failed = [], []
    for backend in backends:
        padded, packed = losses(backend, device, dtype, rows, packed_rows, tokenizer.pad_token_id, tokenizer)
        difference = abs(packed - padded) / abs(padded)
        table.append([backend, f"{padded:.5f}", f"{packed:.5f}", f"{difference:.2e}",
                      "ok" if difference <= rtol else "DIFFERENT"])
        if difference > rtol:
            failed.append(backend)
    control = [{**row, "position_ids": list(range(len(row["input_ids"])))} for row in packed_rows]
    padded, leaking = losses(backends[0], device, dtype, rows, control, tokenizer.pad_token_id, tokenizer)
    difference = abs(leaking - padded) / abs(padded)
    table.append([f"control: {backends[0]}, no restart", f"{padded:.5f}", f"{leaking:.5f}", f"{difference:.2e}",
                  "differs, as it must" if difference > rtol else "SAME: the check cannot see a leak"])
    if difference <= rtol:
        failed.append("the control")
    for backend, why in skipped.items():
        table.append([backend, "-", "-", "-", f"skipped: {why}"])
    print_table(["backend", "padded loss", "packed loss", "relative difference", f"within {rtol:g}"], table)
    if failed:
        print(f"packed samples see each other with: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
