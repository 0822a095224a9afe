"""``gym run`` end to end on a tiny built-in model: loss, outputs, hooks, step counts, resuming, errors."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, SecretStr

from gym.api import hookimpl

COLOURS = ["red", "green", "blue", "gold"]


@pytest.fixture(autouse=True)
def gym_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "gym-home"
    monkeypatch.setenv("GYM_HOME", str(home))
    return home


def write_alpaca(path: Path, rows: int = 64) -> Path:
    with path.open("w") as handle:
        for i in range(rows):
            row = {"instruction": f"Name colour number {i % 4}.", "input": "", "output": COLOURS[i % 4]}
            handle.write(json.dumps(row) + "\n")
    return path


def alpaca_config(tmp_path: Path, extra: str = "", rows: int = 64) -> str:
    data = write_alpaca(tmp_path / "colours.jsonl", rows)
    head = textwrap.dedent(
        f"""\
        base_model: builtin:tiny-llama-micro
        datasets:
          - path: {data}
            type: alpaca
        sequence_len: 128
        learning_rate: 1.0e-2
        lr_scheduler: constant
        output_dir: {tmp_path / "out"}
        """
    )
    extra = textwrap.dedent(extra)
    given = {line.split(":")[0] for line in extra.splitlines() if line and not line.startswith(" ")}
    head = "".join(line for line in head.splitlines(keepends=True) if line.split(":")[0] not in given)
    return head + extra  # a key in extra replaces the default above (a key written twice is an error)


def fresh_manager(*plugins):
    """A plugin manager with the installed plugins plus ``(object, name)`` pairs registered in code."""
    from gym.plugin_manager import GymPluginManager

    manager = GymPluginManager()
    manager.load_entry_points()
    for plugin, name in plugins:
        manager.register(plugin, name)
    return manager


def run_in_process(write_config, text: str, manager=None, overrides=()):
    from gym.config import load_config
    from gym.run import run as train

    manager = manager or fresh_manager()
    cfg = load_config(write_config(text), overrides, manager=manager)
    return cfg, train(cfg, manager)


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_gym_run_alpaca_learns_and_writes_a_loadable_model_card_and_config(write_config, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gym.cli import main

    config = write_config(alpaca_config(tmp_path, "micro_batch_size: 8\nnum_epochs: 3\nlogging_steps: 1\nval_set_size: 8\n"))
    result = CliRunner().invoke(main, ["run", str(config)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = tmp_path / "out"

    # 56 training rows / 8 per step = 7 steps an epoch, 3 epochs; a checkpoint each epoch
    checkpoint = out / "checkpoint-21"
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 21
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 2.0, losses
    assert [e["eval_loss"] for e in history if "eval_loss" in e][-1] < losses[0] - 2.0

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.use_cache is True  # training turned it off; the saved model has it back
    assert "<|im_start|>" in tokenizer.chat_template
    prompt = tokenizer("Below is an instruction", return_tensors="pt")
    assert model(**prompt).logits.shape[-1] == len(tokenizer)

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "gym" in front["tags"]
    assert "| train_steps | 21 |" in card and "eval_loss" in card and "```yaml" in card
    saved = yaml.safe_load((out / "gym_config.yml").read_text())
    assert saved["base_model"] == "builtin:tiny-llama-micro" and saved["micro_batch_size"] == 8
    assert "trained (sft) 21 steps" in result.output and "tokens trained" in result.output


# ------------------------------------------------------------------------------------------------ hooks


class SecretFragment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recorder_api_key: SecretStr | None = None


class Recorder:
    """Implements every hook of the run and notes when each is called."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.saw: dict[str, object] = {}

    @hookimpl
    def gym_config_schema(self):
        return SecretFragment

    @hookimpl
    def gym_data_settings(self, cfg):
        self.calls.append("gym_data_settings")

    @hookimpl
    def gym_before_model_load(self, cfg):
        self.calls.append("gym_before_model_load")

    @hookimpl
    def gym_model_load_kwargs(self, cfg):
        self.calls.append("gym_model_load_kwargs")
        return {"attn_implementation": "eager"}

    @hookimpl
    def gym_after_model_load(self, cfg, model, tokenizer):
        self.calls.append("gym_after_model_load")
        self.saw["attn"] = model.config._attn_implementation

    @hookimpl
    def gym_wrap_model(self, cfg, model):
        self.calls.append("gym_wrap_model")

    @hookimpl
    def gym_after_wrap_model(self, cfg, model):
        self.calls.append("gym_after_wrap_model")

    @hookimpl
    def gym_data_collator(self, cfg, tokenizer, training):
        self.calls.append(f"gym_data_collator(training={training})")

    @hookimpl
    def gym_training_arguments(self, cfg):
        self.calls.append("gym_training_arguments")
        return {"logging_steps": 1}

    @hookimpl
    def gym_model_card(self, cfg, model):
        self.calls.append("gym_model_card")
        return {"tags": ["recorded"], "sections": ["## Recorder\n\nThe recorder was here."]}

    @hookimpl
    def gym_callbacks(self, cfg):
        from transformers import TrainerCallback

        self.calls.append("gym_callbacks")
        recorder = self

        class Began(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                recorder.calls.append("on_train_begin")

        return [Began()]

    @hookimpl
    def gym_after_train(self, cfg, model, tokenizer, output_dir):
        self.calls.append("gym_after_train")
        self.saw["saved"] = sorted(p.name for p in Path(output_dir).iterdir())


def test_every_hook_is_called_in_order_and_acts(write_config, tmp_path):
    recorder = Recorder()
    manager = fresh_manager((recorder, "recorder"))
    text = alpaca_config(
        tmp_path, "micro_batch_size: 8\ngradient_accumulation_steps: 2\nnum_epochs: 2\nval_set_size: 4\n"
        "save_strategy: 'no'\nrecorder_api_key: sk-very-secret\n", rows=54,
    )
    cfg, result = run_in_process(write_config, text, manager)

    assert recorder.calls == [
        "gym_data_settings",  # data
        "gym_training_arguments",  # trainer arguments, before the model exists
        "gym_before_model_load",  # model
        "gym_model_load_kwargs",
        "gym_after_model_load",
        "gym_wrap_model",
        "gym_after_wrap_model",
        "gym_data_collator(training=True)",  # trainer
        "gym_data_collator(training=False)",
        "gym_callbacks",
        "on_train_begin",  # train
        "gym_model_card",  # outputs
        "gym_after_train",
    ]
    card = (Path(result.output_dir) / "README.md").read_text()
    assert "The recorder was here." in card and "recorded" in card.split("---")[1]
    assert recorder.saw["attn"] == "eager"  # gym_model_load_kwargs replaced gym's default
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "gym_config.yml"} <= set(
        recorder.saw["saved"]
    )
    # 50 rows, micro batch 8 -> 7 batches, 2 accumulated -> 4 steps an epoch, 2 epochs
    state = result.trainer.state
    assert state.max_steps == 8 and result.steps == 8
    assert len([e for e in state.log_history if "loss" in e]) == 8  # logging_steps from the hook
    # every trained label of the 50 training rows, twice (2 epochs); a row's first label is never predicted
    rows = result.trainer.train_dataset["labels"]
    per_epoch = sum(sum(1 for label in labels[1:] if label != -100) for labels in rows)
    assert result.metrics["tokens_trained"] == 2 * per_epoch > 0
    assert result.metrics["tokens_per_second"] > 0

    saved = (tmp_path / "out" / "gym_config.yml").read_text()
    assert "sk-very-secret" not in saved and "recorder_api_key" not in saved.split("\n", 2)[2]
    assert "# Secrets left out: recorder_api_key. Pass them again: gym run gym_config.yml recorder_api_key=..." in saved
    assert "sk-very-secret" not in (tmp_path / "out" / "README.md").read_text()


