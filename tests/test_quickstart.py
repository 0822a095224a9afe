"""The embedded default: examples/quickstart.yml and the other example configs, and the built-in data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gym.builtin_data import materialize_dataset
from gym.plugins.addition import AdditionTask

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yml"))


@pytest.fixture(autouse=True)
def gym_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "gym-home"
    monkeypatch.setenv("GYM_HOME", str(home))
    return home


@pytest.fixture
def installed():
    """The installed plugins."""
    from gym.plugin_manager import GymPluginManager

    manager = GymPluginManager()
    manager.load_entry_points()
    return manager


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_says_how_to_run_it_and_validates(path, installed):
    from gym.config import load_config

    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# gym run examples/{path.name}"), first
    load_config(path, manager=installed)


def test_builtin_addition_is_deterministic_and_keeps_held_out_problems_out(gym_home):
    path = materialize_dataset("builtin:addition?rows=500&digits=3&seed=4")
    assert Path(path).parent == gym_home / "datasets"
    assert materialize_dataset("builtin:addition?rows=500&digits=3&seed=4") == path
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert len(rows) == 500
    for row in rows:
        a, b = (int(x) for x in row["instruction"].removeprefix("What is ").rstrip("?").split(" + "))
        assert row["output"] == str(a + b) and 100 <= a <= 999 and 100 <= b <= 999
        assert not AdditionTask.held_out(a, b)
        assert row["messages"][1] == {"role": "assistant", "content": row["output"]}
        assert row["text"] == f"{row['instruction']} {row['output']}"
    held_out = AdditionTask(digits=3).evaluation_rows(50)
    assert held_out == AdditionTask(digits=3).evaluation_rows(50)
    training_pairs = {r["instruction"] for r in rows}
    assert not training_pairs & {r["instruction"] for r in held_out}


@pytest.mark.parametrize(
    "bad, message",
    [
        ("builtin:addition?digits=0", "option digits must be between 1 and 9"),
        ("builtin:addition?color=red", "unknown option 'color=red'"),
        ("builtin:subtraction", "no built-in dataset named 'subtraction'"),
    ],
)
def test_bad_builtin_dataset_paths_are_config_errors(bad, message):
    from gym.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        materialize_dataset(bad)


def test_digit_accuracy_aligns_from_the_right():
    from gym.plugins.addition import digit_accuracy

    assert digit_accuracy("105", "105") == 1.0
    assert digit_accuracy("105", "95") == pytest.approx(1 / 3)
    assert digit_accuracy("58", "") == 0.0


@pytest.mark.slow
def test_quickstart_learns_addition_in_a_shortened_run(tmp_path, installed):
    """The real quickstart config, cut to 120 steps of 32: the loss drops and held-out answers get better."""
    from gym.config import load_config
    from gym.run import run as train

    config = REPO / "examples" / "quickstart.yml"
    assert yaml.safe_load(config.read_text())["eval_task"] == "addition"
    cfg = load_config(config, ["max_steps=120", "micro_batch_size=32", f"output_dir={tmp_path / 'quickstart'}"], manager=installed)
    result = train(cfg, installed)

    metrics = result.metrics
    assert result.steps == 120
    assert result.final_loss < result.first_loss - 3.0, (result.first_loss, result.final_loss)
    assert metrics["addition_exact_match_before"] == 0.0
    assert metrics["addition_digit_accuracy"] > metrics["addition_digit_accuracy_before"] + 0.15, metrics
    assert any(note.startswith("addition on 200 held-out problems: exact match 0.0% -> ") for note in result.notes)
    card = (tmp_path / "quickstart" / "README.md").read_text()
    assert "| addition_digit_accuracy |" in card
