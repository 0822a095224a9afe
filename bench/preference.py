"""Preference and RL steps on the CPU: gym's DPO and GRPO against bare TRL at equal settings, and the memory the
DPO reference model holds with an adapter and with full fine-tuning.

    python bench/preference.py                        # 6 runs a repeat, 2 repeats: about 2.5 minutes on 2 cores
    python bench/preference.py --repeat 3 --steps 20  # less noise
    python bench/preference.py --runs dpo,grpo        # the timing runs only

One random Llama-style model (``gym.tiny.build_model`` sizes, the quickstart tokenizer with its chatml template)
is saved once and loaded by every run from the same folder. The data are the addition tasks gym ships, written
once to files that both programs read:

- DPO: ``builtin:addition-preferences`` pairs rendered to text with the chat template (prompt up to the
  assistant's turn, chosen / rejected answer plus the end-of-turn token); gym reads them with
  ``type: passthrough``, TRL's ``DPOTrainer`` as they are;
- GRPO: ``builtin:addition`` rows; gym maps them with ``type: grpo.transform`` and
  ``examples/grpo_addition_rewards.addition_prompt``, TRL gets the same function's output; both score with
  ``grpo_addition_rewards.correct_sum`` (copied next to the data, where gym looks for it).

Each run is a fresh process: gym runs ``gym.run.run(cfg)`` (the throughput callback of ``_throughput.py``
added through gym's ``gym_callbacks`` hook); TRL runs ``DPOTrainer`` / ``GRPOTrainer`` built by hand with every
setting gym maps written out alike: fp32, AdamW (torch), constant learning rate, no gradient checkpointing,
no evaluation, no checkpoints, logging once at the end, the same seed, batch size, ``beta``, ``max_length``
(DPO), ``num_generations``, ``max_completion_length``, ``temperature`` (GRPO). gym's GRPO adds the chat
template's end-of-turn token to the model's ``generation_config.eos_token_id`` (``stop_at_end_of_turn``); the
TRL run gets the same, so both sample completions of the same lengths.

Timing: the process's own CPU time (``time.process_time``) from the end of the warm-up steps to the end of
the last step, divided by the timed steps; with one torch thread (the default) it is mostly the work a step
needed whatever else the machine runs (a busy machine still slows it through shared caches: use --repeat 4+). Wall time per step is printed too. The runs of each repeat alternate gym and
TRL; tables give medians over repeats and the gym / TRL ratio (target: within 3%).

Reference memory (runs ``dpo`` and ``dpo-lora``): the parameter bytes the reference takes, read from the
trainer at the start of training: ``trainer.ref_model``'s parameters (full fine-tuning: a frozen copy of the
model) plus any extra adapter copies on the policy (PEFT adapters other than the trained one, TRL's ``ref``).
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
from _common import REPO, emit_result, print_machine, print_table, run_child

ALL_RUNS = ("dpo", "grpo", "dpo-lora")  # each as gym-<run> and trl-<run>
TARGET_VS_TRL = 0.03
REWARDS = "grpo_addition_rewards"


# ------------------------------------------------------------------------------------------- setup


def prepare(work: Path, opts) -> dict:
    """Save the model and tokenizer, the DPO pairs as text, the addition rows and the reward module."""
    from _common import quickstart_tokenizer
    from gym.plugins import addition, dpo
    from gym.tiny import build_model

    tokenizer, tokenizer_source = quickstart_tokenizer()
    model = build_model(tokenizer, hidden_size=opts.hidden, layers=opts.layers, heads=opts.heads,
                        kv_heads=opts.kv_heads, intermediate_size=opts.intermediate, seed=opts.seed)
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")

    pairs = dpo.materialize(f"builtin:addition-preferences?rows={opts.rows}")
    lengths = []
    with open(pairs) as src, (work / "pairs.jsonl").open("w") as out:
        for line in src:
            row = json.loads(line)
            full = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
            prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            rejected = tokenizer.apply_chat_template(row["prompt"] + row["rejected"], tokenize=False)
            assert full.startswith(prompt) and rejected.startswith(prompt)
            text = {"prompt": prompt, "chosen": full[len(prompt):], "rejected": rejected[len(prompt):]}
            lengths.append(len(tokenizer(text["prompt"] + text["chosen"])["input_ids"]))
            out.write(json.dumps(text) + "\n")
    rows = addition.materialize(f"builtin:addition?rows={opts.rows}")
    shutil.copy(rows, work / "addition.jsonl")
    shutil.copy(REPO / "examples" / f"{REWARDS}.py", work / f"{REWARDS}.py")
    return {"params": sum(p.numel() for p in model.parameters()), "tokenizer": tokenizer_source,
            "pair_len": statistics.mean(lengths)}


# ----------------------------------------------------------------------------------------- children


def keep_built_trainer(holder: dict) -> None:
    """Put the trainer gym's DPO or GRPO method builds in ``holder["trainer"]`` (the builders are looked up by name
    when the trainer phase runs), to read its reference afterwards."""
    import gym.plugins.grpo as grpo_plugin
    import gym.plugins.preference as preference_plugin

    for module, name in ((preference_plugin, "build_dpo_trainer"), (grpo_plugin, "build_trainer")):
        original = getattr(module, name)

        def keep(parts, _original=original):
            holder["trainer"] = _original(parts)
            return holder["trainer"]

        setattr(module, name, keep)


def reference_bytes(trainer, model) -> dict:
    """Parameter bytes of the reference: ``trainer.ref_model`` and adapter copies beside the trained adapter."""
    ref = getattr(trainer, "ref_model", None) if trainer is not None else None
    ref_bytes = sum(p.numel() * p.element_size() for p in ref.parameters()) if ref is not None else 0
    extra = 0
    configs = getattr(model, "peft_config", None)
    if isinstance(configs, dict):
        active = getattr(model, "active_adapter", "default")
        active = set(active if isinstance(active, list) else [active])
        others = [name for name in configs if name not in active]
        for name, p in model.named_parameters():
            if any(f".{other}." in name for other in others):
                extra += p.numel() * p.element_size()
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if "lora_" not in name)
    return {"ref_model_bytes": ref_bytes, "adapter_copy_bytes": extra, "policy_bytes": base,
            "trainable_bytes": trained}


def memory_callback(holder: dict):
    """Reads the reference memory when training begins (TRL's ``ref`` adapter is dropped at the end)."""
    from transformers import TrainerCallback

    class ReferenceMemory(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            holder.update(reference_bytes(holder.get("trainer"), model))

    return ReferenceMemory()


def common(opts, method: str) -> dict:
    grpo = method == "grpo"
    return {
        "micro_batch_size": opts.grpo_batch if grpo else opts.dpo_batch,
        "max_steps": opts.warmup + opts.steps,
        "learning_rate": 2e-5 if grpo else 1e-5,
        "beta": opts.grpo_beta if grpo else 0.1,
    }


def child_gym(work_dir: Path, run: str, opts) -> None:
    import yaml

    method = run.split("-")[0]
    lora = run.endswith("-lora")
    settings = common(opts, method)
    config = {
        "base_model": str(work_dir / "model"),
        "rl": method,
        "dataset_prepared_path": str(work_dir / f"prepared-{run}"),
        "shuffle_merged_datasets": False,
        "val_set_size": 0,
        "sequence_len": opts.sequence_len,
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
        "output_dir": str(work_dir / f"out-gym-{run}"),
    }
    if method == "dpo":
        config["datasets"] = [{"path": str(work_dir / "pairs.jsonl"), "type": "passthrough"}]
        config["rl_beta"] = settings["beta"]
    else:
        config["datasets"] = [{"path": str(work_dir / "addition.jsonl"), "type": "grpo.transform",
                               "transform": f"{REWARDS}.addition_prompt"}]
        config["chat_template"] = "tokenizer_default"
        config["trl"] = {"reward_funcs": [f"{REWARDS}.correct_sum"], "num_generations": opts.num_generations,
                         "max_completion_length": opts.max_completion_length, "temperature": opts.temperature,
                         "beta": settings["beta"]}
    if lora:
        config.update({"adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                       "lora_target_linear": True})
    path = work_dir / f"gym-{run}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    from _throughput import register_with_gym, throughput_callback
    from transformers import AutoTokenizer

    holder: dict = {}
    callback = throughput_callback(AutoTokenizer.from_pretrained(work_dir / "model").pad_token_id, opts.warmup)
    register_with_gym(callback)
    register_with_gym_memory(memory_callback(holder))
    keep_built_trainer(holder)
    from gym.config import load_config
    from gym.run import run as train

    train(load_config(path))
    holder.pop("trainer", None)
    emit_result({**callback.result(), **holder})


def register_with_gym_memory(callback) -> None:
    from _throughput import BenchPlugin
    from gym.plugin_manager import get_plugin_manager

    get_plugin_manager().register(BenchPlugin(callback), "bench_reference_memory")


def child_trl(work_dir: Path, run: str, opts) -> None:
    import torch
    from _throughput import throughput_callback
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    method = run.split("-")[0]
    lora = run.endswith("-lora")
    settings = common(opts, method)
    tokenizer = AutoTokenizer.from_pretrained(work_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(work_dir / "model", dtype=torch.float32)
    shared = {
        "output_dir": str(work_dir / f"out-trl-{run}"),
        "per_device_train_batch_size": settings["micro_batch_size"],
        "gradient_accumulation_steps": 1,
        "max_steps": settings["max_steps"],
        "learning_rate": settings["learning_rate"],
        "lr_scheduler_type": "constant",
        "optim": "adamw_torch",
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
        "report_to": "none",
        "seed": opts.seed,
        "beta": settings["beta"],
    }
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    holder: dict = {}
    callbacks = [throughput_callback(tokenizer.pad_token_id, opts.warmup), memory_callback(holder)]
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        rows = [json.loads(line) for line in (work_dir / "pairs.jsonl").read_text().splitlines()]
        trainer = DPOTrainer(model=model, args=DPOConfig(max_length=opts.sequence_len, **shared),
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=peft_config, callbacks=callbacks)
    else:
        from trl import GRPOConfig, GRPOTrainer

        sys.path.insert(0, str(work_dir))
        rewards = __import__(REWARDS)
        rows = [rewards.addition_prompt(json.loads(line))
                for line in (work_dir / "addition.jsonl").read_text().splitlines()]
        # What gym's stop_at_end_of_turn does for chat prompts: stop sampling at the template's end of turn too.
        end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if end_of_turn is not None and end_of_turn not in eos:
            model.generation_config.eos_token_id = [*eos, end_of_turn]
        args = GRPOConfig(num_generations=opts.num_generations, max_completion_length=opts.max_completion_length,
                          temperature=opts.temperature, **shared)
        trainer = GRPOTrainer(model=model, reward_funcs=[rewards.correct_sum], args=args,
                              train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                              peft_config=peft_config, callbacks=callbacks)
    holder["trainer"] = trainer
    trainer.train()
    holder.pop("trainer")
    emit_result({**callbacks[0].result(), **holder})


# ------------------------------------------------------------------------------------------- parent


def mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB ({int(n):,} B)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(ALL_RUNS),
                        help=f"comma-separated, of {', '.join(ALL_RUNS)} (each run as gym and as TRL)")
    parser.add_argument("--repeat", type=int, default=2, help="repeats of the whole set (default 2); medians reported")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--rows", type=int, default=512, help="DPO pairs and GRPO prompts written (default 512)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default 1: CPU time per step is then the step's own work on "
                             "a shared machine; 0 = torch's own choice)")
    parser.add_argument("--sequence-len", type=int, default=64, help="sequence_len / DPO max_length (default 64)")
    parser.add_argument("--dpo-batch", type=int, default=8, help="DPO micro_batch_size in pairs (default 8)")
    parser.add_argument("--grpo-batch", type=int, default=16,
                        help="GRPO micro_batch_size in completions (default 16: 2 prompts x 8 generations)")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--grpo-beta", type=float, default=0.0, help="GRPO KL coefficient (default 0, TRL's)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true")
    opts, rest = parser.parse_known_args()

    if opts.threads > 0:
        import torch

        torch.set_num_threads(opts.threads)
    if rest:
        program, work, run = rest
        return (child_gym if program == "_gym" else child_trl)(Path(work), run, opts)

    runs = [r for r in opts.runs.split(",") if r]
    unknown = set(runs) - set(ALL_RUNS)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}")
    work = Path(opts.workdir or tempfile.mkdtemp(prefix="gym-bench-pref-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        facts = prepare(work, opts)
        passthrough = [
            f"--{name.replace('_', '-')}={value}" for name, value in vars(opts).items()
            if name not in ("runs", "repeat", "workdir", "keep") and value is not None
        ]
        print_machine("Preference and RL steps on the CPU")
        print(f"model: Llama-style, {facts['params'] / 1e6:.2f} M parameters (hidden {opts.hidden}, {opts.layers} "
              f"layers, {opts.heads} heads, {opts.kv_heads} kv heads, MLP {opts.intermediate}), fp32; tokenizer "
              f"{facts['tokenizer']}; DPO: {opts.rows} addition pairs (mean {facts['pair_len']:.0f} tokens prompt + "
              f"chosen), micro_batch_size {opts.dpo_batch}, beta 0.1, max_length {opts.sequence_len}, lr 1e-5; "
              f"GRPO: {opts.rows} addition prompts, micro_batch_size {opts.grpo_batch}, num_generations "
              f"{opts.num_generations}, max_completion_length {opts.max_completion_length}, temperature "
              f"{opts.temperature}, beta {opts.grpo_beta}, lr 2e-5; LoRA r 8, alpha 16, all linear layers; "
              f"{opts.warmup} warm-up + {opts.steps} timed steps; torch threads {opts.threads or 'torch default'}; "
              f"{opts.repeat} repeat(s), medians; timed by CPU time (time.process_time)")
        print()
        results: dict[str, list[dict]] = {f"{p}-{r}": [] for r in runs for p in ("gym", "trl")}
        for i in range(opts.repeat):
            for run in runs:
                for program in (("gym", "trl") if i % 2 == 0 else ("trl", "gym")):
                    result = run_child(HERE / "preference.py", [*passthrough, f"_{program}", str(work), run],
                                       env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
                    results[f"{program}-{run}"].append(result)
                    print(f"repeat {i + 1}: {program}-{run}: {result['cpu_s_per_step']:.3f} CPU s/step",
                          file=sys.stderr)

        def med(name: str, key: str) -> float:
            return statistics.median(r[key] for r in results[name])

        table = []
        for name, values in results.items():
            table.append([name, med(name, "cpu_s_per_step"), med(name, "s_per_step"),
                          med(name, "rows") / opts.steps, med(name, "tokens") / opts.steps,
                          ", ".join(f"{r['cpu_s_per_step']:.3f}" for r in values)])
        print_table(["run", "CPU s/step", "wall s/step", "rows/step", "tokens/step", "CPU s/step, per repeat"], table)

        comparisons = []
        for run in runs:
            g, t = results[f"gym-{run}"], results[f"trl-{run}"]
            cpu = [a["cpu_s_per_step"] / b["cpu_s_per_step"] for a, b in zip(g, t)]
            wall = [a["s_per_step"] / b["s_per_step"] for a, b in zip(g, t)]
            judged = statistics.median(cpu if opts.threads == 1 else wall)
            comparisons.append([f"gym / TRL, {run}", f"{statistics.median(cpu):.3f}", f"{statistics.median(wall):.3f}",
                                ", ".join(f"{x:.3f}" for x in cpu),
                                "yes" if judged <= 1 + TARGET_VS_TRL else f"MISSED by {judged - 1 - TARGET_VS_TRL:.1%}"])
        print(f"Ratios of time per optimizer step, gym / TRL (below 1: gym faster); medians of the per-repeat ratios. "
              f"Judged on {'CPU time' if opts.threads == 1 else 'wall time'}; target <= {1 + TARGET_VS_TRL:.2f}.")
        print()
        print_table(["comparison", "CPU ratio", "wall ratio", "CPU, per repeat", "target met"], comparisons)

        memory = []
        for run in runs:
            if not run.startswith("dpo"):
                continue
            for program in ("gym", "trl"):
                r = results[f"{program}-{run}"][0]
                total = r["ref_model_bytes"] + r["adapter_copy_bytes"]
                memory.append([f"{program}-{run}", "LoRA" if run.endswith("lora") else "full",
                               r["ref_model_bytes"], r["adapter_copy_bytes"], total,
                               f"{total / r['policy_bytes']:.1%}", r["policy_bytes"], r["trainable_bytes"]])
        if memory:
            print("Reference memory of DPO, parameter bytes read from the trainer when training begins.")
            print()
            print_table(["run", "fine-tuning", "ref_model bytes", "adapter copy bytes", "reference total",
                         "of the model", "base model bytes", "trained bytes"], memory)
    finally:
        if not opts.keep and not opts.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
