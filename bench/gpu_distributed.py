"""GPU check of the distributed engines: DDP, ZeRO-2, ZeRO-3 and FSDP2 on a ~0.5B model over every GPU here.

    python bench/gpu_distributed.py                 # on a machine with 2+ CUDA GPUs; ~10 minutes on 2 H100s
    python bench/gpu_distributed.py --dry-run       # anywhere: the plan
    python bench/gpu_distributed.py --smoke         # anywhere: the same path on the CPU with a tiny model

A Llama-style model of ~0.5 B parameters (hidden 1024, 24 layers, 16 heads, 8 kv heads, MLP 2816, vocabulary
32000; random weights, seed 0) is written once to a local folder with the tokenizer of ``builtin:tiny-llama``
(nothing is downloaded). Each engine then trains it with ``gym run --nproc-per-node N`` (N = the GPUs here), bf16,
sequence_len 1024 with sample packing, global batch 32 rows, ``--steps`` steps, and the same with 1 process.
Reported as in ``bench/distributed.py``: trained tokens/s, time to the first step and the whole run's time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine, print_table  # noqa: E402
from distributed import ENGINES, one_run, spread, write_model  # noqa: E402

MODEL = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
             intermediate_size=2816)
SMOKE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128)


def config_text(model: Path, smoke: bool) -> str:
    return f"""\
base_model: {model}
datasets:
  - path: builtin:addition?rows=20000
    type: chat_template
chat_template: tokenizer_default
sequence_len: {64 if smoke else 1024}
sample_packing: true
learning_rate: 1.0e-4
{'' if smoke else 'bf16: true'}
save_strategy: "no"
logging_steps: 1
seed: 1
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="the CPU, a tiny model, 2 processes")
    parser.add_argument("--dry-run", action="store_true")
    opts = parser.parse_args()
    import torch

    gpus = torch.cuda.device_count()
    nproc = 2 if opts.smoke else max(gpus, 2)
    plan = [(engine, n) for engine in opts.engines for n in (1, nproc)]
    if opts.dry_run:
        for engine, n in plan:
            print(f"{engine} on {n} process(es): gym run config.yml {' '.join(ENGINES[engine])}")
        return
    if not opts.smoke and gpus < 2:
        raise SystemExit("this check needs 2 or more CUDA GPUs (or --smoke)")
    print_machine("distributed engines" + (" (smoke, CPU)" if opts.smoke else f" on {gpus} GPUs"))
    workdir = Path(tempfile.mkdtemp(prefix="gym-bench-gpu-distributed-"))
    write_model(workdir / "model", SMOKE if opts.smoke else MODEL, "float32" if opts.smoke else "bfloat16")
    (workdir / "config.yml").write_text(config_text(workdir / "model", opts.smoke))
    rows = []
    for engine, n in plan:
        result = one_run(workdir, engine, n, opts.steps, global_batch=32)
        rows.append([engine, str(n), spread([result["tokens_per_s"]]), spread([result["first_step_s"]], 1),
                     spread([result["wall_s"]], 1)])
    print_table(["engine", "processes", "trained tokens/s", "to first step (s)", "whole run (s)"], rows)


if __name__ == "__main__":
    main()
