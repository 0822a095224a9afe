"""Task evaluations behind ``gym_eval_tasks`` and ``gym evaluate``: loss, perplexity and tasks of a trained model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from gym import testing

ROWS = 240


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Short alpaca rows with a pattern a tiny model learns in a few dozen steps."""
    path = tmp_path_factory.mktemp("evaluate-data") / "rows.jsonl"
    rows = [{"instruction": f"Count from {i % 7}", "input": "", "output": " ".join(str(i % 7 + k) for k in range(6))}
            for i in range(ROWS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config(data: Path, output_dir: Path, **extra) -> dict:
    return {"base_model": testing.TINY_MODEL, "datasets": [{"path": str(data), "type": "alpaca"}],
            "val_set_size": 0.1, "sequence_len": 128, "micro_batch_size": 8, "output_dir": str(output_dir),
            "learning_rate": 1e-2, "seed": 3, **extra}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """(run result, its config dict): a tiny model trained 80 steps on ``data``, with 24 rows held out."""
    folder = tmp_path_factory.mktemp("evaluate-run")
    cfg = config(data, folder / "out")
    result = testing.run_config({**cfg, "eval_steps": 1000}, steps=80, tmp_path=folder)
    return result, cfg


def write_config(tmp_path: Path, cfg: dict, name: str = "eval.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def evaluate(cfg: dict, tmp_path: Path, **kwargs):
    from gym.plugins.evaluate import evaluate as run_evaluate

    manager = testing.plugin_manager()
    return run_evaluate(testing.validate(cfg, manager), manager=manager, **kwargs)


@pytest.mark.slow  # trains the module's model (about 12 s)
def test_loss_and_perplexity_of_the_trained_model_match_the_trainer_and_are_written(trained, tmp_path):
    result, cfg = trained
    out = evaluate({**cfg, "output_dir": result.output_dir}, tmp_path)

    assert out.eval_perplexity == pytest.approx(math.exp(out.eval_loss), rel=1e-9)
    # the same 24 held-out rows, the same loss as the trainer measured at the end of training
    assert out.eval_loss == pytest.approx(result.eval_loss, abs=2e-3)
    assert out.split["rows"] == 24 and out.split["tokens"] > 24 * 6
    saved = json.loads((Path(result.output_dir) / "eval_results.json").read_text())
    assert saved["eval_loss"] == pytest.approx(out.eval_loss)
    assert saved["metrics"] == {"eval_loss": out.eval_loss, "eval_perplexity": out.eval_perplexity}
    assert saved["split"]["source"].startswith("val_set_size 0.1") and saved["model_dir"] == result.output_dir
    assert "the model in" in saved["model"]


def test_the_loss_does_not_depend_on_the_batch_size(trained, tmp_path):
    result, cfg = trained
    cfg = {**cfg, "output_dir": result.output_dir}
    one = evaluate(cfg, tmp_path, batch_size=1, write=False)
    seven = evaluate(cfg, tmp_path, batch_size=7, write=False)
    assert one.eval_loss == pytest.approx(seven.eval_loss, rel=1e-5)


def test_the_trained_model_has_a_lower_loss_than_the_untrained_one(trained, tmp_path):
    result, cfg = trained
    untrained = testing.tiny_model(tmp_path / "untrained")  # the same base model, random weights
    before = evaluate({**cfg, "output_dir": str(tmp_path / "results")}, tmp_path, model_dir=str(untrained))
    after = evaluate({**cfg, "output_dir": result.output_dir}, tmp_path, write=False)
    assert after.eval_loss < before.eval_loss - 1.0, (before.eval_loss, after.eval_loss)
    assert json.loads((tmp_path / "results" / "eval_results.json").read_text())["model_dir"] == str(untrained)


def test_test_datasets_and_the_prepared_data_cache(trained, data, tmp_path):
    result, cfg = trained
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(line + "\n" for line in data.read_text().splitlines()[:10]))
    cfg = {**cfg, "output_dir": result.output_dir, "val_set_size": 0, "dataset_prepared_path": str(tmp_path / "cache"),
           "test_datasets": [{"path": str(test_file), "type": "alpaca"}]}
    first = evaluate(cfg, tmp_path, write=False)
    second = evaluate(cfg, tmp_path, write=False)
    assert first.split["rows"] == 10 and first.split["source"] == f"test_datasets ({test_file})"
    assert (first.split["cache"], second.split["cache"]) == ("miss", "hit")
    assert second.eval_loss == pytest.approx(first.eval_loss, rel=1e-6)


@pytest.mark.slow
def test_an_adapter_is_loaded_on_its_base_model(data, tmp_path):
    cfg = config(data, tmp_path / "lora", adapter="lora", lora_r=8, lora_alpha=16, lora_target_linear=True)
    result = testing.run_config(cfg, steps=30, tmp_path=tmp_path)
    assert (Path(result.output_dir) / "adapter_config.json").is_file()
    out = evaluate(cfg, tmp_path)
    assert out.model.startswith("the adapter in") and out.model.endswith(testing.TINY_MODEL)
    assert out.eval_loss == pytest.approx(result.eval_loss, abs=2e-3)
    base = evaluate({**cfg, "adapter": None, "output_dir": str(tmp_path / "base")}, tmp_path,
                    model_dir=str(testing.tiny_model(tmp_path / "base-model")))
    assert out.eval_loss < base.eval_loss - 0.2  # the adapter is applied: the base alone is worse


def test_gym_evaluate_prints_a_table_and_a_missing_model_is_a_clear_error(trained, tmp_path):
    from click.testing import CliRunner

    from gym.cli import main

    result, cfg = trained
    path = write_config(tmp_path, {**cfg, "output_dir": result.output_dir})
    ran = CliRunner().invoke(main, ["evaluate", str(path), "--batch-size", "4"])
    assert ran.exit_code == 0, ran.output
    saved = json.loads((Path(result.output_dir) / "eval_results.json").read_text())
    assert f"eval_loss        {saved['eval_loss']:.4f}" in ran.output
    assert f"eval_perplexity  {saved['eval_perplexity']:.4f}" in ran.output
    from gym.plugins.report_html import fmt  # the run's report now shows what gym evaluate measured

    report = (Path(result.output_dir) / "report.html").read_text()
    section = report.split('id="evaluation"', 1)[1].split("<h2", 1)[0]
    assert "eval_perplexity" in section and fmt(saved["eval_perplexity"]) in section

    missing = write_config(tmp_path, {**cfg, "output_dir": str(tmp_path / "never-trained")}, "missing.yml")
    ran = CliRunner().invoke(main, ["evaluate", str(missing)])
    assert ran.exit_code != 0 and "Traceback" not in ran.output
    assert "output_dir " in ran.output and "never-trained does not exist: run `gym run" in ran.output

    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "notes.txt").write_text("hi")
    ran = CliRunner().invoke(main, ["evaluate", str(path), "--model-dir", str(tmp_path / "not-a-model")])
    assert ran.exit_code != 0 and "--model-dir " in ran.output and "holds no trained model" in ran.output


def test_nothing_to_evaluate_is_a_config_error(data, tmp_path):
    from gym.api import ConfigError

    with pytest.raises(ConfigError, match="nothing to evaluate: set val_set_size or test_datasets"):
        evaluate(config(data, tmp_path / "out", val_set_size=0), tmp_path)


# ------------------------------------------------------------------------------------------ task hook


class EchoTask:
    """A third-party task through the hook: the answer should repeat the count the prompt starts."""

    @staticmethod
    def problems(cfg, count):
        from gym.api import EvalProblem

        return [EvalProblem(question=f"Count from {i}", expected=" ".join(str(i + k) for k in range(6)),
                            row={"instruction": f"Count from {i}", "input": "", "output": "?"})
                for i in range(min(count, 7))]

    @staticmethod
    def score(expected, answer):
        return {"exact_match": float(answer == expected), "first_number": float(answer.split()[:1] == expected.split()[:1])}

    def tasks(self):
        from gym.api import EvalTask

        return [EvalTask(name="counting", description="count on from the prompt", problems=self.problems,
                         score=self.score, max_new_tokens=16)]


def test_a_plugin_task_is_validated_scored_and_written(trained, tmp_path):
    from gym.api import ConfigError
    from gym.plugins.evaluate import evaluate as run_evaluate

    result, cfg = trained
    with pytest.raises(ConfigError, match="no task evaluation named 'counting'; installed: addition"):
        testing.validate({**cfg, "eval_task": "counting"}, testing.plugin_manager())

    class Plugin:
        from gym.api import hookimpl

        @hookimpl
        def gym_eval_tasks(self):
            return EchoTask().tasks()

    manager = testing.plugin_manager(("counting", Plugin()))
    run_cfg = testing.validate({**cfg, "output_dir": result.output_dir, "eval_task": ["counting"]}, manager)
    out = run_evaluate(run_cfg, manager=manager)
    task = out.tasks["counting"]
    assert task["problems"] == 7 and set(task) == {"problems", "exact_match", "first_number", "examples"}
    assert task["first_number"] >= 5 / 7, task  # trained on exactly these prompts: it counts on from the start
    assert task["exact_match"] <= task["first_number"]
    assert task["examples"][0]["question"] == "Count from 0" and task["examples"][0]["expected"] == "0 1 2 3 4 5"
    saved = json.loads((Path(result.output_dir) / "eval_results.json").read_text())
    assert saved["metrics"]["counting_first_number"] == task["first_number"]


def test_a_task_name_registered_twice_is_an_error_naming_both_plugins():
    from gym.api import PluginError, eval_tasks, hookimpl

    class Again:
        @hookimpl
        def gym_eval_tasks(self):
            from gym.api import EvalTask

            return [EvalTask(name="addition", description="another", problems=lambda cfg, n: [],
                             score=lambda e, a: {})]

    with pytest.raises(PluginError, match="the task 'addition' is registered by plugin") as info:
        eval_tasks(testing.plugin_manager(("again", Again())))
    assert "plugin 'addition'" in str(info.value) and "plugin 'again'" in str(info.value)


def test_addition_runs_through_the_hook_before_and_after_training(data, tmp_path):
    result = testing.run_config(
        {"datasets": [{"path": "builtin:addition?rows=300", "type": "alpaca"}], "eval_task": "addition",
         "eval_task_samples": 12}, steps=2, tmp_path=tmp_path)
    metrics = result.metrics
    assert set(k for k in metrics if k.startswith("addition_")) == {
        "addition_exact_match_before", "addition_digit_accuracy_before", "addition_exact_match",
        "addition_digit_accuracy"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in metrics if k.startswith("addition_"))
    assert any(note.startswith("addition on 12 held-out problems: exact match ") for note in result.notes)


def test_prompts_follow_the_dataset_type_or_the_chat_template_without_an_entry(tmp_path):
    from gym.api import EvalProblem, EvalTask
    from gym.plugins.evaluate import build_prompts

    manager = testing.plugin_manager()
    tokenizer = testing.tiny_tokenizer()
    problem = EvalProblem(question="What is 1 + 2?", expected="3",
                          row={"instruction": "What is 1 + 2?", "input": "", "output": "3",
                               "messages": [{"role": "user", "content": "What is 1 + 2?"},
                                            {"role": "assistant", "content": "3"}]})
    cfg = testing.validate({"base_model": testing.TINY_MODEL, "datasets": [{"path": "d.jsonl", "type": "alpaca"}]},
                           manager)
    task = EvalTask(name="t", description="", problems=lambda cfg, n: [problem], score=lambda e, a: {})
    alpaca = tokenizer.decode(build_prompts(cfg, tokenizer, task, [problem], manager)[0])
    assert alpaca.endswith("### Instruction:\nWhat is 1 + 2?\n\n### Response:\n") and "3" not in alpaca.split("1 + 2")[1]

    no_entry = EvalTask(name="t", description="", problems=lambda cfg, n: [problem], score=lambda e, a: {},
                        prompt_entry=lambda cfg: None)
    chat = tokenizer.decode(build_prompts(cfg, tokenizer, no_entry, [problem], manager)[0])
    assert chat == "<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n"

    from gym.api import ConfigError

    bad = EvalProblem(question="q", expected="1", row={"question": "q"})
    with pytest.raises(ConfigError, match="eval_task t: the prompts follow the dataset type 'alpaca', which cannot read"):
        build_prompts(cfg, tokenizer, task, [bad], manager)
