"""GPU preference and RL steps: DPO and GRPO on a ~0.5B-parameter Llama-style model (random weights) trained by gym.

    python bench/gpu_preference.py                  # on a CUDA machine: all runs, about 5 minutes on one H100
    python bench/gpu_preference.py --runs grpo,grpo-vllm
    python bench/gpu_preference.py --dry-run        # anywhere: print the plan (model size, data, runs)
    python bench/gpu_preference.py --smoke          # anywhere: the whole path on the CPU with a tiny model, 3 steps

The model is the one of ``bench/gpu_train.py``: built from a ``LlamaConfig`` (hidden 1024, 28 layers, 16 heads,
8 kv heads, MLP 4096, vocabulary 32000: 0.51 B parameters), saved once in bf16 with random weights, and loaded by
``gym.run.run`` in one fresh process per run (bf16, ``attn_implementation: sdpa``, fused AdamW, constant
learning rate, no checkpoints):

- ``dpo-full``: ``rl: dpo`` (``rl_beta: 0.1``), full fine-tuning; the reference is a frozen bf16 copy of the model;
- ``dpo-lora``: the same with ``adapter: lora`` (r 16, alpha 32, every linear layer); the reference is the base
  model with the adapter disabled (no second copy);
- ``grpo``: ``rl: grpo``, ``num_generations`` 8, ``max_completion_length`` 128, temperature 1, ``beta`` 0 (TRL's
  default: no reference model), sampling with transformers ``generate``;
- ``grpo-vllm``: the same with ``trl.use_vllm: true``, ``trl.vllm_mode: colocate`` (vLLM in the training process,
  ``vllm.gpu_memory_utilization`` 0.3, ``vllm.max_model_len`` = the GRPO ``sequence_len``); run only where
  ``import vllm`` works (and a CUDA GPU is there), else listed as skipped with the reason.

Data, generated (no download): chat preference pairs sized like the common chat preference sets, a user prompt
of about 25 words and two assistant answers of about 90 words each (log-normal lengths, words drawn as in
``bench/datagen.py``); with the quickstart tokenizer (512 ids, about 3 tokens a word) a prompt is about 100 tokens
(chat template included) and a prompt with one answer about 400 (median 370), so each DPO step runs 8 pairs = 16
sequences of a few hundred tokens (``sequence_len`` 1024; gym drops the 1 pair in 500 that is longer). gym reads
them as ``type: passthrough`` (chat messages rendered with the tokenizer's chatml template). GRPO prompts are the
same user prompts (``type: prompt``, 4 prompts x 8 completions a step, ``sequence_len`` 512), scored by a reward
module the script writes next to the data: reward = 1 - |words - 50| / 50, floored at -1 (any text scores).

The model's 32000 logits cover ids the 512-id tokenizer has not got; a random model would mostly sample those, so
sampling is limited to the tokenizer's ids (``trl.generation_kwargs``: ``suppress_tokens`` for transformers,
``allowed_token_ids`` for vLLM); the LM head still computes all 32000 logits. The saved generation config ends a
completion at ``<|endoftext|>`` or ``<|im_end|>`` (both backends read it). A random model seldom samples either
(about 2 ids in 512), so more than half of the completions run to ``max_completion_length``; the table gives the
mean length.

Reported per run: seconds per optimizer step (median over the steps after the warm-up, wall time with the GPU
synchronised: a GRPO step includes sampling its completions, and for vLLM the weight sync), the peak GPU memory
allocated and reserved (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``, reset when training begins,
so what is held then counts too: the weights, the reference, vLLM's copy and KV cache), for DPO the reference
model's memory (the parameter bytes of ``trainer.ref_model``; 0 with LoRA) and for GRPO the mean completion length
(TRL's ``completions/mean_length``, averaged over the timed steps).

``--smoke`` runs the same path with a 0.16 M-parameter model (hidden 64, 2 layers, vocabulary 640, so sampling is
still limited to the tokenizer's 512 ids) in fp32 on the CPU: 64 pairs, 1 warm-up + 3 steps, micro batches of 2
pairs and of 8 completions of at most 16 tokens; ``grpo-vllm`` is skipped there.

Time: 3 warm-up steps, then 15 timed steps per DPO run and 10 per GRPO run. Estimated for one H100 (not measured
yet): setup about 20 s, each DPO run under 40 s, ``grpo`` about 1.5 minutes (128 tokens sampled one at a time each
step), ``grpo-vllm`` about 2 minutes (most of it vLLM's start-up): about 5 minutes in all, under 8 with room to
spare; each run is stopped after ``--timeout`` (300 s). Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import emit_result, print_machine, print_table, run_child  # noqa: E402
from gpu_train import MODEL_05B, count_params, llama_config  # noqa: E402  # the same ~0.5B model

ALL_RUNS = ("dpo-full", "dpo-lora", "grpo", "grpo-vllm")
REWARDS = "bench_length_reward"  # the reward module written next to the data

# The smoke model has more rows than the tokenizer's 512 ids, like the 0.5B model, so that the smoke run also
# goes through the limit on sampled ids.
MODEL_SMOKE = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=640)

# The reward module of the GRPO runs: any text scores, answers of about TARGET words best.
REWARD_SOURCE = '''"""Reward of bench/gpu_preference.py: answers of about TARGET words are best (any text scores)."""

TARGET = 50


def _text(completion):
    """Text prompts give text completions; chat prompts a list of messages."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