# ------------------------------------------------------------------------------------------ step counts


def test_max_steps_overrides_epochs_and_group_by_length_and_debug_act(write_config, tmp_path, capsys):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    text = alpaca_config(tmp_path, "micro_batch_size: 4\nnum_epochs: 5\nmax_steps: 3\ngroup_by_length: true\ndebug: true\n")
    _, result = run_in_process(write_config, text)
    assert result.steps == 3 and result.trainer.state.max_steps == 3
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-3"]
    assert isinstance(result.trainer._get_train_sampler(), LengthGroupedSampler)
    assert "sample 0: " in capsys.readouterr().out  # debug shows tokens with their labels


def test_packed_step_count_comes_from_the_packing_plan(write_config, tmp_path):
    from gym.training import plan_steps

    text = alpaca_config(tmp_path, "sample_packing: true\nsequence_len: 256\nmicro_batch_size: 2\nnum_epochs: 2\n"
                         "save_strategy: 'no'\n", rows=80)
    cfg, result = run_in_process(write_config, text)
    packed_rows = len(result.trainer.train_dataset)
    assert packed_rows < 80  # several samples share a row
    assert "position_ids" in result.trainer.train_dataset.column_names
    expected = 2 * math.ceil(packed_rows / 2)
    assert plan_steps(cfg, packed_rows).total_steps == expected
    assert result.trainer.state.max_steps == expected == result.steps
    assert result.final_loss < result.first_loss


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.slow
def test_resume_from_checkpoint_continues_where_it_stopped(write_config, tmp_path):
    base = alpaca_config(tmp_path, "micro_batch_size: 8\nmax_steps: 4\nsave_steps: 2\nlogging_steps: 1\n")
    _, first = run_in_process(write_config, base)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    first_losses = [e["loss"] for e in first.trainer.state.log_history if "loss" in e]

    _, resumed = run_in_process(write_config, base, overrides=[f"resume_from_checkpoint={out / 'checkpoint-2'}"])
    assert resumed.resumed_from == str(out / "checkpoint-2")
    assert resumed.start_step == 2 and "steps 2 to 4" in resumed.summary()
    history = resumed.trainer.state.log_history
    steps_logged_now = [e["step"] for e in history if "loss" in e and e["step"] > 2]
    assert steps_logged_now == [3, 4] and resumed.steps == 4
    # the same data order and weights: the resumed steps repeat the first run's losses
    resumed_losses = [e["loss"] for e in history if "loss" in e]
    assert resumed_losses[2:] == pytest.approx(first_losses[2:], rel=1e-4)

    _, auto = run_in_process(write_config, base, overrides=["auto_resume_from_checkpoints=true", "max_steps=5"])
    assert auto.resumed_from == str(out / "checkpoint-4") and auto.steps == 5
    assert (out / "checkpoint-4" / "gym_run.json").is_file()  # which run made it

    # a different run left in the same output_dir is not continued without a word
    from gym.errors import ConfigError

    with pytest.raises(ConfigError, match=r"checkpoint-5 was made by a different run \(learning_rate \(0\.01 there, 0\.02 now\)"):
        run_in_process(write_config, base, overrides=["auto_resume_from_checkpoints=true", "max_steps=6",
                                                      "learning_rate=0.02"])


