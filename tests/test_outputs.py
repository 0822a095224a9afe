"""The model card and the saved config."""

from __future__ import annotations

import yaml


def load(write_config, text: str):
    from gym.config import load_config

    return load_config(write_config(text))


def test_model_card_front_matter_names_hub_base_model_and_datasets(write_config, tmp_path):
    from gym.outputs import write_model_card

    cfg = load(
        write_config,
        f"""
        base_model: NousResearch/Llama-3.2-1B
        datasets:
          - path: tatsu-lab/alpaca
            type: alpaca
          - path: {tmp_path / "local.jsonl"}
            type: alpaca
        output_dir: {tmp_path / "run"}
        """,
    )
    path = write_model_card(cfg, {"train_loss": 1.23456, "train_steps": 1200}, "sft")
    text = path.read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["base_model"] == "NousResearch/Llama-3.2-1B"
    assert meta["datasets"] == ["tatsu-lab/alpaca"]  # local files are not hub datasets
    assert meta["library_name"] == "transformers" and meta["tags"] == ["gym", "sft"]
    assert meta["pipeline_tag"] == "text-generation"
    assert "| train_loss | 1.235 |" in text and "| train_steps | 1,200 |" in text
    assert "AutoModelForCausalLM.from_pretrained" in text
    config_block = text.split("## Training config")[1].split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(config_block)["base_model"] == "NousResearch/Llama-3.2-1B"


def test_adapter_card_says_peft_and_builtin_models_are_not_hub_ids(write_config, tmp_path):
    from gym.outputs import card_metadata, model_card

    cfg = load(write_config, f"base_model: builtin:tiny-llama\ndatasets:\n  - path: builtin:addition\n    type: alpaca\noutput_dir: {tmp_path}\n")
    from gym.plugin_manager import get_plugin_manager

    card = get_plugin_manager().merged_dict("gym_model_card", cfg=cfg.model_copy(update={"adapter": "lora"}), model=None)
    meta = card_metadata(cfg, "sft", card)
    assert meta["library_name"] == "peft" and meta["tags"] == ["gym", "sft", "lora"]
    assert "base_model" not in meta and "datasets" not in meta
    assert "AutoPeftModelForCausalLM" in model_card(cfg, {}, "sft", card)
    assert "peft" not in get_plugin_manager().merged_dict("gym_model_card", cfg=cfg, model=None).get("packages", [])


def test_saved_config_is_complete_and_runs_again(write_config, tmp_path):
    from gym.config import load_config
    from gym.outputs import write_config as save_config

    cfg = load(write_config, f"base_model: builtin:tiny-llama\ndatasets:\n  - path: x.jsonl\n    type: alpaca\noutput_dir: {tmp_path / 'o'}\n")
    path = save_config(cfg, tmp_path / "o")
    saved = yaml.safe_load(path.read_text())
    assert saved["micro_batch_size"] == 1 and saved["datasets"][0]["type"] == "alpaca"  # defaults filled in
    again = load_config(path)
    assert again.model_dump() == cfg.model_dump()
