"""DeepSpeed ZeRO (plugin ``deepspeed``): what ``deepspeed:`` accepts and refuses at validation, and on 2 CPU
processes (gloo) that ZeRO-2 and ZeRO-3 train exactly what one process trains with the same global batch.

The proofs compare, step by step, the logged losses and the final weights of a 2-process run (micro batch 2 on
each) with a 1-process run without DeepSpeed (micro batch 4), same seed and data. Tolerance: losses within a
relative 1e-5, every weight within an absolute 1e-5 (measured: 7e-8; the weights move by 2.5e-3 in training).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gym import testing
from gym.api import ConfigError, StrictConfig, hookimpl
from gym.plugins import deepspeed as ds

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def base(**extra):
    return {"base_model": testing.TINY_MODEL, "datasets": [{"path": "data.jsonl", "type": "alpaca"}], **extra}


def problems_of(config: dict, *plugins) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        testing.validate(config, *plugins)
    return [p for p in caught.value.problems if "deepspeed" in p or "deepcompile" in p]


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("name", list(ds.PRESETS))
def test_presets_validate_and_leave_the_batch_and_precision_to_gym(name):
    cfg = testing.validate(base(deepspeed=name))
    resolved = ds.resolve(cfg)
    assert resolved.note is None and resolved.source == f"gym's built-in preset {name}"
    config = resolved.config
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    assert "optimizer" not in config and "scheduler" not in config  # gym's optimizer and lr_scheduler
    assert resolved.stage == int(name[4])
    if resolved.stage == 3:  # the final model is gathered into one plain Hugging Face model
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds.resolve(cfg).config is not config  # a fresh copy each time: transformers fills it in place


def test_offload_presets_put_what_they_say_on_the_cpu():
    assert ds.PRESETS["zero3_offload"]["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds.PRESETS["zero3_offload"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_optimizer" not in ds.PRESETS["zero3_offload_params"]["zero_optimization"]
    assert ds.PRESETS["zero3_offload_params"]["zero_optimization"]["offload_param"]["device"] == "cpu"


@pytest.mark.parametrize("axolotl, preset", sorted(ds.AXOLOTL_NAMES.items()))
def test_axolotl_file_names_that_are_not_files_use_the_preset_of_that_name(axolotl, preset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = f"deepspeed_configs/{axolotl}.json"
    resolved = ds.resolve(testing.validate(base(deepspeed=path)))
    assert resolved.config == ds.PRESETS[preset]
    note = f"deepspeed: {path} is not a file here; using gym's built-in preset {preset}"
    if "bf16" in axolotl:
        note += " (precision follows gym's bf16 / fp16 keys)"
    if "torch_compile" in axolotl:
        note += " (torch.compile follows gym's torch_compile key)"
    assert resolved.note == note


# The files of Axolotl's deepspeed_configs/ folder, which its example configs name (copied from its repository; the
# examples in ../shared/compat name zero3.json and zero3_bf16_cpuoffload_all.json).
AXOLOTL_DEEPSPEED_FILES = ("zero1.json", "zero1_torch_compile.json", "zero2.json", "zero2_torch_compile.json",
                           "zero3.json", "zero3_bf16.json", "zero3_bf16_cpuoffload_all.json",
                           "zero3_bf16_cpuoffload_params.json")


def test_every_axolotl_deepspeed_file_name_has_a_preset():
    assert {name.removesuffix(".json") for name in AXOLOTL_DEEPSPEED_FILES} <= set(ds.AXOLOTL_NAMES)


def test_an_unknown_name_lists_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    [problem] = problems_of(base(deepspeed="zero4"))
    assert problem.startswith("deepspeed")
    assert "'zero4' is neither a built-in preset (zero1, zero2, zero3, zero3_offload, zero3_offload_params)" in problem
    [problem] = problems_of(base(deepspeed="configs/mine.json"))
    assert "'configs/mine.json' is neither a built-in preset" in problem and "nor a file" in problem


def test_a_json_file_is_read_relative_to_the_config_then_the_working_directory(tmp_path, monkeypatch):
    from gym.api import load_config

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "ds").mkdir(parents=True)
    elsewhere.mkdir()
    mine = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}
    (project / "ds" / "mine.json").write_text(json.dumps(mine))
    (project / "config.yml").write_text(f"base_model: {testing.TINY_MODEL}\ndatasets:\n  - path: d.jsonl\n"
                                        "    type: alpaca\ndeepspeed: ds/mine.json\n")
    monkeypatch.chdir(elsewhere)
    resolved = ds.resolve(load_config(project / "config.yml"))
    assert resolved.source == str(project / "ds" / "mine.json")
    # What the file leaves out of the values gym fills becomes "auto" (follows the config).
    assert resolved.config == {**mine, "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
                               "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}
    # A path that is not next to the config is looked up in the working directory.
    (elsewhere / "other.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    (project / "config.yml").write_text((project / "config.yml").read_text().replace("ds/mine.json", "other.json"))
    assert ds.resolve(load_config(project / "config.yml")).stage == 3


def test_bad_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "zero_optimization": {"stage": 2},\n  "bf16": {"enabled": auto}\n}\n')
    [problem] = problems_of(base(deepspeed=str(path)))
    assert f"{path} is not valid JSON: line 3" in problem
    path.write_text("[1, 2]")
    [problem] = problems_of(base(deepspeed=str(path)))
    assert "holds a JSON list, not an object of DeepSpeed settings" in problem


def test_an_inline_config_is_accepted():
    cfg = testing.validate(base(deepspeed={"zero_optimization": {"stage": 3}}))
    assert ds.resolve(cfg).stage == 3 and ds.resolve(cfg).source == "the config (inline)"


def test_explicit_numbers_must_agree_with_the_gym_config(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 4,
                                "gradient_accumulation_steps": 2, "train_batch_size": 7,
                                "optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}))
    found = problems_of(base(deepspeed=str(path), micro_batch_size=2, gradient_accumulation_steps=1,
                             learning_rate=0.001))
    text = "\n".join(found)
    assert "train_micro_batch_size_per_gpu is 4 in the DeepSpeed config but micro_batch_size is 2" in text
    assert "gradient_accumulation_steps is 2 in the DeepSpeed config but gradient_accumulation_steps is 1" in text
    assert "optimizer.params.lr is 0.1 in the DeepSpeed config but learning_rate is 0.001" in text
    assert "train_batch_size is 7 in the DeepSpeed config, not a multiple of micro_batch_size x " \
           "gradient_accumulation_steps = 2" in text
    assert all('write "auto" there' in p for p in found)
    # The same numbers, agreeing with the config, validate.
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 2,
                                "gradient_accumulation_steps": 1, "train_batch_size": 4}))
    cfg = testing.validate(base(deepspeed=str(path), micro_batch_size=2, gradient_accumulation_steps=1))
    # ... and at run time the total is checked against the number of processes.
    assert ds.mismatches(ds.resolve(cfg), cfg, world_size=2) == []
    assert ds.mismatches(ds.resolve(cfg), cfg, world_size=4) == [
        "train_batch_size is 4 in the DeepSpeed config but micro_batch_size x gradient_accumulation_steps x "
        "processes is 2 x 4 = 8"]


def test_a_file_with_its_own_optimizer_and_scheduler_says_they_replace_gyms(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2},
                                "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
                                "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": "auto"}}}))
    cfg = testing.validate(base(deepspeed=str(path), optimizer="adamw_torch", lr_scheduler="cosine"))
    assert ds._notes(cfg, ds.resolve(cfg)) == [
        f"deepspeed: {path} names its own optimizer (AdamW); it replaces gym's optimizer: adamw_torch",
        f"deepspeed: {path} names its own scheduler (WarmupLR); it replaces gym's lr_scheduler: cosine",
    ]


def test_zero3_must_gather_the_final_model(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3, ds.GATHER_ON_SAVE: False}}))
    [problem] = problems_of(base(deepspeed=str(path)))
    assert f"{ds.GATHER_ON_SAVE} is false in {path}: the final model would be left as DeepSpeed shards" in problem
    path.write_text(json.dumps({"zero_optimization": {"stage": 4}}))
    [problem] = problems_of(base(deepspeed=str(path)))
    assert "must be an object whose stage is 0, 1, 2 or 3" in problem


def test_precision_written_in_the_json_must_agree(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}))
    [problem] = problems_of(base(deepspeed=str(path), bf16=False))
    assert "bf16.enabled is true in the DeepSpeed config but bf16 is false in gym's config" in problem


class FsdpKeys(StrictConfig):
    fsdp_config: dict | None = None


@hookimpl
def gym_config_schema():
    return FsdpKeys


def test_deepspeed_and_fsdp_together_are_refused():
    manager = testing.plugin_manager()
    plugins = () if "fsdp_config" in manager.schema().model.model_fields else (sys.modules[__name__],)
    found = problems_of(base(deepspeed="zero2", fsdp_config={"reshard_after_forward": True}), *plugins)
    [problem] = [p for p in found if p.endswith("[deepspeed]")]  # the fsdp plugin may say so too
    assert "DeepSpeed and FSDP are two engines for the same job; set deepspeed or fsdp_config, not both" in problem


def test_deepcompile_is_refused_clearly():
    [problem] = problems_of(base(deepspeed="zero3", deepcompile=True))
    assert problem.startswith("deepcompile") and "not supported by gym" in problem
    [problem] = problems_of(base(deepcompile=True))
    assert problem.startswith("deepcompile") and "needs deepspeed" in problem
    assert testing.validate(base(deepspeed="zero3", deepcompile=False)).deepcompile is False


def test_a_missing_deepspeed_package_is_a_config_problem(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    [problem] = problems_of(base(deepspeed="zero2"))
    assert "needs the deepspeed package, which is not installed: pip install 'gym-llm[deepspeed]'" in problem


def test_validation_imports_neither_torch_nor_deepspeed(tmp_path):
    (tmp_path / "config.yml").write_text(f"base_model: {testing.TINY_MODEL}\ndatasets:\n  - path: d.jsonl\n"
                                         "    type: alpaca\ndeepspeed: deepspeed_configs/zero3_bf16.json\n")
    code = ("import sys; from gym.api import load_config; load_config('config.yml'); "
            "print(sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_deepspeed_key_changes_nothing():
    cfg = testing.validate(base())
    assert ds.resolve(cfg) is None
    assert ds.gym_training_arguments(cfg) is None and ds.gym_callbacks(cfg) is None


# ------------------------------------------------------------------------------------ runs (2 processes)


def write_rows(path: Path) -> Path:
    rng = random.Random(3)
    rows = []
    for _ in range(64):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"instruction": f"What is {a} + {b}?", "input": "", "output": str(a + b)})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_keys(data: Path, **extra):
    return {"datasets": [{"path": str(data), "type": "alpaca"}], "max_steps": 4, "sample_packing": False,
            "seed": 7, **extra}


def weights(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder)).state_dict()


def assert_same_weights(ours: dict, theirs: dict) -> float:
    assert ours.keys() == theirs.keys()
    worst = max((ours[k].float() - theirs[k].float()).abs().max().item() for k in ours)
    assert worst <= WEIGHT_ATOL, f"weights differ by up to {worst}"
    return worst


def assert_same_losses(ours: list[float], theirs: list[float]) -> None:
    assert len(ours) == len(theirs) == 4
    assert ours == pytest.approx(theirs, rel=LOSS_RTOL)


def two_processes(config: dict, tmp_path: Path):
    done = testing.run_processes(config, 2, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One process without DeepSpeed, micro batch 4: the run the 2-process runs must reproduce."""
    folder = tmp_path_factory.mktemp("baseline")
    data = write_rows(folder / "data.jsonl")
    result = testing.run_config(run_keys(data, micro_batch_size=4), tmp_path=folder)
    output = Path(result.output_dir)
    return {"data": data, "losses": testing.logged_losses(output), "weights": weights(output)}


