"""The design holds: the core names no feature, plugins use only the public API, and a plugin written only
against ``gym.api`` can add a command, bring its own rows and build its own trainer."""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Words that name a feature or a dataset type. The core may not use them in code, comments or docs.
FEATURE_WORDS = re.compile(
    r"\blora\b|lora_|peft|qlora|\bpack(s|ing|ed)?\b|packing|alpaca|input_output|\bpretrain\b|user_defined|\bsft\b|"
    r"\baddition\b|\bdpo\b|\bgrpo\b|liger|deepspeed",
    re.IGNORECASE,
)
# compat.py is a table of Axolotl's key names (what gym refuses or renames); chat_templates.py names the
# chat templates of model families. The plugin API's own modules may use features as examples in docstrings.
NOT_CHECKED = {"compat.py", "chat_templates.py"}
API_MODULES = {"hookspecs.py", "api.py", "methods.py", "datasets_api.py"}


def _code_only(source: str) -> str:
    """The source without comments and docstrings (strings that are whole statements)."""
    tree = ast.parse(source)
    docstrings = {
        (node.lineno, node.col_offset)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }
    kept = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT or (token.type == tokenize.STRING and token.start in docstrings):
            continue
        kept.append(token.string)
    return " ".join(kept)


def test_no_core_module_names_a_feature():
    found = []
    for path in sorted((REPO / "core").rglob("*.py")):
        if path.name in NOT_CHECKED:
            continue
        text = path.read_text()
        if path.name in API_MODULES:
            text = _code_only(text)
        for number, line in enumerate(text.splitlines(), 1):
            for match in FEATURE_WORDS.finditer(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {match.group(0)!r} in {line.strip()[:90]}")
    assert not found, "the core names features:\n" + "\n".join(found)


def _gym_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "gym":
            names += [f"gym.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gym":
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.split(".")[0] == "gym"]
    return names


PLUGIN_FILES = sorted(
    [*(REPO / "plugins").rglob("*.py"), *(REPO / "prompt_strategies").rglob("*.py"),
     *(REPO / "examples" / "plugins").rglob("*.py")]
)


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_plugins_import_only_the_public_api(path):
    """Built-in plugins and the example import ``gym.api`` (and their own package), nothing else of gym."""
    allowed = ("gym.api", "gym.plugins", "gym.prompt_strategies", "gym.testing")
    bad = [m for m in _gym_imports(path) if not m.startswith(allowed)]
    assert not bad, f"{path.name} imports gym internals: {bad}"


def test_the_api_exports_what_it_lists_without_importing_torch():
    import subprocess
    import sys

    code = (
        "import sys, gym.api as api\n"
        "names = [n for n in api.__all__ if getattr(api, n, None) is None and n != 'IGNORE_INDEX']\n"
        "assert not names, names\n"
        "assert 'torch' not in sys.modules, 'gym.api pulled in torch'\n"
        "print(len(api.__all__))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 40


# ------------------------------------------------------------------------------ a throwaway plugin

PREFERENCE_PLUGIN = '''
"""A preference-style method written only against gym.api: its own rows, its own trainer, its own command."""
from gym.api import DataShape, DatasetStrategy, StrictConfig, TrainingMethod, hookimpl, say


class Settings(StrictConfig):
    toy_preferences: bool = False


class PairRows(DataShape):
    columns = ("prompt", "chosen", "rejected")

    def samples(self, dataset, counts, work, tokenizer=None):
        same = [i for i, row in enumerate(dataset) if row["chosen"] == row["rejected"]]
        counts.drop("chosen equals rejected", len(same))
        kept = dataset.select([i for i in range(len(dataset)) if i not in set(same)])
        counts.kept = len(kept)
        return kept

    def rows(self, dataset, split, work, tokenizer=None):
        return dataset, {"pairs": len(dataset)}

    def describe(self, split, samples, rows, figures):
        return f"{split}: {figures['pairs']} preference pairs"


class Pairs:
    def __init__(self, tokenizer, cfg, dataset):
        pass

    def process_batch(self, rows):
        return {"prompt": rows["q"], "chosen": rows["good"], "rejected": rows["bad"]}


class ToyTrainer:
    """Trains nothing but reports what it got, as a real trainer would its state."""

    def __init__(self, parts):
        import types

        self.parts = parts
        self.state = types.SimpleNamespace(global_step=0, epoch=0.0, log_history=[])
        self.callback_handler = types.SimpleNamespace(callbacks=[])

    def train(self, resume_from_checkpoint=None):
        import types

        self.state.global_step = len(self.parts.train_dataset)
        self.state.epoch = 1.0
        self.state.log_history = [{"loss": 1.0, "step": 1}, {"loss": 0.5, "step": self.state.global_step}]
        return types.SimpleNamespace(training_loss=0.75)

    def save_model(self, output_dir):
        self.parts.model.save_pretrained(output_dir)


@hookimpl
def gym_config_schema():
    return Settings


@hookimpl
def gym_dataset_strategies():
    return [DatasetStrategy(name="toy_pairs", builder=Pairs, columns=("prompt", "chosen", "rejected"),
                            methods=("toy_preferences",))]


@hookimpl
def gym_training_method(cfg):
    if not cfg.toy_preferences:
        return None
    return TrainingMethod(name="toy_preferences", build_trainer=ToyTrainer, data_shape=PairRows())


@hookimpl
def gym_register_commands(cli):
    import click

    @cli.command(name="toy-hello")
    @click.argument("who")
    def hello(who):
        """Say hello."""
        click.echo(f"hello {who} from the toy plugin")
'''


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    import importlib
    import sys

    from gym.plugin_manager import GymPluginManager, set_plugin_manager

    (tmp_path / "toy_preferences_plugin.py").write_text(PREFERENCE_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_preferences_plugin")
    manager = GymPluginManager()
    manager.load_entry_points(environ={"GYM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register(module, "toy", "gym-plugin-toy", "0.0.1")
    set_plugin_manager(manager)
    yield manager
    set_plugin_manager(None)
    sys.modules.pop("toy_preferences_plugin", None)


@pytest.mark.slow
def test_a_plugin_on_the_facade_brings_its_rows_its_trainer_and_a_command(toy_plugin, tmp_path):
    from click.testing import CliRunner

    from gym.cli import main
    from gym.config import load_config
    from gym.run import run

    data = tmp_path / "pairs.jsonl"
    rows = [{"q": f"q{i}", "good": f"good {i}", "bad": f"bad {i}" if i % 4 else f"good {i}"} for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "toy.yml"
    config.write_text(
        "base_model: builtin:tiny-llama-micro\ntoy_preferences: true\n"
        f"datasets:\n  - path: {data}\n    type: toy_pairs\noutput_dir: {tmp_path / 'out'}\n"
    )

    result = run(load_config(config, manager=toy_plugin), toy_plugin)

    trainer = result.trainer
    assert trainer.parts.train_dataset.column_names == ["prompt", "chosen", "rejected"]  # raw columns kept
    assert len(trainer.parts.train_dataset) == 9  # 3 of 12 rows had chosen == rejected: dropped and counted
    assert trainer.parts.train_collator is None  # the method has no collator; nothing was forced on it
    assert result.method == "toy_preferences" and result.steps == 9
    card = (tmp_path / "out" / "README.md").read_text()
    assert "toy_preferences" in card and "3 chosen equals rejected" in card

    cli = CliRunner().invoke(main, ["toy-hello", "world"])
    assert cli.exit_code == 0 and "hello world from the toy plugin" in cli.output
    assert "toy-hello" in CliRunner().invoke(main, ["--help"]).output


def test_a_strategy_for_another_method_is_a_config_error_naming_the_dataset(toy_plugin, tmp_path):
    from gym.config import load_config
    from gym.errors import ConfigError

    config = tmp_path / "mixed.yml"
    config.write_text(
        "base_model: builtin:tiny-llama-micro\n"
        "datasets:\n  - path: a.jsonl\n    type: alpaca\n  - path: b.jsonl\n    type: toy_pairs\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config, manager=toy_plugin)
    assert "datasets.1.type" in str(info.value) and "toy_preferences" in str(info.value) and "(sft)" in str(info.value)


def test_a_launch_plugin_decides_how_gym_run_starts_and_its_status_is_the_exit_code(tmp_path, monkeypatch):
    """``gym_launch`` answering an exit status means "I started the processes": this one trains nothing."""
    from click.testing import CliRunner

    from gym.api import hookimpl
    from gym.cli import main
    from gym.plugin_manager import GymPluginManager, set_plugin_manager

    seen = {}

    class Launcher:
        @hookimpl
        def gym_launch(self, cfg, argv):
            seen["argv"], seen["output_dir"] = argv, cfg.output_dir
            return 3

    manager = GymPluginManager()
    manager.load_entry_points(environ={"GYM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    manager.register(Launcher(), "launcher")
    set_plugin_manager(manager)
    try:
        config = tmp_path / "c.yml"
        config.write_text("base_model: builtin:tiny-llama-micro\ndatasets:\n  - path: builtin:addition\n    type: alpaca\n"
                          f"output_dir: {tmp_path / 'out'}\n")
        monkeypatch.setattr("sys.argv", ["gym", "run", str(config), "seed=7"])
        result = CliRunner().invoke(main, ["run", str(config), "seed=7"])
    finally:
        set_plugin_manager(None)
    assert result.exit_code == 3 and seen["argv"] == ["run", str(config), "seed=7"]
    assert not (tmp_path / "out").exists()  # nothing trained here


def test_only_the_main_process_prints(monkeypatch, capsys):
    from gym.output import is_main_process, say

    monkeypatch.setenv("RANK", "1")
    say("from a worker")
    assert not is_main_process() and capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    say("from the main process")
    assert is_main_process() and "[gym] from the main process" in capsys.readouterr().out


def test_rl_without_trl_installed_is_a_validate_error_naming_the_extra(tmp_path, monkeypatch):
    import importlib.util

    from gym import testing
    from gym.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    with pytest.raises(ConfigError, match=r"gym-llm\[rl\]"):
        testing.validate({"base_model": "builtin:tiny-llama-micro", "rl": "dpo",
                          "datasets": [{"path": "d.jsonl", "type": "passthrough"}]})
