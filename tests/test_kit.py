"""gym.testing (the plugin author's kit), ``gym plugins new`` and the example plugin written on both."""

from __future__ import annotations

import ast
import io
import json
import math
import os
import subprocess
import sys
import tokenize
import types
from pathlib import Path

import pytest

from gym import testing
from gym.api import ConfigError, hookimpl

from conftest import QA_PLUGIN_SRC

ALPACA_ROWS = [{"instruction": "Say hi", "output": "hi"}, {"instruction": "Add", "input": "2 and 3", "output": "5"}]


@pytest.fixture
def qa(qa_plugin):
    """The example plugin's module (also installed as a fake distribution, which the kit must not load)."""
    import gym_plugin_qa

    return gym_plugin_qa


def config(**keys):
    return {"base_model": "builtin:tiny-llama-micro", "datasets": [{"path": "d.jsonl", "type": "qa"}], **keys}


def test_importing_the_kit_imports_no_torch():
    code = "import sys, gym.testing; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plugin_manager_has_builtins_and_the_given_plugins_only(qa):
    manager = testing.plugin_manager(qa)
    assert {"sft", "alpaca", "qa"} <= set(manager.infos)
    assert not manager.infos["qa"].builtin and manager.infos["alpaca"].builtin
    assert "qa" in manager.dataset_strategies()
    bare = testing.plugin_manager(("mine", qa), builtins=False)
    assert set(bare.infos) == {"mine"}
    assert set(testing.plugin_manager().infos).isdisjoint({"qa", "mine"})  # installed third parties stay out


def test_validate_returns_the_cfg_or_gyms_config_error(qa):
    cfg = testing.validate(config(qa_answer_prefix="Answer:"), qa, overrides=["seed=7"])
    assert (cfg.qa_answer_prefix, cfg.seed, cfg.datasets[0].qa_answer_field) == ("Answer:", 7, "answer")
    with pytest.raises(ConfigError) as err:
        testing.validate(config(qa_answer_prefx="x"), qa)
    assert any("qa_answer_prefx" in p and "qa_answer_prefix" in p for p in err.value.problems), err.value.problems
    with pytest.raises(ConfigError) as err:
        testing.validate(config(), ("other", types.ModuleType("other")))  # without the plugin, no type qa
    assert any("datasets.0.type" in p for p in err.value.problems)


def test_tiny_model_and_tokenizer(tmp_path):
    folder = testing.tiny_model()
    assert (folder / "config.json").is_file()
    copy = testing.tiny_model(tmp_path / "tiny")
    assert copy == tmp_path / "tiny" and (copy / "config.json").is_file()
    tok = testing.tiny_tokenizer()
    assert tok.eos_token_id is not None and tok.decode(tok("Q: hi")["input_ids"]) == "Q: hi"


def test_call_strategy_masks_the_prompt_builtin_and_plugin(qa):
    tok = testing.tiny_tokenizer()
    out = testing.call_strategy("alpaca", ALPACA_ROWS, tokenizer=tok)  # built-in strategy, no plugin
    assert len(out["input_ids"]) == 2 and all(labels[0] == -100 for labels in out["labels"])
    out = testing.call_strategy("qa", [{"question": "Why?", "answer": "Because."}], None, qa, tokenizer=tok)
    ids, labels = out["input_ids"][0], out["labels"][0]
    prompt = len(tok("Q: Why?\nA: ", add_special_tokens=False)["input_ids"])
    assert labels[:prompt] == [-100] * prompt and labels[prompt:] == ids[prompt:]
    assert tok.decode(ids[prompt:]) == "Because." + tok.eos_token
    options = {"qa_answer_prefix": "=>", "datasets": [{"qa_question_field": "q", "qa_answer_field": "a"}]}
    out = testing.call_strategy("qa", [{"q": "1?", "a": "one"}], options, qa)  # the config's tokenizer
    assert tok.decode(out["input_ids"][0]).startswith("Q: 1?\n=> one")


@pytest.mark.slow
def test_run_config_trains_with_the_plugins_seen_by_every_phase(tmp_path, qa):
    from gym.plugin_manager import get_plugin_manager

    seen = {}

    def gym_callbacks(cfg):  # the trainer phase: which manager does the process see?
        seen["manager"] = get_plugin_manager()

    spy = types.ModuleType("spy")
    spy.gym_callbacks = hookimpl(gym_callbacks)
    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(8)))
    manager = testing.plugin_manager(qa, spy)
    result = testing.run_config({"datasets": [{"path": data, "type": "qa"}]}, manager, tmp_path=tmp_path)
    assert result.steps == 3 and result.output_dir == str(tmp_path / "output")
    assert math.isfinite(result.first_loss) and math.isfinite(result.final_loss)
    assert seen["manager"] is manager and get_plugin_manager() is not manager


# -------------------------------------------------------------------------------- packages' own tests


def run_tests(package: Path) -> None:
    """The package's tests in a fresh interpreter, with only the package folder added to the path."""
    env = dict(os.environ, PYTHONPATH=str(package))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
        cwd=package, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def gym_imports(path: Path) -> set[str]:
    """Every module the file imports, other than ``__future__``."""
    tree = ast.parse(path.read_text())
    found = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    found |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    return found - {"__future__"}


def code_lines(path: Path) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring (a string statement)."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            docstrings.update(range(node.lineno, node.end_lineno + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstrings)


@pytest.mark.slow
def test_plugins_new_writes_a_package_whose_tests_pass(tmp_path):
    from click.testing import CliRunner

    from gym.cli import main

    result = CliRunner().invoke(main, ["plugins", "new", "demo", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    package = tmp_path / "gym-plugin-demo"
    for name in ("pyproject.toml", "README.md", "gym_plugin_demo/__init__.py", "tests/test_plugin.py"):
        assert (package / name).is_file(), name
    pyproject = (package / "pyproject.toml").read_text()
    assert '[project.entry-points."gym.plugins"]\ndemo = "gym_plugin_demo"' in pyproject and '"gym-llm"' in pyproject
    plugin = package / "gym_plugin_demo" / "__init__.py"
    assert gym_imports(plugin) == {"gym.api"}
    for hook in ("gym_config_schema", "gym_dataset_strategies", "gym_validate_config"):
        assert f"def {hook}(" in plugin.read_text()
    run_tests(package)

    again = CliRunner().invoke(main, ["plugins", "new", "demo", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "exists already" in again.output
    bad = CliRunner().invoke(main, ["plugins", "new", "my plugin!", "--dir", str(tmp_path)])
    assert bad.exit_code == 2 and "letters, digits" in bad.output


def test_new_plugin_refuses_an_existing_folder_with_a_config_error(tmp_path):
    from gym.scaffold import new_plugin

    assert new_plugin("My-Thing", tmp_path) == tmp_path / "gym-plugin-my-thing"
    assert (tmp_path / "gym-plugin-my-thing" / "gym_plugin_my_thing" / "__init__.py").is_file()
    with pytest.raises(ConfigError, match="exists already"):
        new_plugin("my_thing", tmp_path)
    with pytest.raises(ConfigError, match="letters"):
        new_plugin("../escape", tmp_path)


@pytest.mark.slow
def test_example_plugin_is_small_uses_only_the_api_and_its_tests_pass():
    module = QA_PLUGIN_SRC / "gym_plugin_qa" / "__init__.py"
    assert gym_imports(module) == {"gym.api"}
    assert code_lines(module) < 40, code_lines(module)
    run_tests(QA_PLUGIN_SRC)