@pytest.mark.slow
def test_zero2_on_two_processes_matches_one_process_and_resumes(baseline, tmp_path):
    """Also: a ZeRO-2 checkpoint resumes (auto_resume_from_checkpoints) to the weights of the uninterrupted run,
    and Axolotl's file name runs unchanged, with a note."""
    config = run_keys(baseline["data"], deepspeed="deepspeed_configs/zero2.json", micro_batch_size=2,
                      save_strategy="steps", save_steps=2)
    done = two_processes(config, tmp_path)
    assert "note: deepspeed: deepspeed_configs/zero2.json is not a file here; using gym's built-in preset zero2" \
        in done.stdout
    assert "deepspeed: ZeRO stage 2 from gym's built-in preset zero2, 2 process(es)" in done.stdout
    output = tmp_path / "output"
    assert_same_losses(testing.logged_losses(output), baseline["losses"])
    uninterrupted = weights(output)
    assert_same_weights(uninterrupted, baseline["weights"])
    assert (output / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own optimizer state

    # Interrupted after step 2: the later checkpoint and the final model are gone; the run picks up at step 2.
    shutil.rmtree(output / "checkpoint-4")
    (output / "model.safetensors").unlink()
    done = two_processes({**config, "auto_resume_from_checkpoints": True}, tmp_path)
    assert "resuming from" in done.stdout and "checkpoint-2" in done.stdout
    assert_same_weights(weights(output), uninterrupted)


@pytest.mark.slow
def test_zero3_on_two_processes_holds_half_the_parameters_saves_one_model_and_resumes(baseline, tmp_path):
    config = run_keys(baseline["data"], deepspeed="zero3", micro_batch_size=2, save_strategy="steps", save_steps=2)
    done = two_processes(config, tmp_path)
    line = next(x for x in done.stdout.splitlines() if "parameters held per process (ZeRO-3)" in x)
    assert "rank 0 " in line and "rank 1 " in line and line.count("(50.0%)") == 2, line
    output = tmp_path / "output"
    results = json.loads((output / "gym_results.json").read_text())
    assert results["metrics"]["zero3_params_held_max_fraction"] == pytest.approx(0.5, abs=0.01)
    assert not list(output.glob("global_step*"))  # a plain Hugging Face model, no DeepSpeed shards
    assert_same_losses(testing.logged_losses(output), baseline["losses"])
    uninterrupted = weights(output)
    assert_same_weights(uninterrupted, baseline["weights"])

    # A ZeRO-3 checkpoint (each process's partition of parameters and optimizer state) resumes too.
    assert (output / "checkpoint-2" / "global_step2").is_dir()
    shutil.rmtree(output / "checkpoint-4")
    (output / "model.safetensors").unlink()
    done = two_processes({**config, "auto_resume_from_checkpoints": True}, tmp_path)
    assert "resuming from" in done.stdout and "checkpoint-2" in done.stdout
    assert_same_weights(weights(output), uninterrupted)


def adapter(folder: Path) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(testing.tiny_model())), str(folder))
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


