"""The lora plugin's hooks, called directly on a tiny model: what trains, what stays, what is refused."""

from __future__ import annotations

import math

import pytest

from gym.errors import ConfigError, ModelError
from gym.plugins import lora, quantization


def make_cfg(**keys):
    """A validated config with the given keys (base model and dataset are placeholders unless given)."""
    from gym.plugin_manager import get_plugin_manager

    data = {"base_model": "unused", "datasets": [{"path": "unused.jsonl", "type": "alpaca"}], **keys}
    return get_plugin_manager().schema().model.model_validate(data)


@pytest.fixture(scope="module")
def tokenizer():
    from gym.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def model(tokenizer):
    from gym.tiny import build_model

    return build_model(tokenizer)


def fixed_batch(tokenizer, rows: int = 2, length: int = 24):
    import torch

    torch.manual_seed(1)
    ids = torch.randint(4, len(tokenizer), (rows, length))
    return {"input_ids": ids, "labels": ids.clone()}


def train_steps(model, batch, steps: int = 8, lr: float = 1e-2) -> list[float]:
    """A few AdamW steps on one repeated batch; returns the loss of each step."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def base_state(model) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ adapter unset


def test_with_adapter_unset_no_hook_changes_anything(model, tokenizer):
    cfg = make_cfg()
    before = base_state(model)
    grads = {name: p.requires_grad for name, p in model.named_parameters()}

    assert lora.gym_validate_config(cfg) == []
    assert quantization.gym_validate_config(cfg) == []
    assert quantization.gym_model_load_kwargs(cfg) is None
    assert lora.gym_after_model_load(cfg, model, tokenizer) is None
    assert quantization.gym_after_model_load(cfg, model) is None
    assert lora.gym_wrap_model(cfg, model) is None
    assert lora.gym_after_train(cfg, "/nonexistent") is None

    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(after[name].equal(tensor) for name, tensor in before.items())


def test_lora_defaults_and_empty_axolotl_values():
    cfg = make_cfg(lora_r=None, lora_alpha=None, lora_dropout=None, lora_target_modules=None, load_in_8bit=None)
    assert (cfg.adapter, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (None, 8, 16, 0.0)
    assert cfg.load_in_8bit is False and cfg.load_in_4bit is False


# ------------------------------------------------------------------------------------------- wrapping


def test_target_linear_adapts_every_linear_layer_but_the_head(model):
    cfg = make_cfg(adapter="lora", lora_target_linear=True)
    wrapped = lora.gym_wrap_model(cfg, model)
    from peft.tuners.lora import LoraLayer

    adapted = {name.rsplit(".", 1)[-1] for name, m in wrapped.named_modules() if isinstance(m, LoraLayer)}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not isinstance(wrapped.get_output_embeddings(), LoraLayer)


def test_only_adapter_parameters_require_grad(model):
    cfg = make_cfg(adapter="lora", lora_target_modules=["q_proj", "v_proj"], lora_r=4)
    wrapped = lora.gym_wrap_model(cfg, model)
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable, "nothing to train"
    assert all(".lora_A." in name or ".lora_B." in name for name in trainable)
    # two layers x two targets x (A and B)
    assert len(trainable) == 8
    assert all(p.shape[0] == 4 or p.shape[1] == 4 for n, p in wrapped.named_parameters() if p.requires_grad)


def test_modules_to_save_train_in_full(model):
    cfg = make_cfg(adapter="lora", lora_target_linear=True, lora_modules_to_save=["embed_tokens", "lm_head"])
    wrapped = lora.gym_wrap_model(cfg, model)
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert any("embed_tokens.modules_to_save" in name for name in trainable)
    assert any("lm_head.modules_to_save" in name for name in trainable)
    assert all("lora_" in name or "modules_to_save" in name for name in trainable)


def test_lora_trains_and_base_weights_stay_bit_identical(model, tokenizer):
    original = base_state(model)
    cfg = make_cfg(adapter="lora", lora_target_linear=True, lora_r=8, lora_alpha=16)
    wrapped = lora.gym_wrap_model(cfg, model)
    losses = train_steps(wrapped, fixed_batch(tokenizer))
    assert losses[-1] < losses[0] - 0.3, losses

    merged_view = wrapped.get_base_model().state_dict()
    checked = 0
    for name, tensor in original.items():
        key = name
        if key not in merged_view:  # adapted layers keep their weight under base_layer
            prefix, _, leaf = name.rpartition(".")
            key = f"{prefix}.base_layer.{leaf}"
        assert merged_view[key].equal(tensor), f"{name} changed"
        checked += 1
    assert checked == len(original)
    lora_b = [p for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "the adapter did not learn"


def test_rslora_scales_by_square_root_of_rank_and_trains(model, tokenizer):
    cfg = make_cfg(adapter="lora", lora_target_linear=True, lora_r=16, lora_alpha=8, peft_use_rslora=True)
    wrapped = lora.gym_wrap_model(cfg, model)
    q_proj = wrapped.base_model.model.model.layers[0].self_attn.q_proj
    assert math.isclose(q_proj.scaling["default"], 8 / math.sqrt(16))
    losses = train_steps(wrapped, fixed_batch(tokenizer))
    assert losses[-1] < losses[0] - 0.3, losses


def test_dora_learns_magnitudes_and_trains(model, tokenizer):
    cfg = make_cfg(adapter="lora", lora_target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                   peft_use_dora=True)
    wrapped = lora.gym_wrap_model(cfg, model)
    magnitudes = [n for n, p in wrapped.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert len(magnitudes) == 8
    losses = train_steps(wrapped, fixed_batch(tokenizer))
    assert losses[-1] < losses[0] - 0.3, losses


def test_layers_to_transform_limits_the_adapted_layers(model):
    cfg = make_cfg(adapter="lora", lora_target_modules=["q_proj"], peft_layers_to_transform=[1])
    wrapped = lora.gym_wrap_model(cfg, model)
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in name for name in trainable)


def test_unknown_target_module_names_the_key_and_lists_the_layers(model):
    cfg = make_cfg(adapter="lora", lora_target_modules=["query_key_value"])
    with pytest.raises(ConfigError) as err:
        lora.gym_wrap_model(cfg, model)
    assert "lora_target_modules" in str(err.value)
    assert "q_proj" in str(err.value)


# ----------------------------------------------------------------------------------- continuing an adapter


def test_lora_model_dir_continues_from_a_saved_adapter(tokenizer, tmp_path):
    import torch

    from gym.tiny import build_model

    first = lora.gym_wrap_model(make_cfg(adapter="lora", lora_target_linear=True, lora_r=4), build_model(tokenizer))
    train_steps(first, fixed_batch(tokenizer), steps=3)
    first.save_pretrained(tmp_path / "adapter")
    saved = {n: p.detach().clone() for n, p in first.named_parameters() if p.requires_grad}

    cfg = make_cfg(adapter="lora", lora_model_dir=str(tmp_path / "adapter"), lora_r=32)
    assert lora.gym_validate_config(cfg) == []
    again = lora.gym_wrap_model(cfg, build_model(tokenizer))
    resumed = {n: p for n, p in again.named_parameters() if p.requires_grad}
    assert resumed.keys() == saved.keys()
    assert all(torch.equal(resumed[n], saved[n]) for n in saved)
    assert again.peft_config["default"].r == 4  # the saved adapter's settings, not lora_r: 32
    losses = train_steps(again, fixed_batch(tokenizer), steps=3)
    assert losses[-1] < losses[0]


def test_lora_model_dir_that_is_not_an_adapter_is_refused(tmp_path, model):
    cfg = make_cfg(adapter="lora", lora_model_dir=str(tmp_path))
    problems = lora.gym_validate_config(cfg)
    assert [p.field for p in problems] == ["lora_model_dir"]
    assert "adapter_config.json" in problems[0].message
    missing = make_cfg(adapter="lora", lora_model_dir=str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="lora_model_dir"):
        lora.gym_wrap_model(missing, model)


# ---------------------------------------------------------------------------------------------- new tokens


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from gym.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def resized_with_new_token(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.add_tokens(["<|new_token|>"])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.resize_token_embeddings(len(tok))
    return model, tok


def test_new_tokens_without_trained_embeddings_are_refused(tiny_model_dir):
    model, tok = resized_with_new_token(tiny_model_dir)
    cfg = make_cfg(base_model=str(tiny_model_dir), adapter="lora", lora_target_linear=True,
                   tokens=["<|new_token|>"])
    with pytest.raises(ConfigError) as err:
        lora.gym_after_model_load(cfg, model, tok)
    message = str(err.value)
    assert message.startswith("lora_modules_to_save:")
    assert "<|new_token|>" in message and "[embed_tokens, lm_head]" in message


def test_new_tokens_with_trained_embeddings_pass(tiny_model_dir):
    model, tok = resized_with_new_token(tiny_model_dir)
    cfg = make_cfg(base_model=str(tiny_model_dir), adapter="lora", lora_target_linear=True,
                   tokens=["<|new_token|>"], lora_modules_to_save=["embed_tokens", "lm_head"])
    assert lora.gym_after_model_load(cfg, model, tok) is None


def test_known_tokens_and_a_new_pad_token_need_no_trained_embeddings(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(["<|im_end|>"])  # already a special token of the tiny tokenizer: nothing new
    tok.add_special_tokens({"pad_token": "<|end_of_text|>"})  # new, but padding is never trained
    assert len(tok) == 513
    cfg = make_cfg(base_model=str(tiny_model_dir), adapter="lora", tokens=["<|im_end|>"],
                   special_tokens={"pad_token": "<|end_of_text|>"})
    assert lora.gym_after_model_load(cfg, AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok) is None
    cfg = make_cfg(base_model=str(tiny_model_dir), adapter="lora", special_tokens={"eos_token": "<|end_of_text|>"})
    tok.add_special_tokens({"eos_token": "<|end_of_text|>"})  # the same new token now ends every sample
    with pytest.raises(ConfigError, match="lora_modules_to_save"):
        lora.gym_after_model_load(cfg, AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok)


# ---------------------------------------------------------------------------------------------- validation


def problems_of(write_config, text: str) -> list[str]:
    from gym.config import load_config

    path = write_config("base_model: unused\ndatasets:\n  - path: unused.jsonl\n    type: alpaca\n" + text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return err.value.problems


def test_qlora_needs_4bit(write_config):
    (problem,) = problems_of(write_config, "adapter: qlora\n")
    assert "adapter" in problem and "load_in_4bit: true" in problem and "config.yml:5" in problem


def test_4bit_needs_qlora(write_config):
    (problem,) = problems_of(write_config, "adapter: lora\nload_in_4bit: true\n")
    assert problem.startswith("load_in_4bit") and "adapter: qlora" in problem
    (problem,) = problems_of(write_config, "load_in_4bit: true\n")
    assert problem.startswith("load_in_4bit") and "adapter: qlora" in problem


def test_4bit_and_8bit_together_are_refused(write_config):
    found = problems_of(write_config, "adapter: qlora\nload_in_4bit: true\nload_in_8bit: true\n")
    assert any(p.startswith("load_in_8bit") and "both" in p for p in found)
    assert any(p.startswith("adapter") and "load_in_8bit" in p for p in found)


def test_8bit_needs_an_adapter(write_config):
    (problem,) = problems_of(write_config, "load_in_8bit: true\n")
    assert problem.startswith("load_in_8bit") and "adapter: lora" in problem


def test_quantizing_without_bitsandbytes_says_what_to_install(write_config, monkeypatch):
    monkeypatch.setattr(quantization, "bitsandbytes_installed", lambda: False)
    (problem,) = problems_of(write_config, "adapter: qlora\nload_in_4bit: true\n")
    assert problem.startswith("load_in_4bit") and "pip install 'gym-llm[qlora]'" in problem


def test_adapter_keys_without_adapter_are_refused(write_config):
    found = problems_of(write_config, "lora_model_dir: somewhere\nmerge_lora: true\n")
    assert [p.split(" ")[0] for p in found] == ["lora_model_dir", "merge_lora"]


def test_bad_values_name_their_fields(write_config):
    found = problems_of(
        write_config,
        "adapter: lorra\nlora_r: 0\nlora_dropout: 1.5\nbnb_config_kwargs:\n  bnb_4bit_quant_type: int4\n",
    )
    fields = [p.split(" ")[0] for p in found]
    assert fields == ["adapter", "lora_r", "lora_dropout", "bnb_config_kwargs.bnb_4bit_quant_type"]


def test_regex_targets_cannot_be_combined_with_target_linear(write_config):
    (problem,) = problems_of(write_config, "adapter: lora\nlora_target_modules: '.*proj'\nlora_target_linear: true\n")
    assert problem.startswith("lora_target_linear")


def test_valid_lora_and_qlora_configs_pass(write_config):
    from gym.config import load_config

    base = "base_model: unused\ndatasets:\n  - path: unused.jsonl\n    type: alpaca\n"
    cfg = load_config(write_config(base + "adapter: qlora\nload_in_4bit: true\nlora_target_linear: true\n"))
    assert (cfg.adapter, cfg.load_in_4bit, cfg.lora_r) == ("qlora", True, 8)
    cfg = load_config(write_config(base + "adapter: lora\nload_in_8bit: true\nlora_target_modules: [q_proj]\n"))
    assert (cfg.adapter, cfg.load_in_8bit, cfg.lora_target_modules) == ("lora", True, ["q_proj"])


def test_plugins_list_shows_the_keys():
    from click.testing import CliRunner

    from gym.cli import main

    result = CliRunner().invoke(main, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    import json

    infos = {info["name"]: info for info in json.loads(result.output)}
    assert {"adapter", "lora_r", "lora_alpha", "lora_target_linear", "peft_use_dora", "peft_use_rslora",
            "lora_model_dir", "lora_modules_to_save"} <= set(infos["lora"]["config_keys"])
    assert {"load_in_4bit", "load_in_8bit", "bnb_config_kwargs"} <= set(infos["quantization"]["config_keys"])
    assert "gym_wrap_model" in infos["lora"]["hooks"]
    assert "gym_model_load_kwargs" in infos["quantization"]["hooks"]
