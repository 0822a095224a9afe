"""Distributed training on the CPU: tokens/s on 1 and 2 processes for each engine, and the time to the first step.

    python bench/distributed.py                       # ddp, zero2, zero3, fsdp2; ~6 minutes on 2 cores
    python bench/distributed.py --engines ddp zero2 --steps 40 --repeat 2

Every run is a real ``gym run`` of the same config (``builtin:tiny-llama``, ``builtin:addition`` chat rows,
sequence_len 64, global batch 16 rows: 1 process x 16 or 2 processes x 8, ``--steps`` steps, no checkpoints), with
one torch thread per process (``OMP_NUM_THREADS=1``). A 1-process run of an engine is started as a launcher's
single worker (RANK 0 of WORLD_SIZE 1), so the engine is really in the loop. Reported per engine and process
count: gym's own trained-tokens/s figure (tokens that carry a loss, summed over processes, over the training
loop), the wall time of the whole command, and the time from the command's start to the first logged step
(launch, imports, data, model and one step). Runs are interleaved over ``--repeat`` rounds; the table shows the
range.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_machine, print_table  # noqa: E402

# engine -> overrides of the base config
ENGINES = {
    "ddp": [],
    "zero2": ["deepspeed=zero2"],
    "zero3": ["deepspeed=zero3"],
    "fsdp2": ["fsdp_version=2", "fsdp_config.reshard_after_forward=true"],
}
# --model: builtin:tiny-llama (hidden 128), or a larger Llama-style model written locally, whose steps are long
# enough for two processes to pay for their gradient exchange.
SIZES = {
    "small": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=1408),
}
CONFIG = """\
base_model: builtin:tiny-llama
datasets:
  - path: builtin:addition?rows=4000
    type: chat_template
chat_template: tokenizer_default
sequence_len: 64
learning_rate: 1.0e-3
save_strategy: "no"
logging_steps: 1
seed: 1
"""


def write_model(folder: Path, size: dict, dtype: str = "float32") -> None:
    """A Llama-style model of ``size`` with random weights (seed 0) and builtin:tiny-llama's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from gym.builtin import materialize_model

    tokenizer = AutoTokenizer.from_pretrained(materialize_model("builtin:tiny-llama"))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **size)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(workdir: Path, engine: str, nproc: int, steps: int, global_batch: int = 16,
            engines: dict[str, list[str]] = ENGINES) -> dict:
    """One ``gym run`` of ``workdir/config.yml`` with ``engine``'s overrides on ``nproc`` processes."""
    micro = global_batch // nproc
    command = [sys.executable, "-m", "gym.cli", "run", "config.yml", f"max_steps={steps}",
               f"micro_batch_size={micro}", f"output_dir=out-{engine}-{nproc}", *engines[engine]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if nproc > 1:
        command += ["--nproc-per-node", str(nproc)]
    elif engines[engine]:  # one worker of a launcher, so the engine runs
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(free_port()))
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    first_step, lines = None, []
    for line in process.stdout:
        lines.append(line)
        if first_step is None and re.search(r"step 1/\d+", line):
            first_step = time.perf_counter() - started
    process.wait()
    wall = time.perf_counter() - started
    text = "".join(lines)
    if process.returncode != 0:
        raise SystemExit(f"{engine} on {nproc} process(es) failed:\n{text[-3000:]}")
    rate = re.search(r"([\d,]+) tokens trained \(([\d,]+) tokens/s\)", text)
    return {"tokens_per_s": float(rate.group(2).replace(",", "")) if rate else float("nan"),
            "first_step_s": first_step or float("nan"), "wall_s": wall}


def spread(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    form = f"{{:,.{digits}f}}"
    return form.format(low) if low == high else f"{form.format(low)}–{form.format(high)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", default="tiny", choices=["tiny", *SIZES],
                        help="tiny: builtin:tiny-llama (hidden 128); small: hidden 512, 4 layers, written locally")
    opts = parser.parse_args()
    print_machine("distributed training on the CPU")
    workdir = Path(tempfile.mkdtemp(prefix="gym-bench-distributed-"))
    config = CONFIG
    if opts.model != "tiny":
        write_model(workdir / "model", SIZES[opts.model])
        config = config.replace("builtin:tiny-llama", str(workdir / "model"))
    (workdir / "config.yml").write_text(config)
    results: dict[tuple[str, int], list[dict]] = {}
    for _ in range(opts.repeat):
        for engine in opts.engines:
            for nproc in (1, 2):
                results.setdefault((engine, nproc), []).append(one_run(workdir, engine, nproc, opts.steps))
    rows = []
    for engine in opts.engines:
        one = [r["tokens_per_s"] for r in results[(engine, 1)]]
        for nproc in (1, 2):
            runs = results[(engine, nproc)]
            rates = [r["tokens_per_s"] for r in runs]
            # each round's 2-process rate against the same round's 1-process rate (they ran back to back)
            speedup = spread([rate / alone for rate, alone in zip(rates, one)], 2) + "x" if nproc == 2 else "1x"
            rows.append([engine, str(nproc), spread(rates), speedup, spread([r["first_step_s"] for r in runs], 1),
                         spread([r["wall_s"] for r in runs], 1)])
    model = "builtin:tiny-llama" if opts.model == "tiny" else f"the {opts.model} model ({SIZES[opts.model]})"
    print(f"\n{opts.steps} steps of 16 rows (sequence_len 64), {model}, one torch thread per process, "
          f"{opts.repeat} rounds (ranges):\n")
    print_table(["engine", "processes", "trained tokens/s", "vs 1 process", "to first step (s)", "whole run (s)"],
                rows)


if __name__ == "__main__":
    main()
