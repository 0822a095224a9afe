"""``gym merge-lora``: the merged model is plain transformers and computes what the adapter model computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_lora_train import logits, run_config, sample_ids


def adapter_model(base_dir, adapter_dir, tokenizer):
    """Plain PEFT on a full-precision base, the vocabulary grown to the tokenizer's as gym does."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(base, str(adapter_dir))


def check_merged_matches_adapter(merged_dir: Path, base_dir: Path, adapter_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert not list(merged_dir.glob("adapter_*")), "the merged folder must hold a plain model"
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert "quantization_config" not in json.loads((merged_dir / "config.json").read_text())
    assert merged.dtype == torch.float32
    ids = sample_ids(tokenizer)
    expected = logits(adapter_model(base_dir, adapter_dir, tokenizer), ids)
    torch.testing.assert_close(logits(merged, ids), expected, atol=1e-5, rtol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    base.resize_token_embeddings(len(tokenizer))
    assert (logits(base, ids) - expected).abs().max() > 1e-3, "the adapter changed nothing: a merge would prove nothing"


@pytest.mark.slow
def test_merge_lora_cli_with_dora_new_tokens_and_modules_to_save(tmp_path, tiny_run_inputs):
    from gym.cli import main
    from gym.run import run as train

    cfg = run_config(
        tmp_path, tiny_run_inputs,
        "adapter: lora\nlora_target_linear: true\npeft_use_dora: true\ntokens: ['<|sum|>']\n"
        "lora_modules_to_save: [embed_tokens, lm_head]\n",
    )
    train(cfg)
    result = CliRunner().invoke(main, ["merge-lora", str(tmp_path / "config.yml")])
    assert result.exit_code == 0, result.output
    merged_dir = Path(cfg.output_dir) / "merged"
    assert str(merged_dir) in result.output
    check_merged_matches_adapter(merged_dir, tiny_run_inputs[0], Path(cfg.output_dir))
    from transformers import AutoTokenizer

    assert "<|sum|>" in AutoTokenizer.from_pretrained(merged_dir).get_vocab()


@pytest.mark.slow
def test_qlora_merges_into_the_full_precision_base(tmp_path, tiny_run_inputs):
    """With merge_lora: true the run itself merges; the base is loaded in float32, not 4-bit."""
    from gym.run import run as train

    cfg = run_config(
        tmp_path, tiny_run_inputs,
        "adapter: qlora\nload_in_4bit: true\nlora_target_modules: [q_proj, v_proj, o_proj, up_proj]\nmerge_lora: true\n",
    )
    train(cfg)
    merged_dir = Path(cfg.output_dir) / "merged"
    assert (merged_dir / "config.json").is_file()
    check_merged_matches_adapter(merged_dir, tiny_run_inputs[0], Path(cfg.output_dir))


@pytest.mark.slow
def test_merge_lora_from_another_adapter_folder(tmp_path, tiny_run_inputs):
    from gym.cli import main
    from gym.run import run as train

    cfg = run_config(tmp_path, tiny_run_inputs, "adapter: lora\nlora_target_modules: [q_proj, v_proj]\nmax_steps: 3\n",
                     name="source.yml")
    train(cfg)
    moved = tmp_path / "somewhere" / "adapter"
    shutil.copytree(cfg.output_dir, moved)
    shutil.rmtree(cfg.output_dir)

    runner = CliRunner()
    missing = runner.invoke(main, ["merge-lora", str(tmp_path / "source.yml")])
    assert missing.exit_code == 2
    assert "no trained adapter to merge" in missing.output and "adapter_config.json" in missing.output

    result = runner.invoke(main, ["merge-lora", str(tmp_path / "source.yml"), "--lora-model-dir", str(moved)])
    assert result.exit_code == 0, result.output
    check_merged_matches_adapter(Path(cfg.output_dir) / "merged", tiny_run_inputs[0], moved)


def test_merge_lora_refuses_a_folder_without_an_adapter(tmp_path, tiny_run_inputs):
    from gym.cli import main

    run_config(tmp_path, tiny_run_inputs, "adapter: lora\n")
    result = CliRunner().invoke(main, ["merge-lora", str(tmp_path / "config.yml"), "--lora-model-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert f"--lora-model-dir {tmp_path}" in result.output
    with pytest.raises(FileNotFoundError):
        (tmp_path / "config" / "merged" / "config.json").read_text()
