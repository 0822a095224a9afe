"""The fsdp plugin: its keys (Axolotl's spellings included), what it refuses, the training arguments it maps to,
and real FSDP2 sharding on 2 CPU processes (gloo) against one process with the same global batch."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gym import testing
from gym.errors import ConfigError
from gym.plugins import fsdp

# The same data, seed and global batch of 4 rows: one process x 4 rows, or two processes x 2 rows.
CONFIG = {
    "base_model": "builtin:tiny-llama-micro",
    "datasets": [{"path": "builtin:addition?rows=400", "type": "chat_template"}],
    "chat_template": "tokenizer_default",
    "sequence_len": 64,
    "micro_batch_size": 2,
    "max_steps": 6,
    "seed": 7,
    "sample_packing": False,
    "fsdp_version": 2,
    "fsdp_config": {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                    "reshard_after_forward": True},
}
# Weights after 6 steps of FSDP2 on 2 processes and of one process differ only by the order of float32 additions
# (the gradient reduce-scatter): measured 3.4e-7 (full fine-tuning) and 7.5e-8 (LoRA); losses 4.8e-7. The tests
# allow 1e-5 and 1e-4.
WEIGHT_TOLERANCE = 1e-5
LOSS_TOLERANCE = 1e-4


def problems(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        testing.validate({**CONFIG, **config})
    # each problem reads "field (config.yml:LINE): message [plugin]"; the line number is dropped here
    return [re.sub(r" \([^()]*config\.yml:\d+\)", "", problem) for problem in err.value.problems]


# ------------------------------------------------------------------------------------------ validation


def test_fsdp2_keys_validate_and_map_to_transformers_names():
    cfg = testing.validate({**CONFIG, "fsdp_config": {
        "offload_params": True, "state_dict_type": "SHARDED_STATE_DICT", "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": "LlamaDecoderLayer, MistralDecoderLayer", "reshard_after_forward": False,
        "cpu_ram_efficient_loading": True, "activation_checkpointing": True}})
    assert fsdp.transformers_fsdp_config(cfg) == {
        "version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "SHARDED_STATE_DICT",
        "reshard_after_forward": False, "cpu_ram_efficient_loading": True, "activation_checkpointing": True,
        "cpu_offload": True, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer", "MistralDecoderLayer"]}


def test_axolotl_prefixed_spellings_and_the_legacy_list():
    """The older Axolotl layout: `fsdp: [full_shard, auto_wrap, offload]` and `fsdp_`-prefixed keys, no version."""
    cfg = testing.validate({**CONFIG, "fsdp_version": None, "fsdp": ["full_shard", "auto_wrap", "offload"],
                            "fsdp_config": {"fsdp_offload_params": False, "fsdp_state_dict_type": "FULL_STATE_DICT",
                                            "fsdp_sharding_strategy": "FULL_SHARD", "fsdp_use_orig_params": False,
                                            "fsdp_sync_module_states": True, "fsdp_limit_all_gathers": True,
                                            "fsdp_cpu_ram_efficient_loading": True,
                                            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                                            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}})
    mapped = fsdp.transformers_fsdp_config(cfg)
    assert mapped["version"] == 2 and mapped["reshard_after_forward"] is True
    assert mapped["cpu_offload"] is True  # from the list's `offload`
    assert mapped["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    notes = fsdp.run_notes(cfg)
    assert any("use_orig_params" in n and "changes nothing" in n for n in notes)  # said, not silently dropped
    assert any("limit_all_gathers" in n for n in notes) and any("sync_module_states" in n for n in notes)
    # shard_grad_op is FSDP2's reshard_after_forward: false; fsdp_version 1 runs as FSDP2 and says so
    cfg = testing.validate({**CONFIG, "fsdp_version": 1, "fsdp": "shard_grad_op auto_wrap", "fsdp_config": {}})
    assert fsdp.transformers_fsdp_config(cfg)["reshard_after_forward"] is False
    assert any("FSDP1" in n for n in fsdp.run_notes(cfg))


@pytest.mark.parametrize("config, expected", [
    ({"fsdp": ["hybrid_shard"]}, "fsdp: hybrid_shard: FSDP1's hybrid sharding"),
    ({"fsdp": ["no_shard"]}, "fsdp: no_shard: shards nothing"),
    ({"fsdp": ["full_shard", "zero9"]}, "fsdp: unknown item 'zero9'"),
    ({"fsdp_config": {"sharding_strategy": "SHARD_GRAD_OP", "reshard_after_forward": True}},
     "fsdp_config.reshard_after_forward: the settings disagree"),
    ({"fsdp_config": {"state_dict_type": "LOCAL_STATE_DICT"}}, "fsdp_config.state_dict_type: LOCAL_STATE_DICT"),
    ({"fsdp_final_state_dict_type": "SHARDED_STATE_DICT"}, "fsdp_final_state_dict_type: SHARDED_STATE_DICT: gym "
                                                           "always writes the final model gathered"),
    ({"fsdp_config": {"auto_wrap_policy": "SIZE_BASED_WRAP"}}, "fsdp_config.min_num_params: SIZE_BASED_WRAP needs"),
    ({"fsdp_config": {"mixed_precision_policy": "bf16"}}, "fsdp_config.mixed_precision_policy: FSDP2's mixed"),
    ({"fsdp_config": {"cpu_offload_pin_memory": False}}, "fsdp_config.cpu_offload_pin_memory: false cannot"),
    ({"fsdp_config": {"sync_module_states": False}}, "fsdp_config.sync_module_states: false cannot be honoured"),
    ({"fsdp_version": 2, "fsdp_config": {"fsdp_version": 1}}, "fsdp_config.fsdp_version: says 1 but"),
    ({"deepspeed": "zero3"}, "fsdp_config: FSDP and DeepSpeed both shard the model"),
    ({"adapter": "lora", "load_in_8bit": True}, "load_in_8bit: 8-bit weights"),
])
def test_what_fsdp2_cannot_honour_is_refused_with_the_reason(config, expected):
    found = problems(config)
    assert any(p.startswith(expected) for p in found), found


def test_one_key_given_both_ways_must_agree():
    found = problems({"fsdp_config": {"offload_params": True, "fsdp_offload_params": False}})
    assert any("offload_params is given twice" in p for p in found), found


def test_a_config_without_fsdp_keys_is_left_alone():
    cfg = testing.validate({key: value for key, value in CONFIG.items() if not key.startswith("fsdp")})
    assert not fsdp.asked(cfg)
    assert fsdp.gym_validate_config(cfg) is None
    assert fsdp.gym_training_arguments(cfg) is None and fsdp.gym_callbacks(cfg) is None


def test_qlora_with_fsdp_on_a_cpu_is_refused_before_anything_runs():
    cfg = testing.validate({**CONFIG, "adapter": "qlora", "load_in_4bit": True})
    with pytest.raises(ConfigError, match="QLoRA's 4-bit weights are sharded by FSDP2 only on GPUs"):
        fsdp.gym_launch(cfg=cfg)  # in the process the user started: before data and before the workers


def test_the_training_arguments_on_several_processes(monkeypatch):
    """What a worker of a 2-process run hands transformers (transformers' own names, FSDP version 2), and that
    TrainingArguments turns it into accelerate's FSDP2 plugin settings."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(fsdp, "on_gpu", lambda cfg: True)  # as on GPUs (no accelerate patch in the test process)
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # TrainingArguments sets it; restored after
    cfg = testing.validate({**CONFIG, "gradient_checkpointing": True, "fsdp": ["shard_grad_op", "offload"],
                            "fsdp_config": {"fsdp_activation_checkpointing": True,
                                            "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}})
    arguments = fsdp.gym_training_arguments(cfg)
    assert arguments == {"fsdp": True, "activation_checkpointing": False, "fsdp_config": {
        "version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "FULL_STATE_DICT",
        "reshard_after_forward": False, "cpu_ram_efficient_loading": False, "activation_checkpointing": True,
        "cpu_offload": True, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}}
    from transformers import TrainingArguments

    monkeypatch.delenv("WORLD_SIZE")  # one process builds the arguments here (no process group)
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none", **arguments)
    assert args.fsdp_plugin_args == {
        "fsdp_version": 2, "cpu_offload": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_cls_names_to_wrap": "LlamaDecoderLayer", "cpu_ram_efficient_loading": False,
        "state_dict_type": "FULL_STATE_DICT", "activation_checkpointing": True, "reshard_after_forward": False}
    # with an adapter, the model's own gradient checkpointing recomputes (PEFT cannot see through FSDP's wrappers)
    monkeypatch.setenv("WORLD_SIZE", "2")
    lora = testing.validate({**CONFIG, "adapter": "lora", "fsdp_config": {"activation_checkpointing": True}})
    arguments = fsdp.gym_training_arguments(lora)
    assert arguments["activation_checkpointing"] is True and arguments["fsdp_config"]["activation_checkpointing"] is False


def test_offloading_on_a_cpu_is_said_and_not_passed(monkeypatch, capsys):
    """torch's offload pins memory, which needs an accelerator; on a CPU the parameters are in CPU memory anyway."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(fsdp, "on_gpu", lambda cfg: False)
    monkeypatch.setattr(fsdp, "shard_on_cpu", lambda: None)
    cfg = testing.validate({**CONFIG, "fsdp_config": {"offload_params": True}})
    assert "cpu_offload" not in fsdp.gym_training_arguments(cfg)["fsdp_config"]
    assert "offload_params: on a CPU the parameters are in CPU memory already" in capsys.readouterr().out


def test_one_process_trains_unsharded_and_says_so(monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = testing.validate(CONFIG)
    assert fsdp.gym_training_arguments(cfg) is None
    assert "one process, so there is nothing to shard" in capsys.readouterr().out
    assert fsdp.gym_callbacks(cfg) is None


def test_an_unsharded_model_stops_the_run():
    """The guard against accelerate's quiet fallback: a model that reaches training without FSDP2 modules."""
    import torch

    from gym.errors import GymError

    with pytest.raises(GymError, match="the model was not sharded"):
        fsdp.shard_callback().on_train_begin(None, None, None, model=torch.nn.Linear(2, 2))


def test_validation_imports_no_torch(tmp_path):
    code = ("import sys; from gym import testing; "
            f"testing.validate({CONFIG!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- slow


def _weights(path: Path, name: str = "model.safetensors") -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / name))


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# Checkpoints at step 3; the layers checkpointed by FSDP; rank 0 alone loads the weights and broadcasts them.
SHARDED_RUN = {**CONFIG, "save_strategy": "steps", "save_steps": 3,
               "fsdp_config": {**CONFIG["fsdp_config"], "activation_checkpointing": True,
                               "cpu_ram_efficient_loading": True}}


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """One 2-process FSDP2 run with a checkpoint at step 3 (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("fsdp2")
    done = testing.run_processes(SHARDED_RUN, 2, tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "output", done.stdout + done.stderr


@pytest.mark.slow
def test_two_sharded_processes_train_as_one_process(sharded_run, tmp_path):
    output, log = sharded_run
    assert "parameters held per process (FSDP2): rank 0 25,680 of 51,360 (50.0%), rank 1 25,680 of 51,360 " \
           "(50.0%)" in log
    alone = testing.run_config({**CONFIG, "micro_batch_size": 4}, steps=6, tmp_path=tmp_path)
    assert testing.logged_losses(output) == pytest.approx(testing.logged_losses(alone.output_dir), abs=LOSS_TOLERANCE)
    assert len(testing.logged_losses(output)) == 6
    assert _max_difference(_weights(output), _weights(Path(alone.output_dir))) < WEIGHT_TOLERANCE
    # the final model is one plain checkpoint that transformers loads
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(output))
    saved = _weights(output)
    assert all(float((tensor - saved[name]).abs().max()) == 0 for name, tensor in model.state_dict().items())


@pytest.mark.slow
def test_resuming_a_sharded_run_ends_with_the_same_weights(sharded_run, tmp_path):
    output, _ = sharded_run
    shutil.copytree(output / "checkpoint-3", tmp_path / "output" / "checkpoint-3")
    done = testing.run_processes({**SHARDED_RUN, "auto_resume_from_checkpoints": True}, 2, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout + done.stderr
    assert _max_difference(_weights(tmp_path / "output"), _weights(output)) < WEIGHT_TOLERANCE


@pytest.mark.slow
def test_lora_with_fsdp2_gathers_the_adapter(tmp_path):
    """LoRA on 2 sharded processes with sharded checkpoints and activation checkpointing: the same adapter as one
    process, written gathered, loading in peft."""
    config = {**CONFIG, "adapter": "lora", "lora_r": 8, "lora_target_linear": True, "save_strategy": "steps",
              "save_steps": 3, "fsdp_config": {"state_dict_type": "SHARDED_STATE_DICT", "activation_checkpointing": True}}
    done = testing.run_processes(config, 2, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    output = tmp_path / "two" / "output"
    assert "parameters held per process (FSDP2): rank 0" in done.stdout and "(50.0%)" in done.stdout
    assert (output / "checkpoint-3" / "pytorch_model_fsdp_0" / ".metadata").is_file()  # a sharded checkpoint
    alone = testing.run_config({**config, "micro_batch_size": 4}, steps=6, tmp_path=tmp_path / "one")
    assert testing.logged_losses(output) == pytest.approx(testing.logged_losses(alone.output_dir), abs=LOSS_TOLERANCE)
    adapter = _weights(output, "adapter_model.safetensors")
    assert len(adapter) == 28  # q, k, v, o, gate, up, down: A and B, 2 layers
    assert _max_difference(adapter, _weights(Path(alone.output_dir), "adapter_model.safetensors")) < WEIGHT_TOLERANCE
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(testing.tiny_model())), str(output))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(adapter)
    # resuming from the sharded checkpoint ends with the same adapter
    shutil.copytree(output / "checkpoint-3", tmp_path / "resumed" / "output" / "checkpoint-3")
    done = testing.run_processes({**config, "auto_resume_from_checkpoints": True}, 2, tmp_path / "resumed")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout + done.stderr
    resumed = _weights(tmp_path / "resumed" / "output", "adapter_model.safetensors")
    assert _max_difference(resumed, adapter) < WEIGHT_TOLERANCE


def test_a_layer_class_the_model_lacks_is_named(monkeypatch):
    from gym.errors import ModelError
    from gym.tiny import build_model, build_tokenizer

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = testing.validate({**CONFIG, "fsdp_config": {"transformer_layer_cls_to_wrap": "Qwen2DecoderLayer"}})
    with pytest.raises(ModelError, match=r"Qwen2DecoderLayer is not a module of this model \(its layer classes: "
                                         r"LlamaDecoderLayer\)"):
        fsdp.gym_after_wrap_model(cfg=cfg, model=build_model(build_tokenizer()))