def length_reward(prompts, completions, **kwargs):
    return [max(-1.0, 1.0 - abs(len(_text(c).split()) - TARGET) / TARGET) for c in completions]
'''


def parameters(n: int) -> str:
    return f"{n / 1e9:.3f} B parameters" if n >= 1e8 else f"{n / 1e6:.2f} M parameters"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


# -------------------------------------------------------------------------------------------- setup


def lognormal_words(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return max(low, min(high, round(rng.lognormvariate(math.log(median), sigma))))


def preference_rows(n: int, seed: int):
    """Chat preference pairs in TRL's layout: a user prompt, a chosen and a rejected assistant answer."""
    from datagen import TextMaker

    maker = TextMaker(seed)
    for _ in range(n):
        prompt = maker.text(lognormal_words(maker.rng, 25, 0.6, 3, 150))
        chosen, rejected = (maker.text(lognormal_words(maker.rng, 90, 0.5, 5, 250)) for _ in range(2))
        yield {"prompt": [{"role": "user", "content": prompt}],
               "chosen": [{"role": "assistant", "content": chosen}],
               "rejected": [{"role": "assistant", "content": rejected}]}


def chat_tokens(tokenizer, messages: list, add_generation_prompt: bool = False) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def prepare(work: Path, opts, size: dict) -> dict:
    """Save the model and tokenizer; write the DPO pairs, the GRPO prompts and the reward module."""
    import torch
    from _common import quickstart_tokenizer
    from transformers import LlamaForCausalLM

    tokenizer, tokenizer_source = quickstart_tokenizer()
    if len(tokenizer) > size["vocab"]:
        raise RuntimeError(f"the tokenizer has {len(tokenizer)} ids, more than the model's {size['vocab']} rows")
    config = llama_config(size, 4096)
    config.pad_token_id, config.eos_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id, None
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16 if not opts.smoke else torch.float32)
    # Completions end at the tokenizer's EOS or the chat template's end of turn; written to generation_config.json,
    # where both transformers and vLLM (which loads the model again from this folder) read it.
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    del model

    prompt_lens, pair_lens = [], []
    with (work / "pairs.jsonl").open("w") as pairs, (work / "prompts.jsonl").open("w") as prompts:
        for row in preference_rows(opts.rows, seed=1):
            pairs.write(json.dumps(row) + "\n")
            prompts.write(json.dumps({"prompt": row["prompt"]}) + "\n")
            if len(prompt_lens) < 500:  # lengths as gym will see them: rendered with the chat template
                prompt_lens.append(chat_tokens(tokenizer, row["prompt"], add_generation_prompt=True))
                pair_lens += [chat_tokens(tokenizer, row["prompt"] + row[a]) for a in ("chosen", "rejected")]
    (work / f"{REWARDS}.py").write_text(REWARD_SOURCE)
    return {"tokenizer": tokenizer_source, "tokenizer_ids": len(tokenizer), "prompt_len": statistics.mean(prompt_lens),
            "sequence_len": statistics.mean(pair_lens), "longest": max(pair_lens), "measured": len(prompt_lens)}


# -------------------------------------------------------------------------------------------- child


def run_config(work_dir: Path, run: str, opts, cuda: bool) -> dict:
    """gym's config for one run (what the child writes to ``<run>.yml`` and trains)."""
    method = run.split("-")[0]
    dpo = method == "dpo"
    config = {
        "base_model": str(work_dir / "model"),
        "rl": method,
        "chat_template": "tokenizer_default",
        "dataset_prepared_path": str(work_dir / f"prepared-{run}"),
        "val_set_size": 0,
        "sequence_len": opts.dpo_sequence_len if dpo else opts.grpo_sequence_len,
        "micro_batch_size": opts.dpo_batch if dpo else opts.grpo_batch,
        "gradient_accumulation_steps": 1,
        "max_steps": opts.warmup + (opts.steps if dpo else opts.grpo_steps),
        "learning_rate": (5e-6 if run == "dpo-lora" else 5e-7) if dpo else 1e-6,
        "lr_scheduler": "constant",
        "optimizer": "adamw_torch_fused" if cuda else "adamw_torch",
        "bf16": not opts.smoke,
        "attn_implementation": "sdpa",
        "gradient_checkpointing": opts.gradient_checkpointing,
        "logging_steps": 1,  # GRPO's completion lengths are read from each step's log
        "save_strategy": "no",
        "eval_strategy": "no",
        "seed": 42,
        "output_dir": str(work_dir / f"out-{run}"),
    }
    if dpo:
        config["datasets"] = [{"path": str(work_dir / "pairs.jsonl"), "type": "passthrough"}]
        config["rl_beta"] = 0.1
    else:
        config["datasets"] = [{"path": str(work_dir / "prompts.jsonl"), "type": "prompt"}]
        config["trl"] = {
            "reward_funcs": [f"{REWARDS}.length_reward"],
            "num_generations": opts.num_generations,
            "max_completion_length": opts.max_completion_length,
            "temperature": 1.0,
            "beta": opts.grpo_beta,
        }
        limit = sampling_limit(work_dir / "model", vllm=run == "grpo-vllm")
        if limit:
            config["trl"]["generation_kwargs"] = limit
        if run == "grpo-vllm":
            config["trl"].update({"use_vllm": True, "vllm_mode": "colocate"})
            config["vllm"] = {"gpu_memory_utilization": opts.vllm_memory, "max_model_len": opts.grpo_sequence_len}
    if run == "dpo-lora":
        config.update({"adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                       "lora_target_linear": True})
    if opts.smoke:
        config["use_cpu"] = True
    return config


def sampling_limit(model_dir: Path, vllm: bool) -> dict:
    """Generation settings that keep sampling to the tokenizer's ids when the model has more rows (else none)."""
    from transformers import AutoTokenizer

    ids = len(AutoTokenizer.from_pretrained(model_dir))
    rows = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    if rows <= ids:
        return {}
    return {"allowed_token_ids": list(range(ids))} if vllm else {"suppress_tokens": list(range(ids, rows))}


def step_clock(warmup: int, cuda: bool, holder: dict):
    """A ``TrainerCallback`` timing every optimizer step, reading the peak GPU memory, the reference's memory (when
    training begins, from the trainer kept in ``holder``) and GRPO's completion lengths of the timed steps."""
    import torch
    from preference import reference_bytes  # bench/preference.py: the reference's parameter bytes
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []  # the clock at the end of each step (GPU synchronised)
            self.completion_lengths: list[float] = []
            self.peak = self.reserved = 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            holder.update(reference_bytes(holder.get("trainer"), model))
            if cuda:
                torch.cuda.reset_peak_memory_stats()  # weights, reference and vLLM stay counted: they are allocated

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.global_step > warmup and "completions/mean_length" in logs:
                self.completion_lengths.append(float(logs["completions/mean_length"]))

        def on_train_end(self, args, state, control, **kwargs):
            if cuda:
                self.peak, self.reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()

        def result(self) -> dict:
            # A step runs from the end of the one before to its own end (the logging between steps included).
            times = [b - a for a, b in zip(self.ends[warmup - 1:], self.ends[warmup:])]
            if not times:
                raise RuntimeError(f"no step was timed: the run ended after {len(self.ends)} steps")
            return {
                "s_per_step": statistics.median(times),
                "step_times": times,
                "peak_gpu_mib": self.peak / 2**20 if cuda else None,
                "peak_gpu_reserved_mib": self.reserved / 2**20 if cuda else None,
                "completion_length": (statistics.mean(self.completion_lengths)
                                      if self.completion_lengths else None),
            }

    return StepClock()


def child(work: str, run: str, opts) -> None:
    import torch
    import yaml

    work_dir = Path(work)
    cuda = torch.cuda.is_available()
    path = work_dir / f"{run}.yml"
    path.write_text(yaml.safe_dump(run_config(work_dir, run, opts, cuda), sort_keys=False))

    from _throughput import register_with_gym
    from preference import keep_built_trainer  # bench/preference.py
    from gym.config import load_config
    from gym.run import run as train

    holder: dict = {}
    clock = step_clock(opts.warmup, cuda, holder)
    register_with_gym(clock)
    keep_built_trainer(holder)
    train(load_config(path))
    holder.pop("trainer", None)
    result = {**clock.result(), **holder}
    result["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    emit_result(result)


# ------------------------------------------------------------------------------------------- parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(ALL_RUNS), help=f"comma-separated, of {', '.join(ALL_RUNS)}")
    parser.add_argument("--steps", type=int, default=15, help="timed steps of each DPO run (default 15)")
    parser.add_argument("--grpo-steps", type=int, default=10, help="timed steps of each GRPO run (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3, at least 1)")
    parser.add_argument("--rows", type=int, default=2000, help="preference pairs (and GRPO prompts) generated")
    parser.add_argument("--dpo-batch", type=int, default=8, help="DPO micro_batch_size in pairs (default 8)")
    parser.add_argument("--dpo-sequence-len", type=int, default=1024, help="DPO sequence_len (TRL's max_length)")
    parser.add_argument("--grpo-batch", type=int, default=32,
                        help="GRPO micro_batch_size in completions (default 32: 4 prompts x 8 generations)")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=128)
    parser.add_argument("--grpo-sequence-len", type=int, default=512,
                        help="GRPO sequence_len: prompts get it less max_completion_length (default 512)")
    parser.add_argument("--grpo-beta", type=float, default=0.0, help="GRPO KL coefficient (default 0: no reference)")
    parser.add_argument("--vllm-memory", type=float, default=0.3,
                        help="vllm.gpu_memory_utilization of grpo-vllm (default 0.3, TRL's)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit (no GPU needed)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model on the CPU, 3 steps: checks the script end to end without a GPU")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per run (default 300)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    opts, rest = parser.parse_known_args()
    if opts.smoke:
        opts.steps, opts.grpo_steps, opts.warmup, opts.rows = 3, 3, 1, 64
        opts.dpo_batch, opts.grpo_batch, opts.max_completion_length = 2, 8, 16
    if opts.warmup < 1:
        parser.error("--warmup must be at least 1 (a step is timed from the end of the one before)")
    if opts.grpo_batch % opts.num_generations:
        parser.error("--grpo-batch must be a multiple of --num-generations (each batch holds whole groups)")
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
    has_vllm = vllm_available()
    skipped: dict[str, str] = {}
    if "grpo-vllm" in runs and not (has_vllm and has_cuda):
        runs.remove("grpo-vllm")
        skipped["grpo-vllm"] = "vllm not installed" if not has_vllm else "no CUDA GPU"
    device = torch.cuda.get_device_name() if has_cuda else "cpu"
    total, _ = count_params(size)

    print_machine("GPU preference and RL steps" + (" (smoke test on the CPU)" if opts.smoke else ""))
    print(f"device: {device}; CUDA {torch.version.cuda}; vllm {'installed' if has_vllm else 'not installed'}")
    print(f"model: Llama-style from a config, random weights: {parameters(total)}, hidden "
          f"{size['hidden']}, {size['layers']} layers, {size['heads']} heads / {size['kv_heads']} kv heads, MLP "
          f"{size['intermediate']}, vocabulary {size['vocab']}; {'fp32 (smoke)' if opts.smoke else 'bf16'}, sdpa, "
          f"gradient checkpointing {'on' if opts.gradient_checkpointing else 'off'}")
    print(f"DPO: {opts.rows:,} generated chat pairs, micro_batch_size {opts.dpo_batch} pairs, sequence_len "
          f"{opts.dpo_sequence_len}, rl_beta 0.1; dpo-full: frozen reference copy, lr 5e-7; dpo-lora: r 16, alpha 32, "
          f"all linear layers, lr 5e-6")
    prompts = opts.grpo_batch // opts.num_generations
    print(f"GRPO: the same prompts, micro_batch_size {opts.grpo_batch} ({prompts} prompt{'s' * (prompts != 1)} x "
          f"{opts.num_generations} generations), max_completion_length {opts.max_completion_length}, "
          f"sequence_len {opts.grpo_sequence_len}, temperature 1, beta {opts.grpo_beta:g}, lr 1e-6, reward "
          f"{REWARDS}.length_reward; grpo-vllm: vllm_mode colocate, gpu_memory_utilization {opts.vllm_memory:g}")
    print(f"steps: {opts.warmup} warm-up, then {opts.steps} timed per DPO run and {opts.grpo_steps} per GRPO run; "
          f"runs: {', '.join(runs) or 'none'}"
          + (f"; skipped: {', '.join(f'{r} ({why})' for r, why in skipped.items())}" if skipped else ""))
    print()
    if opts.dry_run:
        print(f"reference of dpo-full: {total * (4 if opts.smoke else 2) / 2**20:,.0f} MiB of parameters; "
              f"of dpo-lora: 0 (the adapter disabled)")
        try:
            import gym.run  # noqa: F401

            print("gym.run: importable")
        except ImportError as exc:
            print(f"gym.run: NOT importable ({exc})")
        print_table(["run", "status"], [[r, "would run"] for r in runs]
                    + [[r, f"skipped: {why}"] for r, why in skipped.items()])
        print("dry run: nothing trained")
        return
    if not has_cuda and not opts.smoke:
        sys.exit("no CUDA GPU here: run with --smoke (CPU check) or --dry-run (plan only)")

    work = Path(opts.workdir or tempfile.mkdtemp(prefix="gym-bench-gpu-pref-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        facts = prepare(work, opts, size)
        print(f"setup (model saved, {opts.rows:,} pairs and prompts generated; tokenizer {facts['tokenizer']}, "
              f"{facts['tokenizer_ids']} ids): {time.perf_counter() - started:.0f} s")
        print(f"data: prompts {facts['prompt_len']:.0f} tokens on average (chat template included), prompt + one "
              f"answer {facts['sequence_len']:.0f} (longest of the {facts['measured']} pairs measured: "
              f"{facts['longest']})")
        print()
        passthrough = [a for a in ("--smoke",) if opts.smoke]
        passthrough += [f"--steps={opts.steps}", f"--grpo-steps={opts.grpo_steps}", f"--warmup={opts.warmup}",
                        f"--dpo-batch={opts.dpo_batch}",
                        f"--dpo-sequence-len={opts.dpo_sequence_len}", f"--grpo-batch={opts.grpo_batch}",
                        f"--num-generations={opts.num_generations}",
                        f"--max-completion-length={opts.max_completion_length}",
                        f"--grpo-sequence-len={opts.grpo_sequence_len}", f"--grpo-beta={opts.grpo_beta}",
                        f"--vllm-memory={opts.vllm_memory}"]
        if opts.gradient_checkpointing:
            passthrough.append("--gradient-checkpointing")
        table = []
        for run in runs:
            run_started = time.perf_counter()
            rows = opts.dpo_batch if run.startswith("dpo") else opts.grpo_batch
            try:
                r = run_child(HERE / "gpu_preference.py", [*passthrough, f"_{run}", str(work)],
                              env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}, timeout=opts.timeout)
            except Exception as exc:  # one failed run (out of memory, vLLM start-up) must not hide the others
                print(f"{run} failed: {str(exc)[-1500:]}", file=sys.stderr)
                table.append([run, None, None, rows, None, None, None, None, "FAILED (see stderr)"])
                continue
            reference = r["ref_model_bytes"] + r["adapter_copy_bytes"]
            table.append([
                run, r["s_per_step"], f"{min(r['step_times']):.3g}-{max(r['step_times']):.3g}", rows,
                r["peak_gpu_mib"], r["peak_gpu_reserved_mib"],
                reference / 2**20 if run.startswith("dpo") else None, r["completion_length"],
                f"{time.perf_counter() - run_started:.0f} s",
            ])
        for run, why in skipped.items():
            table.append([run, None, None, None, None, None, None, None, f"skipped: {why}"])
        print("s/step: median over the timed steps; rows/step: DPO pairs or GRPO completions; reference MiB: "
              "parameter bytes of the DPO reference; completion: GRPO's mean completion length in tokens")
        print()
        print_table(["run", "s/step", "min-max s", "rows/step", "peak GPU MiB", "reserved MiB", "reference MiB",
                     "completion", "run wall"], table)
        print(f"total wall time: {time.perf_counter() - started:.0f} s")
    finally:
        if not opts.keep and not opts.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