def test_resume_from_a_folder_that_is_not_a_checkpoint_is_a_config_error(write_config, tmp_path):
    from gym.errors import ConfigError

    with pytest.raises(ConfigError, match="resume_from_checkpoint: .* cannot be resumed from: it has no trainer_state.json"):
        run_in_process(write_config, alpaca_config(tmp_path, f"resume_from_checkpoint: {tmp_path}\nmax_steps: 1\n"))


# ------------------------------------------------------------------------------------------------ errors


def test_cli_reports_a_bad_config_without_a_traceback(write_config, tmp_path):
    from gym.cli import main

    runner = CliRunner()
    bad_key = write_config(alpaca_config(tmp_path, "micro_batch_sise: 4\n"), name="bad_key.yml")
    result = runner.invoke(main, ["run", str(bad_key)])
    assert result.exit_code != 0
    assert "micro_batch_sise" in result.output and "did you mean 'micro_batch_size'" in result.output
    assert "Traceback" not in result.output

    bad_optimizer = write_config(alpaca_config(tmp_path, "optimizer: adamw_torhc\nmax_steps: 1\n"), name="bad_opt.yml")
    result = runner.invoke(main, ["run", str(bad_optimizer)])
    assert result.exit_code != 0
    assert "optimizer" in result.output and "'adamw_torhc' is not available; did you mean adamw_torch" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # rejected before training


@pytest.mark.slow
def test_auto_resume_with_save_total_limit_finishes_cleanly(write_config, tmp_path):
    """The checkpoint resumed from is rotated away during the run; the summary must not need it afterwards."""
    base = alpaca_config(tmp_path, "micro_batch_size: 8\nmax_steps: 2\nsave_steps: 1\nsave_total_limit: 1\n"
                                   "auto_resume_from_checkpoints: true\n")
    run_in_process(write_config, base)
    _, resumed = run_in_process(write_config, base, overrides=["max_steps=4"])
    out = tmp_path / "out"
    assert resumed.start_step == 2 and resumed.steps == 4 and "steps 2 to 4" in resumed.summary()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
