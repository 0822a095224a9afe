"""Early stopping and best-model selection: refused at validate when transformers would refuse it later, and end
to end: a tiny run stops early, keeps its best checkpoint, and its results and report say where and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gym import testing
from gym.api import ConfigError

BASE = {"base_model": testing.TINY_MODEL, "datasets": [{"path": "builtin:addition?rows=200", "type": "alpaca"}],
        "val_set_size": 0.05}
BEST = {"eval_steps": 2, "save_steps": 2, "early_stopping_patience": 2, "metric_for_best_model": "eval_loss",
        "greater_is_better": False, "load_best_model_at_end": True}


def problems(config: dict) -> dict[str, str]:
    """``{key: message}`` of the problems ``gym validate`` reports for ``config``."""
    with pytest.raises(ConfigError) as err:
        testing.validate({**BASE, **config})
    return {line.split(" ", 1)[0]: line for line in err.value.problems}


@pytest.mark.parametrize("config, key, words", [
    ({"early_stopping_patience": 2, "eval_steps": 2, "metric_for_best_model": "accuracy"},
     "metric_for_best_model", "eval_loss"),
    ({"early_stopping_patience": 2, "eval_steps": 2, "greater_is_better": True}, "greater_is_better", "lower"),
    ({"metric_for_best_model": "eval_loss"}, "metric_for_best_model", "no effect"),
    ({"load_best_model_at_end": True, "val_set_size": 0}, "load_best_model_at_end", "evaluation data"),
    ({"load_best_model_at_end": True, "eval_steps": 2, "save_steps": 3}, "load_best_model_at_end", "multiple"),
    ({"load_best_model_at_end": True, "eval_steps": 2, "save_strategy": "no"}, "load_best_model_at_end",
     "checkpoints"),
    ({"load_best_model_at_end": True, "eval_steps": 2}, "load_best_model_at_end", "every epoch"),
    ({"load_best_model_at_end": True, "eval_strategy": "no"}, "load_best_model_at_end", "evaluations"),
])
def test_what_transformers_would_refuse_is_a_config_problem(config, key, words):
    found = problems(config)
    assert key in found and words in found[key], found


def test_accepted_settings_reach_the_training_arguments():
    from gym.run import arguments_for

    manager = testing.plugin_manager()
    for extra in ({}, {"save_strategy": "best", "save_steps": None}):
        config = {k: v for k, v in {**BASE, **BEST, "output_dir": "unused", **extra}.items() if v is not None}
        cfg = testing.validate(config, manager)
        args = arguments_for(cfg, manager.training_method(cfg), 190, True, manager)
        assert args.load_best_model_at_end is True
        assert args.metric_for_best_model == "eval_loss" and args.greater_is_better is False
        assert args.eval_strategy == "steps" and args.eval_steps == 2
    # save_strategy: best with load_best_model_at_end needs no matching save schedule
    assert args.save_strategy == "best"


@pytest.mark.slow
def test_a_run_stops_early_keeps_its_best_checkpoint_and_says_why(tmp_path):
    from safetensors.torch import load_file

    planned = 40
    result = testing.run_config(
        {**BEST, "datasets": BASE["datasets"], "val_set_size": 0.05, "save_strategy": "steps", "save_total_limit": 2,
         "learning_rate": 0.05},  # far too high: the eval loss soon stops improving
        steps=planned, tmp_path=tmp_path)
    out = Path(result.output_dir)
    assert result.steps < planned
    history = result.trainer.state.log_history
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    best_step, best_loss = min(evals, key=lambda e: e[1])
    # stopped after `patience` evaluations without improvement on the best
    assert [step for step, _ in evals][-1] == result.steps
    assert all(loss >= best_loss for step, loss in evals if step > best_step)
    assert len({step for step, _ in evals if step > best_step}) == BEST["early_stopping_patience"]
    # the final eval loss is the saved (best) model's, measured again after it was loaded
    assert abs(result.eval_loss - best_loss) < 1e-4

    record = json.loads((out / "gym_results.json").read_text())
    assert record["planned_steps"] == planned and record["metrics"]["train_steps"] == result.steps
    assert record["stop_reason"].startswith(f"early stopping at step {result.steps}: eval_loss did not improve")
    assert f"at step {best_step}" in record["stop_reason"]
    assert record["metrics"]["best_step"] == best_step
    assert record["metrics"]["best_metric"] == pytest.approx(best_loss)
    assert any(f"step {best_step}" in note for note in record["notes"])

    # the saved model is the best checkpoint's (kept by the rotation), not the last step's
    best = load_file(str(out / f"checkpoint-{best_step}" / "model.safetensors"))
    saved = load_file(str(out / "model.safetensors"))
    last = load_file(str(out / f"checkpoint-{result.steps}" / "model.safetensors"))
    name = next(k for k in saved if k.endswith("q_proj.weight"))
    assert (saved[name] == best[name]).all() and not (saved[name] == last[name]).all()

    page = (out / "report.html").read_text()
    assert f"Stopped early at step {result.steps} of {planned} planned." in page
    assert "eval_loss did not improve for 2 evaluations in a row" in page
    assert "best, loaded" in page  # the best step is marked on the loss chart
