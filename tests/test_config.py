"""Reading and validating configs: strictness, suggestions, lines, overrides, rules, compat keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from pydantic import BaseModel, ConfigDict, SecretStr

from gym.api import hookimpl
from gym.config import load_config, redacted
from gym.errors import ConfigError

BASE = """
base_model: some/model
datasets:
  - path: data.jsonl
    type: alpaca
"""


def problems_of(path, *overrides):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


def test_minimal_config_is_typed_with_defaults(write_config):
    cfg = load_config(write_config(BASE))
    assert cfg.base_model == "some/model"
    assert cfg.datasets[0].type == "alpaca"
    assert cfg.datasets[0].split == "train"
    assert cfg.sequence_len == 2048
    assert cfg.sample_packing is False
    assert cfg.bf16 == "auto"
    assert cfg.adapter is None  # a plugin's key, present with its default


def test_unknown_top_level_key_names_field_line_and_suggestion(write_config):
    path = write_config(BASE + "lerning_rate: 0.1\n")
    (problem,) = problems_of(path)
    assert problem.startswith("lerning_rate (")
    assert f"{path}:5)" in problem
    assert "unknown key" in problem and "did you mean 'learning_rate'" in problem


def test_unknown_nested_key_in_dataset_entry(write_config):
    path = write_config(BASE + "    feild_messages: conversations\n")
    (problem,) = problems_of(path)
    assert problem.startswith("datasets.0.feild_messages")
    assert ":5)" in problem
    assert "did you mean 'field_messages'" in problem


def test_strategy_option_on_the_wrong_type_says_whose_it_is(write_config):
    path = write_config(BASE + "    field_messages: conversations\n")
    cfg_problem = problems_of(path)
    assert cfg_problem and "field_messages" in cfg_problem[0]


def test_wrong_type_names_field_and_value(write_config):
    (problem,) = problems_of(write_config(BASE + "micro_batch_size: lots\n"))
    assert problem.startswith("micro_batch_size (") and "'lots'" in problem


def test_all_problems_reported_together_in_line_order(write_config):
    found = problems_of(write_config(BASE + "micro_batch_size: 0\nnum_epochz: 3\n"))
    assert [p.split(" ")[0] for p in found] == ["micro_batch_size", "num_epochz"]


def test_missing_required_keys(write_config):
    found = problems_of(write_config("sequence_len: 512\n"))
    assert {p.split(" ")[0].rstrip(":") for p in found} == {"base_model", "datasets"}
    assert all("required key is missing" in p for p in found)


def test_dataset_type_is_required_and_must_be_registered(write_config):
    path = write_config(BASE.replace("type: alpaca", "type: alpacca"))
    (problem,) = problems_of(path)
    assert problem.startswith("datasets.0.type") and "did you mean 'alpaca'" in problem


def test_empty_value_means_unset(write_config):
    cfg = load_config(write_config(BASE + "debug:\nseed:\nlogging_steps:\n"))
    assert cfg.debug is False and cfg.seed == 42 and cfg.logging_steps is None


def test_interpolation_and_command_line_overrides(write_config):
    path = write_config(BASE + "sequence_len: 256\neval_batch_size: ${micro_batch_size}\nmicro_batch_size: 4\n")
    cfg = load_config(path, ["micro_batch_size=8", "datasets.0.path=other.jsonl", "learning_rate=3e-4"])
    assert cfg.micro_batch_size == 8 and cfg.eval_batch_size == 8
    assert cfg.datasets[0].path == "other.jsonl"
    assert cfg.learning_rate == pytest.approx(3e-4)
    assert cfg.sequence_len == 256


def test_override_typo_is_reported_like_a_file_key(write_config):
    (problem,) = problems_of(write_config(BASE), "lora_rr=32")
    assert problem.startswith("lora_rr") and "did you mean 'lora_r'" in problem


def test_malformed_override_and_yaml_errors(write_config):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(write_config(BASE), ["lora_r"])
    with pytest.raises(ConfigError, match=r"config.yml:2: not valid YAML"):
        load_config(write_config("base_model: x\n  bad: [\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/cfg.yml")


def test_precision_accepts_auto_and_booleans(write_config):
    cfg = load_config(write_config(BASE + "bf16: auto\nfp16: false\ntf32: auto\n"))
    assert (cfg.bf16, cfg.fp16, cfg.tf32) == ("auto", False, "auto")
    (problem,) = problems_of(write_config(BASE + "bf16: true\nfp16: true\n"))
    assert problem.startswith("fp16") and "bf16" in problem


def test_cross_field_rule_names_both_fields(write_config):
    found = problems_of(write_config(BASE + "load_in_4bit: true\n"))
    assert any(p.startswith("load_in_4bit") and "adapter" in p and "qlora" in p for p in found)


def test_unsupported_key_with_a_value_is_rejected(write_config):
    (problem,) = problems_of(write_config(BASE + "tensor_parallel_size: 2\n"))
    assert problem.startswith("tensor_parallel_size") and "not supported by gym yet" in problem


def test_unsupported_key_left_empty_is_a_note_not_an_error(write_config):
    notes: list[str] = []
    cfg = load_config(write_config(BASE + "tensor_parallel_size:\nrelora: false\n"), notes=notes)
    assert cfg.base_model == "some/model"
    assert len(notes) == 2 and notes[0].startswith("tensor_parallel_size (line 5)")


def test_renamed_keys_say_what_to_write(write_config):
    (problem,) = problems_of(write_config(BASE + "max_packed_sequence_len: 2048\n"))
    assert "renamed" in problem and "sample_packing" in problem
    (problem,) = problems_of(write_config(BASE + "    message_field_role: from\n"))
    assert problem.startswith("datasets.0.message_field_role") and "message_property_mappings" in problem


def test_axolotl_plugin_paths_are_checked_against_installed_plugins(write_config):
    cfg = load_config(write_config(BASE + "plugins:\n  - gym.plugins.lora\n"))
    assert cfg.plugins == ["gym.plugins.lora"]
    notes: list[str] = []
    load_config(write_config(BASE + "plugins:\n  - axolotl.integrations.liger.LigerPlugin\n"), notes=notes)
    assert any("LigerPlugin" in note and "liger" in note for note in notes), notes
    (problem,) = problems_of(write_config(BASE + "plugins:\n  - axolotl.integrations.kernels.KernelsPlugin\n"))
    assert problem.startswith("plugins.0") and "KernelsPlugin" in problem


def test_user_defined_format_is_validated_strictly(write_config):
    text = BASE.replace("type: alpaca", "type:\n      field_instruction: q\n      field_output: a\n      formatt: x")
    (problem,) = problems_of(write_config(text))
    assert problem.startswith("datasets.0.type.formatt") and "did you mean 'format'" in problem


def test_secrets_are_redacted(write_config):
    cfg = load_config(write_config(BASE + "hub_model_id: me/model\nspecial_tokens:\n  pad_token: <pad>\n"
                                   "tokenizer_config: ./tok\ntokenizer_type: AutoTokenizer\n"))
    data = redacted(cfg)
    assert data["special_tokens"] == {"pad_token": "<pad>"}
    assert data["hub_model_id"] == "me/model"
    # only fields typed as secrets are hidden: names with "token" in them are not secrets
    assert (data["tokenizer_config"], data["tokenizer_type"]) == ("./tok", "AutoTokenizer")


class VaultKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vault_api_key: SecretStr | None = None
    vault_run_name: str | None = None


class Vault:
    """A plugin with a secret key."""

    @hookimpl
    def gym_config_schema(self):
        return VaultKeys


def test_a_secret_interpolated_into_another_key_is_redacted_there_too():
    from gym.testing import validate

    cfg = validate({"base_model": "builtin:tiny-llama-micro",
                    "datasets": [{"path": "d-${vault_api_key}.jsonl", "type": "alpaca"}],
                    "vault_api_key": "sk-hidden-42", "vault_run_name": "run-${vault_api_key}"}, Vault())
    assert cfg.vault_run_name == "run-sk-hidden-42"  # the run itself sees the value
    data = redacted(cfg)
    assert "sk-hidden-42" not in str(data)
    assert data["vault_api_key"] == "**********" and data["vault_run_name"] == "run-**********"
    assert data["datasets"][0]["path"] == "d-**********.jsonl"


def test_keys_that_change_nothing_are_said_at_validate(tmp_path):
    from click.testing import CliRunner

    from gym.cli import main

    config = tmp_path / "c.yml"
    config.write_text(
        "base_model: builtin:tiny-llama-micro\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n"
        "strict: true\nremove_unused_columns: false\nlocal_rank: 0\n"
    )
    result = CliRunner().invoke(main, ["validate", str(config)])
    assert result.exit_code == 0, result.output
    for key in ("strict", "remove_unused_columns", "local_rank"):
        assert f"{key}: accepted for compatibility, has no effect" in result.output


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        ("datasets: 5\n", (), "datasets (c.yml:2): Input should be a valid list"),
        ("datasets: true\n", (), "datasets (c.yml:2): Input should be a valid list"),
        ("datasets:\n  - path: a.jsonl\n    type: alpaca\ntest_datasets: 3\n", (), "test_datasets (c.yml:5)"),
        ("datasets:\n  - path: a.jsonl\n    type: alpaca\n", ("datasets=5",), "datasets (override datasets=5)"),
        ("datasets:\n  - path: a.jsonl\n    type: alpaca\nmax_steps: -3\n", (), "max_steps (c.yml:5): must be a positive"),
        ("datasets:\n  - path: a.jsonl\n    type: alpaca\nseed: 1\nseed: 2\n", (), "seed: written twice, on lines 5 and 6"),
        ("datasets:\n  - path: a.jsonl\n    type: alpaca\n    type: completion\n", (), "datasets.0.type: written twice"),
        ("datasets:\n  - path: a.jsonl\n    type: alpaca\n", ("save_strategy=sometimes",),
         "save_strategy (override save_strategy=sometimes)"),
    ],
)
def test_wrong_shapes_duplicates_and_overrides_are_errors_naming_the_key(tmp_path, text, overrides, expected):
    from gym.config import load_config

    config = tmp_path / "c.yml"
    config.write_text("base_model: builtin:tiny-llama-micro\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(config, overrides)
    assert expected in str(info.value).replace(f"{tmp_path}/", "")


def test_an_override_word_stays_a_word():
    from gym.config import load_config

    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yml"
    assert load_config(path, ["save_strategy=no", "debug=true"]).save_strategy == "no"


def test_nested_yaml_aliases_are_refused_before_they_expand(tmp_path):
    import time

    from gym.config import load_config

    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(10))}]" for i in range(1, 7)]
    config = tmp_path / "bomb.yml"
    config.write_text("\n".join(levels) + "\nbase_model: builtin:tiny-llama-micro\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        load_config(config)
    assert time.perf_counter() - started < 5


def test_attention_names_and_shard_indices_are_checked_at_validate(tmp_path):
    from gym.config import load_config

    config = tmp_path / "c.yml"
    config.write_text(
        "base_model: builtin:tiny-llama-micro\nattn_implementation: sdap\n"
        "datasets:\n  - path: a.jsonl\n    type: alpaca\n    shards: 2\n    shards_idx: 2\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    text = str(info.value)
    assert "attn_implementation" in text and "did you mean 'sdpa'" in text
    assert "datasets.0.shards_idx" in text and "must be below shards (2)" in text
    ok = config.read_text().replace("sdap", "kernels-community/flash-attn").replace("shards_idx: 2", "shards_idx: 1")
    config.write_text(ok)
    assert load_config(config).attn_implementation == "kernels-community/flash-attn"
