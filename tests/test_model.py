"""Loading tokenizers and models: built-in models, local folders, hub ids offline, tokens, templates."""

from __future__ import annotations

import json

import pytest

from gym import builtin
from gym.errors import ConfigError, ModelError


@pytest.fixture(autouse=True)
def gym_home(tmp_path_factory, monkeypatch):
    """One gym cache for the session, so the built-in model is generated once."""
    home = tmp_path_factory.getbasetemp() / "gym-home"
    monkeypatch.setenv("GYM_HOME", str(home))
    return home


def make_cfg(write_config, extra: str = "", base_model: str = "builtin:tiny-llama-micro"):
    import textwrap

    from gym.config import load_config

    head = f"base_model: {base_model}\ndatasets:\n  - path: data.jsonl\n    type: alpaca\n"
    return load_config(write_config(head + textwrap.dedent(extra).lstrip("\n")))


def test_builtin_model_is_generated_once_into_a_versioned_cache_and_loads_in_plain_transformers(gym_home):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = builtin.materialize_model("builtin:tiny-llama-micro")
    spec = builtin.BUILTIN_MODELS["tiny-llama-micro"]
    assert folder == gym_home / "models" / f"tiny-llama-micro-v{spec.version}"
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert builtin.materialize_model("builtin:tiny-llama-micro") == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert json.loads((folder / "gym_builtin.json").read_text())["version"] == spec.version

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.hidden_size == spec.hidden_size
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    # digits are single tokens, so arithmetic is learnable; the template is chatml
    assert tokenizer.tokenize("12345")[-5:] == list("12345")
    assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_unknown_builtin_model_names_the_known_ones():
    with pytest.raises(ConfigError, match="builtin:tiny-llama"):
        builtin.materialize_model("builtin:giant-llama")


def test_tokenizer_from_config_adds_special_tokens_and_tokens_and_the_model_is_resized(write_config):
    from gym.model import load_model, load_tokenizer
    from gym.plugin_manager import get_plugin_manager

    cfg = make_cfg(
        write_config,
        """
        special_tokens:
          bos_token: "<|begin|>"
        tokens: ["<tool_call>", "</tool_call>"]
        """,
    )
    tokenizer = load_tokenizer(cfg)
    assert tokenizer.bos_token == "<|begin|>"
    assert tokenizer.tokenize("<tool_call>x</tool_call>") == ["<tool_call>", "x", "</tool_call>"]
    before = 512
    assert len(tokenizer) == before + 3
    model = load_model(cfg, tokenizer, get_plugin_manager())
    assert model.get_input_embeddings().weight.shape[0] == before + 3
    assert model.get_output_embeddings().weight.shape[0] == before + 3
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert model.config._attn_implementation == "sdpa"  # the default on CPU


def test_resize_to_32x_rounds_the_vocabulary_up(write_config):
    from gym.model import load_model, load_tokenizer

    cfg = make_cfg(write_config, "tokens: [a_new_token]\nresize_token_embeddings_to_32x: true\n")
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    assert len(tokenizer) == 513
    assert model.get_input_embeddings().weight.shape[0] == 544


def test_unknown_special_token_key_is_a_config_error(write_config):
    from gym.model import load_tokenizer

    cfg = make_cfg(write_config, "special_tokens:\n  begin_token: '<b>'\n")
    with pytest.raises(ConfigError, match="special_tokens: unknown key begin_token"):
        load_tokenizer(cfg)


def test_named_chat_template_replaces_the_tokenizers_own(write_config):
    from gym.chat_templates import LLAMA3
    from gym.model import load_tokenizer

    assert load_tokenizer(make_cfg(write_config, "chat_template: llama3\n")).chat_template == LLAMA3
    own = load_tokenizer(make_cfg(write_config, "chat_template: tokenizer_default\n")).chat_template
    assert "<|im_start|>" in own


def test_local_folder_and_model_type_and_config_overrides(write_config, tmp_path):
    from gym.model import load_model, load_tokenizer
    from gym.tiny import save_tiny_model

    folder = save_tiny_model(tmp_path / "tiny", hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=32)
    cfg = make_cfg(
        write_config,
        """
        model_type: LlamaForCausalLM
        tokenizer_type: AutoTokenizer
        attn_implementation: eager
        model_config_overrides:
          rms_norm_eps: 0.001
        torch_dtype: bfloat16
        """,
        base_model=str(folder),
    )
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.rms_norm_eps == 0.001
    assert model.config._attn_implementation == "eager"
    assert str(model.dtype) == "torch.bfloat16"


def test_unknown_model_class_is_a_config_error(write_config):
    from gym.model import load_model, load_tokenizer

    cfg = make_cfg(write_config, "model_type: AutoModelForTeleportation\n")
    with pytest.raises(ConfigError, match="model_type: transformers has no loadable class"):
        load_model(cfg, load_tokenizer(cfg))


def test_uncached_hub_id_while_offline_is_a_clear_model_error(write_config, monkeypatch):
    from gym.model import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_cfg(write_config, base_model="some-org/some-model-that-is-not-cached")
    with pytest.raises(ModelError) as info:
        load_tokenizer(cfg)
    message = str(info.value)
    assert "base_model: 'some-org/some-model-that-is-not-cached'" in message
    assert "not in the local Hugging Face cache" in message and "offline" in message
    assert "local folder" in message


def test_missing_local_folder_is_a_model_error(write_config, tmp_path):
    from gym.model import load_tokenizer

    cfg = make_cfg(write_config, base_model=str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="no such folder"):
        load_tokenizer(cfg)
