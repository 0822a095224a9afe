"""Spectrum: ``unfrozen_parameters`` trains exactly the matching parameters; ``gym spectrum`` chooses them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gym import testing
from gym.api import ConfigError, ModelError

DATA = [{"path": "builtin:addition?rows=64", "type": "alpaca"}]
BASE = {"base_model": testing.TINY_MODEL, "datasets": DATA}


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def changed_names(tmp_path, keys) -> set[str]:
    before = weights(testing.tiny_model())
    result = testing.run_config({"datasets": DATA, "learning_rate": 1e-2, **keys}, steps=3, tmp_path=tmp_path)
    after = weights(Path(result.output_dir))
    return {name for name in before if not before[name].equal(after[name])}


def test_bad_regex_is_a_validate_error_naming_its_position():
    with pytest.raises(ConfigError) as error:
        testing.validate({**BASE, "unfrozen_parameters": ["lm_head", "layers.(1"]})
    (problem,) = error.value.problems
    assert problem.startswith("unfrozen_parameters.1") and "unfrozen_parameters[1]" in problem
    assert "'layers.(1'" in problem


def test_regex_matching_nothing_is_an_error_naming_it():
    from gym.plugins.spectrum import freeze_except
    from gym.tiny import build_model, build_tokenizer

    model = build_model(build_tokenizer(), hidden_size=16, layers=1, heads=2, kv_heads=1, intermediate_size=32)
    with pytest.raises(ModelError, match=r"'q_projj' matches no parameter"):
        freeze_except(model, ["lm_head", "q_projj"], adapter=False)
    assert all(p.requires_grad for p in model.parameters())  # nothing was changed by the failed call


def test_freezes_exactly_the_non_matching_parameters():
    from gym.plugins.spectrum import freeze_except
    from gym.tiny import build_model, build_tokenizer

    model = build_model(build_tokenizer(), hidden_size=16, layers=2, heads=2, kv_heads=1, intermediate_size=32)
    counts = freeze_except(model, [r"^model\.layers\.1\.mlp\.", "lm_head"], adapter=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
                         "model.layers.1.mlp.down_proj.weight", "lm_head.weight"}
    assert counts["trainable"] == sum(p.numel() for n, p in model.named_parameters() if n in trainable)


@pytest.mark.slow
def test_only_matching_weights_change_in_training(tmp_path):
    pattern = r"^model\.layers\.0\.self_attn\.(q|v)_proj\.weight$"
    changed = changed_names(tmp_path, {"unfrozen_parameters": [pattern, "lm_head"]})
    assert changed == {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight",
                       "lm_head.weight"}


@pytest.mark.slow
def test_with_lora_the_list_picks_adapter_parameters(tmp_path, capsys):
    """Names are matched as in the base model: layer 1's LoRA matrices train, layer 0's stay at their start."""
    result = testing.run_config(
        {"datasets": DATA, "adapter": "lora", "lora_target_modules": ["q_proj", "v_proj"],
         "unfrozen_parameters": [r"^model\.layers\.1\.", "lm_head"], "learning_rate": 1e-2},
        steps=2, tmp_path=tmp_path,
    )
    model = result.trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".layers.1." in n and "lora_" in n for n in trainable)
    assert len(trainable) == 4  # q and v, A and B
    lora_b0 = dict(model.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    assert lora_b0.abs().sum().item() == 0  # LoRA B starts at zero and was never trained
    assert "'lm_head' match only base weights" in capsys.readouterr().out


def test_snr_ranks_structure_above_noise():
    import torch

    from gym.plugins.spectrum import snr

    torch.manual_seed(7)  # not the seed the noise reference G is drawn with
    noise = torch.randn(64, 96) * 0.02
    low_rank = torch.randn(64, 2) @ torch.randn(2, 96) * 0.05
    assert abs(snr(noise)) < 0.5
    assert snr(noise + low_rank) > 1.0
    assert snr(noise * 10) == pytest.approx(snr(noise), abs=1e-4)  # scale-free


@pytest.mark.slow
def test_command_output_fed_back_trains_only_those(tmp_path):
    from click.testing import CliRunner

    from gym.cli import main

    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({**BASE, "output_dir": str(tmp_path / "out")}))
    printed = CliRunner().invoke(main, ["spectrum", str(config), "--top-percent", "50"])
    assert printed.exit_code == 0, printed.output
    listed = yaml.safe_load(printed.stdout)["unfrozen_parameters"]
    # the tiny model has 2 layers and 7 kinds of matrix in each: the better half of each kind is 1 of 2
    assert len(listed) == 7 and all(p.startswith("^model\\.layers\\.") for p in listed)

    snippet = tmp_path / "spectrum.yml"
    written = CliRunner().invoke(main, ["spectrum", str(config), "--top-percent", "50", "--write", str(snippet)])
    assert written.exit_code == 0 and "7 of 14 weight matrices" in written.output
    chosen = yaml.safe_load(snippet.read_text())["unfrozen_parameters"]
    assert chosen == listed

    testing.validate({**BASE, "unfrozen_parameters": chosen})
    changed = changed_names(tmp_path, {"unfrozen_parameters": chosen})
    assert changed == {p.removeprefix("^").removesuffix("$").replace("\\", "") for p in chosen}
