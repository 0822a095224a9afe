"""Generation speed: ``gym generate`` against a bare transformers ``generate`` loop, and ``gym serve`` latency.

1. A model: the quickstart's model (``builtin:tiny-llama``) as it is before training, given to the commands with
   ``--model-dir`` (its random weights rarely pick a stop token, so answers run to ``--max-new-tokens`` and the
   token rate is measured over long answers; a trained quickstart model answers in 3 tokens), or the model a
   config already trained (``--config CFG --use-trained``).
2. Batch: the same prompts (the quickstart's chat template, ``What is A + B?``), greedy, the same batch size and
   ``--max-new-tokens``, through ``gym generate`` (its own "tokens/s" line: the generation loop, model loading
   excluded) and through a bare loop (``AutoModelForCausalLM`` + ``tokenizer(padding=True)`` left-padded +
   ``model.generate``), each in a fresh process, interleaved over ``--repeat`` rounds. Tokens are the new tokens
   up to and including the first stop token, counted the same way for both.
3. Server: ``gym serve`` in its own process; clients stream ``/v1/chat/completions`` with the ``openai`` client,
   1 client and then 8 at once, ``--requests`` each round. Time to first token is from sending the request to
   the first content piece; tokens/s per request is completion tokens over the request's whole time, and the
   aggregate is all completion tokens over the round's wall time.

    python bench/generation.py                       # ~2 min on 2 cores
    python bench/generation.py --batch-size 16 --prompts 128 --max-new-tokens 64 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit_result, print_machine, print_table, run_child  # noqa: E402

GYM = str(Path(sys.executable).with_name("gym"))


def prompts_file(path: Path, count: int) -> Path:
    import random

    rng = random.Random(0)
    rows = [{"id": i, "messages": [{"role": "user", "content": f"What is {rng.randint(10, 99)} + {rng.randint(10, 99)}?"}]}
            for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def untrained_model(config: str) -> str:
    """The folder of the config's base model (a ``builtin:`` one is generated into the gym cache)."""
    from gym.api import load_config, resolve_source

    return resolve_source(load_config(config).base_model, "base_model")


# --------------------------------------------------------------------------------------------- children


