"""The `gym` command as a user runs it: exit codes, output, and no torch for commands that do not train."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gym import __version__

HEAVY = ("torch", "transformers", "datasets", "peft", "trl", "accelerate")
PROBE = (
    "import sys\n"
    "from gym.cli import main\n"
    "try:\n    main(sys.argv[1:], prog_name='gym')\n"
    "except SystemExit as exc:\n    code = exc.code\n"
    "heavy = [m for m in {heavy!r} if m in sys.modules]\n"
    "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    "sys.exit(code)\n"
).format(heavy=HEAVY)

CONFIG = """
base_model: some/model
datasets:
  - path: data.jsonl
    type: alpaca
micro_batch_size: ${gradient_accumulation_steps}
gradient_accumulation_steps: 2
"""


def gym(*args, env=None):
    """Run `gym ARGS` in a fresh interpreter; return (exit code, stdout, stderr, heavy modules imported)."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, env=env or os.environ.copy()
    )
    heavy_line = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    heavy = heavy_line[-1].removeprefix("HEAVY=") if heavy_line else "?"
    return proc.returncode, proc.stdout, proc.stderr, heavy


def test_version_and_help_do_not_import_torch():
    code, out, _, heavy = gym("--version")
    assert code == 0 and __version__ in out and heavy == ""
    code, out, _, heavy = gym("--help")
    assert code == 0 and "validate" in out and "plugins" in out and heavy == ""


def test_validate_prints_the_resolved_config_without_torch(write_config):
    path = write_config(CONFIG)
    code, out, err, heavy = gym("validate", path, "learning_rate=0.001")
    assert code == 0, err
    assert heavy == ""
    assert "method:  sft" in out and "learning rate 0.001" in out and "valid" in err  # a short summary
    assert len(out.splitlines()) < 10
    code, out, err, heavy = gym("validate", path, "learning_rate=0.001", "--print-config")
    assert code == 0 and heavy == ""
    assert "micro_batch_size: 2" in out and "learning_rate: 0.001" in out and "valid" in err


def test_validate_json_is_machine_readable(write_config):
    code, out, _, _ = gym("validate", write_config(CONFIG), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["micro_batch_size"] == 2 and data["datasets"][0]["type"] == "alpaca"


@pytest.mark.parametrize("command", ["validate", "run", "train", "preprocess"])
def test_user_mistake_exits_nonzero_with_message_not_traceback(write_config, command):
    path = write_config(CONFIG + "lerning_rate: 1\n")
    code, out, err, heavy = gym(command, path)
    assert code == 2
    assert "lerning_rate" in err and "did you mean 'learning_rate'" in err
    assert "Traceback" not in err
    assert heavy == ""  # the config is checked before anything heavy is imported


def test_missing_config_file_is_a_clean_error():
    code, _, err, _ = gym("validate", "/no/such/config.yml")
    assert code == 2 and "config file not found" in err and "Traceback" not in err


def test_plugins_list_shows_builtins_and_third_party(qa_plugin):
    code, out, err, heavy = gym("plugins", "list", "--json", env=qa_plugin)
    assert code == 0, err
    assert heavy == ""
    by_name = {p["name"]: p for p in json.loads(out)}
    assert by_name["qa"]["distribution"] == "gym-plugin-qa" and not by_name["qa"]["builtin"]
    assert by_name["qa"]["config_keys"] == ["qa_answer_prefix"]
    assert by_name["qa"]["dataset_types"] == ["qa"]
    assert "gym_dataset_strategies" in by_name["qa"]["hooks"]
    assert by_name["lora"]["builtin"] and "lora_r" in by_name["lora"]["config_keys"]
    code, out, _, _ = gym("plugins", "list", env=qa_plugin)
    assert code == 0 and "gym-plugin-qa 0.1.0 (third-party" in out


def test_config_schema_includes_third_party_keys(qa_plugin):
    code, out, _, heavy = gym("config", "schema", env=qa_plugin)
    assert code == 0 and heavy == ""
    schema = json.loads(out)
    assert schema["title"] == "gym config"
    assert schema["additionalProperties"] is False
    assert "qa_answer_prefix" in schema["properties"] and "lora_r" in schema["properties"]
    entry = schema["$defs"]["DatasetEntry"]["properties"]
    assert "qa_question_field" in entry and "field_messages" in entry


def test_third_party_key_is_validated(qa_plugin, write_config):
    path = write_config(CONFIG.replace("type: alpaca", "type: qa\n    qa_question_field: q") + "qa_answer_prefix: ' '\n")
    code, _, err, _ = gym("validate", path, env=qa_plugin)
    assert code == 2 and "qa_answer_prefix" in err and "must not be blank" in err
    code, _, err, _ = gym("validate", path, "qa_answer_prefix=Answer:", env=qa_plugin)
    assert code == 0, err


def test_library_warnings_are_hidden_unless_verbose():
    import logging
    import warnings

    from gym.cli import quiet_libraries

    import os

    root, environ = logging.getLogger().level, dict(os.environ)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        warnings.warn_explicit("`gradient_checkpointing` is deprecated", FutureWarning, "modeling_utils.py", 1,
                               module="transformers.modeling_utils")
        warnings.warn_explicit("a warning of gym's own", UserWarning, "run.py", 1, module="gym.run")
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    logging.getLogger().setLevel(root)
    os.environ.clear()
    os.environ.update(environ)
    assert [str(w.message) for w in caught] == ["a warning of gym's own"]
    code, out, err, _ = gym("--help")
    assert code == 0 and "--verbose" in out


@pytest.mark.slow
def test_a_log_file_gets_plain_lines_not_progress_bars(tmp_path):
    """Not on a terminal (CI, nohup, SLURM): no carriage-return redraws, one plain line per logging step."""
    config = tmp_path / "c.yml"
    config.write_text(
        "base_model: builtin:tiny-llama-micro\ndatasets:\n  - path: builtin:addition?rows=200\n    type: alpaca\n"
        f"max_steps: 6\nlogging_steps: 2\nmicro_batch_size: 4\noutput_dir: {tmp_path / 'out'}\n"
    )
    code, out, err, _ = gym("run", str(config))
    log = out + err
    assert code == 0, err[-2000:]
    assert "\r" not in log
    steps = [line for line in log.splitlines() if line.startswith("[gym] step ")]
    assert [line.split(",")[0] for line in steps] == ["[gym] step 1/6", "[gym] step 2/6", "[gym] step 4/6",
                                                      "[gym] step 6/6"]
    assert "ETA" in steps[-1] and not any(line.startswith("{'loss'") for line in log.splitlines())
