"""LoRA and QLoRA through the whole of ``gym run``: what trains, what is saved, what plain PEFT loads."""

from __future__ import annotations

import pytest

import json
from pathlib import Path



BASE_KEYS = """\
base_model: {model}
datasets:
  - path: {data}
    type: alpaca
sequence_len: 512
micro_batch_size: 4
max_steps: 12
train_on_inputs: true
learning_rate: 0.01
lr_scheduler: constant
save_strategy: "no"
logging_steps: 1
bf16: false
"""


def run_config(tmp_path, inputs, extra: str, name: str = "config.yml", overrides=()):
    """Write and validate a config: the shared keys, ``output_dir`` in tmp_path, and ``extra``."""
    from gym.config import load_config

    model, data = inputs
    given = {line.split(":")[0] for line in extra.splitlines() if line and not line.startswith(" ")}
    base = "".join(line for line in BASE_KEYS.format(model=model, data=data).splitlines(keepends=True)
                   if line.split(":")[0] not in given)  # a key in extra replaces the shared one
    text = base + f"output_dir: {tmp_path / name.removesuffix('.yml')}\n" + extra
    path = tmp_path / name
    path.write_text(text)
    return load_config(path, overrides)


def base_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def logits(model, input_ids):
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def sample_ids(tokenizer):
    return tokenizer("Add the numbers: 12 + 30 = 42", return_tensors="pt")["input_ids"]


@pytest.mark.slow
def test_lora_run_trains_only_the_adapter_and_saves_it_for_plain_peft(tmp_path, tiny_run_inputs):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gym.run import run as train

    cfg = run_config(tmp_path, tiny_run_inputs, "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n")
    result = train(cfg)
    assert result.final_loss < result.first_loss - 0.3, (result.first_loss, result.final_loss)

    trained = result.trainer.model
    state = trained.get_base_model().state_dict()
    for name, tensor in base_weights(tiny_run_inputs[0]).items():
        prefix, _, leaf = name.rpartition(".")
        key = name if name in state else f"{prefix}.base_layer.{leaf}"
        assert torch.equal(state[key], tensor), f"base weight {name} changed"
    assert all("lora_" in n for n, p in trained.named_parameters() if p.requires_grad)

    out = Path(cfg.output_dir)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_run_inputs[0]), str(out))
    ids = sample_ids(AutoTokenizer.from_pretrained(out))
    torch.testing.assert_close(logits(plain, ids), logits(trained, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_qlora_run_trains_on_a_4bit_base(tmp_path, tiny_run_inputs):
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gym.run import run as train

    cfg = run_config(
        tmp_path, tiny_run_inputs, "adapter: qlora\nload_in_4bit: true\nlora_r: 8\nlora_alpha: 16\n"
        "lora_target_linear: true\ngradient_checkpointing: true\n"
    )
    result = train(cfg)
    assert result.final_loss < result.first_loss - 0.3, (result.first_loss, result.final_loss)
    base_layers = [m for n, m in result.trainer.model.named_modules() if n.endswith("base_layer")]
    assert len(base_layers) == 14 and all(isinstance(m, bnb.nn.Linear4bit) for m in base_layers)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_run_inputs[0]), cfg.output_dir)
    assert loaded.peft_config["default"].r == 8


@pytest.mark.slow
def test_rslora_and_dora_runs_train(tmp_path, tiny_run_inputs):
    from gym.run import run as train

    for name, keys in (("rslora.yml", "peft_use_rslora: true\nlora_r: 16\n"), ("dora.yml", "peft_use_dora: true\n")):
        cfg = run_config(tmp_path, tiny_run_inputs, "adapter: lora\nlora_target_linear: true\n" + keys, name=name)
        result = train(cfg)
        assert result.final_loss < result.first_loss - 0.3, (name, result.first_loss, result.final_loss)
    saved = json.loads((tmp_path / "dora" / "adapter_config.json").read_text())
    assert saved["use_dora"] is True
    assert json.loads((tmp_path / "rslora" / "adapter_config.json").read_text())["use_rslora"] is True


@pytest.mark.slow
def test_a_second_run_continues_from_lora_model_dir(tmp_path, tiny_run_inputs):
    from gym.run import run as train

    keys = "adapter: lora\nlora_target_modules: [q_proj, v_proj, down_proj]\n"
    first = train(run_config(tmp_path, tiny_run_inputs, keys, name="first.yml"))
    second = train(run_config(tmp_path, tiny_run_inputs, keys + f"lora_model_dir: {tmp_path / 'first'}\n",
                              name="second.yml"))
    # The second run starts where the first ended, not from a fresh (zero) adapter.
    assert second.first_loss < first.first_loss - 0.2, (first.first_loss, first.final_loss, second.first_loss)


def test_a_run_adding_tokens_without_training_their_embeddings_stops_with_the_key(tmp_path, tiny_run_inputs):
    from click.testing import CliRunner

    from gym.cli import main

    run_config(tmp_path, tiny_run_inputs, "adapter: lora\nlora_target_linear: true\ntokens: ['<|sum|>']\n")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "config.yml")])
    assert result.exit_code == 2, result.output
    assert "lora_modules_to_save" in result.output and "'<|sum|>'" in result.output
    assert "[embed_tokens, lm_head]" in result.output
    assert not (tmp_path / "config" / "adapter_config.json").exists()