def child_bare(model_dir: str, prompts: str, batch_size: int, max_new_tokens: int, threads: int) -> None:
    """A bare transformers loop: left padding, greedy, the same stop tokens as gym."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    stops = sorted(set(tokenizer.all_special_ids) | {model.generation_config.eos_token_id} - {None})
    texts = [tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=False, add_generation_prompt=True)
             for line in Path(prompts).read_text().splitlines()]
    tokens, started = 0, time.perf_counter()
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id)
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            tokens += cut
    elapsed = time.perf_counter() - started
    emit_result({"tokens": tokens, "seconds": elapsed})


def run_gym_generate(config: str, model_dir: str, prompts: Path, batch_size: int, max_new_tokens: int,
                     threads: int) -> dict:
    out = prompts.with_name(f"answers-{time.monotonic_ns()}.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else dict(os.environ)
    proc = subprocess.run([GYM, "generate", config, "--model-dir", model_dir, "--input", str(prompts), "--output",
                           str(out), "--greedy", "--batch-size", str(batch_size), "--max-new-tokens", str(max_new_tokens)],
                          capture_output=True, text=True, env=env)
    out.unlink(missing_ok=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("[gym] wrote")), None)
    if proc.returncode or line is None:
        raise RuntimeError(proc.stdout + proc.stderr)
    # "[gym] wrote N answers to F (T tokens in S s, R tokens/s)"
    inside = line.rsplit("(", 1)[1]
    tokens = int(inside.split(" tokens in ")[0])
    seconds = float(inside.split(" tokens in ")[1].split("s,")[0])
    return {"tokens": tokens, "seconds": seconds}


# ----------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_round(base_url: str, clients: int, requests: int, max_new_tokens: int) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=600)
    questions = [f"What is {10 + i} + {40 + 2 * i}?" for i in range(requests)]

    def one(question: str) -> dict:
        sent = time.perf_counter()
        first = None
        usage = None
        for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": question}],
                                                    temperature=0, max_tokens=max_new_tokens, stream=True,
                                                    stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                usage = chunk.usage
        done = time.perf_counter()
        return {"ttft": (first or done) - sent, "seconds": done - sent, "tokens": usage.completion_tokens}

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, questions))
    wall = time.perf_counter() - started
    ttfts = sorted(r["ttft"] for r in results)
    return {
        "clients": clients, "requests": len(results),
        "ttft_median": statistics.median(ttfts), "ttft_max": ttfts[-1],
        "per_request_tps": statistics.median(r["tokens"] / r["seconds"] for r in results),
        "aggregate_tps": sum(r["tokens"] for r in results) / wall,
    }


def bench_server(config: str, model_dir: str, requests: int, max_new_tokens: int, threads: int) -> list[dict]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    server = subprocess.Popen([GYM, "serve", config, "--model-dir", model_dir, "--port", str(port), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in server.stdout:
            if "serving" in line:
                break
        else:
            raise RuntimeError("gym serve did not start")
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
        base = f"http://127.0.0.1:{port}/v1"
        serve_round(base, 1, 2, max_new_tokens)  # warm-up
        return [serve_round(base, clients, requests, max_new_tokens) for clients in (1, 8)]
    finally:
        server.terminate()
        server.wait(timeout=30)


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "examples" / "quickstart.yml"))
    parser.add_argument("--use-trained", action="store_true", help="Use the model the config already trained.")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--requests", type=int, default=16, help="Server requests per round (1 and 8 clients).")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS for the measured processes (0: torch's default). 1 by default: on a "
                        "shared 2-core machine more threads make a tiny model several times slower and noisy.")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_dir, prompts, batch, new, threads = args.child
        child_bare(model_dir, prompts, int(batch), int(new), int(threads))
        return

    print_machine("Generation: gym generate vs a bare transformers loop; gym serve latency")
    with tempfile.TemporaryDirectory(prefix="gym-bench-generation-") as folder:
        work = Path(folder)
        if args.use_trained:
            import yaml

            model_dir = str(Path(yaml.safe_load(Path(args.config).read_text())["output_dir"]))
        else:
            model_dir = untrained_model(args.config)
        prompts = prompts_file(work / "prompts.jsonl", args.prompts)
        print(f"model: {model_dir} (config {args.config}); {args.prompts} prompts, batch {args.batch_size}, "
              f"greedy, max_new_tokens {args.max_new_tokens}, threads {args.threads or 'default'}\n")
        rows = []
        for round_ in range(args.repeat):
            gym = run_gym_generate(args.config, model_dir, prompts, args.batch_size, args.max_new_tokens, args.threads)
            env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
            bare = run_child(__file__, ["--child", model_dir, str(prompts), str(args.batch_size),
                                        str(args.max_new_tokens), str(args.threads)], env=env)
            for name, result in (("gym generate", gym), ("bare transformers generate", bare)):
                rows.append([round_ + 1, name, result["tokens"], result["seconds"], result["tokens"] / result["seconds"]])
        print_table(["round", "run", "new tokens", "seconds", "tokens/s"], rows)
        gym_tps = statistics.median(r[4] for r in rows if r[1] == "gym generate")
        bare_tps = statistics.median(r[4] for r in rows if r[1] != "gym generate")
        print(f"gym / bare tokens/s (medians): {gym_tps / bare_tps:.2f}\n")

        served = bench_server(args.config, model_dir, args.requests, args.max_new_tokens, args.threads)
        print_table(["clients", "requests", "TTFT median (s)", "TTFT max (s)", "tokens/s per request (median)",
                     "tokens/s all clients"],
                    [[s["clients"], s["requests"], s["ttft_median"], s["ttft_max"], s["per_request_tps"],
                      s["aggregate_tps"]] for s in served])


if __name__ == "__main__":
    main()
