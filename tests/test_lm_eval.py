"""lm-evaluation-harness as an optional plugin: a task defined on local data, after training and in gym evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gym import testing

STARTS = range(7)


def sequence(start: int, step: int = 1) -> str:
    return " ".join(str(start + step * k) for k in range(6))


def task_folder(folder: Path) -> Path:
    """A multiple-choice task on a local jsonl file: which continuation counts on from the start."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"start": s, "choices": [sequence(s), sequence(s, 2), sequence(s + 3, -1), sequence(s, 0)], "label": 0}
            for s in STARTS]
    (folder / "counting.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "counting.yaml").write_text(yaml.safe_dump({
        "task": "local_counting",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(folder / "counting.jsonl")}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Count from {{start}}:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }))
    return folder


def test_without_the_package_the_keys_are_a_validate_error_naming_the_extra(monkeypatch):
    import importlib.util

    from gym.api import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(ConfigError, match=r"lm_eval_tasks.*not installed: pip install 'gym-llm\[lm-eval\]'"):
        testing.validate({"base_model": testing.TINY_MODEL, "lm_eval_tasks": ["hellaswag"],
                          "datasets": [{"path": "d.jsonl", "type": "completion"}]})


def test_settings_without_tasks_and_a_missing_folder_are_validate_errors(tmp_path):
    from gym.api import ConfigError

    base = {"base_model": testing.TINY_MODEL, "datasets": [{"path": "d.jsonl", "type": "completion"}]}
    with pytest.raises(ConfigError, match="lm_eval_batch_size.*has no effect without lm_eval_tasks"):
        testing.validate({**base, "lm_eval_batch_size": 4})
    with pytest.raises(ConfigError, match="lm_eval_include_path.*no such folder"):
        testing.validate({**base, "lm_eval_tasks": ["x"], "lm_eval_include_path": str(tmp_path / "nope")})


def test_metric_names():
    from gym.plugins.lm_eval import metric_name

    assert metric_name("acc,none") == "acc"
    assert metric_name("exact_match,strict-match") == "exact_match_strict-match"


@pytest.mark.slow
def test_a_local_task_runs_after_training_and_in_gym_evaluate(tmp_path):
    from gym.plugins.evaluate import evaluate

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"Count from {s}: {sequence(s)}"}) + "\n" for s in list(STARTS) * 40))
    cfg = {"base_model": testing.TINY_MODEL, "datasets": [{"path": str(data), "type": "completion"}],
           "output_dir": str(tmp_path / "out"), "micro_batch_size": 8, "learning_rate": 1e-2, "seed": 2,
           "lm_eval_tasks": ["local_counting"], "lm_eval_include_path": str(task_folder(tmp_path / "tasks")),
           "lm_eval_batch_size": 4}
    result = testing.run_config(cfg, steps=120, tmp_path=tmp_path)
    accuracy = result.metrics["lm_eval_local_counting_acc"]
    assert accuracy >= 6 / 7, result.metrics  # trained on exactly these counts; 1 in 4 by chance
    assert any(note == f"lm-eval local_counting: acc {accuracy:.4f}" for note in result.notes)

    manager = testing.plugin_manager()
    out = evaluate(testing.validate(cfg, manager), manager=manager)
    assert out.lm_eval == {"local_counting": {"acc": accuracy}}
    saved = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert saved["metrics"] == {"lm_eval_local_counting_acc": accuracy} and saved["eval_loss"] is None

    untrained = evaluate(testing.validate(cfg, manager), manager=manager, write=False,
                         model_dir=str(testing.tiny_model(tmp_path / "untrained")))
    assert untrained.lm_eval["local_counting"]["acc"] < accuracy


@pytest.mark.slow
def test_an_unknown_task_is_a_config_error_before_training(tmp_path):
    from gym.api import ConfigError

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"Count from {s}: {sequence(s)}"}) + "\n" for s in STARTS))
    folder = task_folder(tmp_path / "tasks")
    cfg = {"datasets": [{"path": str(data), "type": "completion"}], "lm_eval_tasks": ["local_counting", "no_such_task"],
           "lm_eval_include_path": str(folder)}
    with pytest.raises(ConfigError, match="lm_eval_tasks: lm-eval has no task named no_such_task nor in"):
        testing.run_config(cfg, steps=1, tmp_path=tmp_path)
    assert not (tmp_path / "output" / "model.safetensors").exists()