@pytest.mark.slow
@pytest.mark.parametrize("preset, adapter_keys", [
    ("zero2", {"adapter": "lora"}),
    ("zero3", {"adapter": "lora", "merge_lora": True}),
    ("zero3", {"adapter": "qlora", "load_in_4bit": True}),
], ids=["lora-zero2", "lora-zero3", "qlora-zero3"])
def test_adapters_train_under_zero2_and_zero3_and_load_in_peft(baseline, preset, adapter_keys, tmp_path):
    keys = run_keys(baseline["data"], lora_target_linear=True, **adapter_keys)
    done = two_processes({**keys, "deepspeed": preset, "micro_batch_size": 2}, tmp_path)
    if preset == "zero3":
        assert done.stdout.count("(50.0%)") == 2
    output = tmp_path / "output"
    trained = adapter(output)
    assert trained and max(v.abs().max().item() for k, v in trained.items() if "lora_B" in k) > 1e-4
    # The same adapter run on one process without DeepSpeed (micro batch 4) trains the same adapter.
    alone = testing.run_config({**keys, "micro_batch_size": 4}, tmp_path=tmp_path / "alone")
    assert_same_losses(testing.logged_losses(output), testing.logged_losses(alone.output_dir))
    assert_same_weights(trained, adapter(Path(alone.output_dir)))
    if adapter_keys.get("merge_lora"):  # merged on the main process after ZeRO-3 training: a plain full model
        merged = weights(output / "merged")
        assert_same_weights(merged, weights(Path(alone.output_dir) / "merged"))


@pytest.mark.slow
def test_one_process_runs_in_process_and_leaves_no_launcher_environment(baseline, tmp_path):
    import os

    before = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    inline = {"zero_optimization": {"stage": 3}}  # the rest is filled: "auto" values, the gathered final model
    result = testing.run_config(run_keys(baseline["data"], deepspeed=inline, micro_batch_size=4), tmp_path=tmp_path)
    assert result.metrics["zero3_params_held_max_fraction"] == 1.0  # one process holds everything
    assert_same_losses(testing.logged_losses(result.output_dir), baseline["losses"])
    assert_same_weights(weights(Path(result.output_dir)), baseline["weights"])
    assert {k: os.environ.get(k) for k in before} == before
    # and nothing of DeepSpeed stays in the process: the next run here trains without it, as one process would
    again = testing.run_config(run_keys(baseline["data"], micro_batch_size=4), tmp_path=tmp_path / "again")
    assert "zero3_params_held_max_fraction" not in again.metrics
    assert_same_losses(testing.logged_losses(again.output_dir), baseline["losses"])
