"""GRPO (rl: grpo): the trl / vllm sections, reward functions found at validate, the prompt strategies and their
counted drops, short runs with and without an adapter, and a failing reward function named."""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest

from gym import testing
from gym.api import ConfigError, DataError

REWARDS = '''
def correct(prompts, completions, answer, **kwargs):
    out = []
    for completion, expected in zip(completions, answer):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        out.append(1.0 if text.strip() == str(expected) else 0.0)
    return out


def length(prompts, completions, **kwargs):
    return [float(len(str(c))) for c in completions]


def broken(prompts, completions, **kwargs):
    raise ZeroDivisionError("no reward today")


def to_prompt(row):
    return {"prompt": [{"role": "user", "content": row["instruction"]}], "answer": row["output"]}


def axolotl_transform(cfg, *args, **kwargs):
    def transform_fn(example, tokenizer=None):
        assert tokenizer is not None
        return {"prompt": [{"role": "user", "content": example["instruction"]}], "answer": example["output"]}
    return transform_fn, {"remove_columns": ["instruction", "output"]}


def not_a_factory(cfg):
    return 3
'''


@pytest.fixture(autouse=True)
def gym_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GYM_HOME", str(tmp_path_factory.getbasetemp() / "gym-home"))


@pytest.fixture
def rewards(tmp_path, monkeypatch):
    """A module of reward functions in the working directory, under a name of its own (no import cache clash)."""
    name = f"grpo_rewards_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(REWARDS))
    monkeypatch.chdir(tmp_path)
    return name


def config(rewards: str, **extra):
    trl = {"num_generations": 2, "max_completion_length": 8, "reward_funcs": [f"{rewards}.correct"]}
    trl.update(extra.pop("trl", {}))
    return {
        "base_model": testing.TINY_MODEL,
        "rl": "grpo",
        "trl": trl,
        "datasets": [{"path": "builtin:addition?rows=64", "type": "grpo.transform", "transform": f"{rewards}.to_prompt"}],
        "micro_batch_size": 2,
        "sequence_len": 64,
        **extra,
    }


def problems_of(cfg: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        testing.validate(cfg)
    found = {}
    for line in caught.value.problems:
        field, _, message = line.partition(" ")
        found[field] = message
    return found


# ------------------------------------------------------------------------------------------ validate


def test_a_grpo_config_validates_and_maps_the_trl_section(rewards):
    from gym.api import get_plugin_manager  # noqa: F401 - the hook sees the manager in use

    cfg = testing.validate(config(rewards, rl_beta=0.05, trl={"temperature": 0.7, "scale_rewards": False},
                                  vllm={"gpu_memory_utilization": 0.5, "host": "0.0.0.0"}))
    manager = testing.plugin_manager()
    method = manager.call("gym_training_method", cfg=cfg)
    assert method.name == "grpo" and method.arguments_class == "trl:GRPOConfig"
    assert method.data_shape.columns == ("prompt",)
    args = method.arguments
    assert args["beta"] == 0.05 and args["num_generations"] == 2 and args["temperature"] == 0.7
    assert args["scale_rewards"] is False and args["vllm_gpu_memory_utilization"] == 0.5
    assert "reward_funcs" not in args and "gradient_checkpointing" not in args  # the core decides it for every method


def test_gdpo_is_grpo_normalising_each_reward_on_its_own(rewards):
    """Axolotl's rl: gdpo: GRPO with TRL's multi_objective_aggregation normalize_then_sum."""
    from gym.api import get_plugin_manager

    cfg = testing.validate({**config(rewards), "rl": "gdpo"})
    method = get_plugin_manager().training_method(cfg)
    assert method.name == "gdpo" and method.arguments["multi_objective_aggregation"] == "normalize_then_sum"
    assert testing.call_strategy("grpo.transform", [{"instruction": "q", "output": "1"}], {**config(rewards),
                                 "rl": "gdpo"})["prompt"] == [[{"role": "user", "content": "q"}]]
    found = problems_of({**config(rewards, trl={"multi_objective_aggregation": "sum_then_normalize"}), "rl": "gdpo"})
    assert "write rl: grpo" in found["trl.multi_objective_aggregation"]


def test_missing_reward_module_and_function_name_the_key(rewards):
    found = problems_of(config(rewards, trl={"reward_funcs": [f"{rewards}.correct", f"{rewards}.nothere",
                                                             "no_such_module_xyz.f", "plainname"]}))
    assert "defines no 'nothere'" in found["trl.reward_funcs.1"]
    assert "no module 'no_such_module_xyz'" in found["trl.reward_funcs.2"]
    assert "module.function" in found["trl.reward_funcs.3"]
    assert "trl.reward_funcs.0" not in found


def test_validate_does_not_run_the_reward_module(tmp_path, monkeypatch):
    name = f"grpo_side_effect_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("open('ran.txt', 'w').write('x')\ndef r(prompts, completions, **k):\n"
                                         "    return [0.0] * len(prompts)\n"
                                         "def t(row):\n    return {'prompt': row['instruction']}\n")
    monkeypatch.chdir(tmp_path)
    cfg = config(name, trl={"reward_funcs": [f"{name}.r"]})
    cfg["datasets"][0]["transform"] = f"{name}.t"
    testing.validate(cfg)
    assert not (tmp_path / "ran.txt").exists()


def test_use_vllm_without_vllm_is_a_problem_naming_the_key(rewards, monkeypatch):
    import gym.plugins.grpo as grpo

    monkeypatch.setattr(grpo, "_vllm_installed", lambda: False)
    found = problems_of(config(rewards, trl={"use_vllm": True}))
    assert "vllm is not installed" in found["trl.use_vllm"]


def test_keys_trl_no_longer_honours_are_refused_with_the_reason(rewards):
    found = problems_of(config(rewards, trl={"vllm_guided_decoding_regex": "\\d+", "use_liger_loss": True},
                               vllm={"enforce_eager": True}))
    assert "renamed" in found["trl.vllm_guided_decoding_regex"]
    assert "not honoured by TRL 1.x" in found["trl.use_liger_loss"]
    assert "gym starts none" in found["vllm.enforce_eager"]


def test_an_sft_dataset_type_names_the_dataset_and_a_transform_is_checked(rewards):
    cfg = config(rewards)
    cfg["datasets"] = [{"path": "builtin:addition?rows=64", "type": "chat_template"},
                       {"path": "builtin:addition?rows=64", "type": "grpo.transform", "transform": f"{rewards}.nope"},
                       {"path": "builtin:addition?rows=64", "type": "grpo.transform"}]
    found = problems_of(cfg)
    assert "not for the training method of this config (grpo)" in found["datasets.0.type"]
    assert "defines no 'nope'" in found["datasets.1.transform"]
    assert "needs transform" in found["datasets.2.transform"]


def test_group_size_and_completion_length_are_checked(rewards):
    found = problems_of(config(rewards, micro_batch_size=3, trl={"max_completion_length": 64}))
    assert "multiple of num_generations" in found["trl.num_generations"]
    assert "no room for the prompt" in found["trl.max_completion_length"]


# ------------------------------------------------------------------------------------------ data


def test_prompt_strategy_keeps_the_prompt_and_the_extra_columns(rewards):
    rows = [{"question": "What is 1 + 2?", "answer": "3", "noise": 1},
            {"question": [{"role": "user", "content": "Hi"}], "answer": "4", "noise": 2}]
    out = testing.call_strategy("prompt", rows, {**config(rewards), "datasets": [
        {"field_prompt": "question", "keep_columns": ["answer"]}]})
    assert out["prompt"] == ["What is 1 + 2?", [{"role": "user", "content": "Hi"}]]
    assert [json.loads(e) for e in out["extra_columns"]] == [{"answer": "3"}, {"answer": "4"}]
    assert all(set(labels) == {-100} for labels in out["labels"])  # prompt tokens only, for eval_task
    everything = testing.call_strategy("prompt", [{"prompt": "p", "answer": "1", "noise": 3}], config(rewards))
    assert json.loads(everything["extra_columns"][0]) == {"answer": "1", "noise": 3}


def test_transform_strategy_and_a_failing_transform(rewards):
    out = testing.call_strategy("grpo.transform", [{"instruction": "What is 1 + 2?", "output": "3"}], config(rewards))
    assert out["prompt"] == [[{"role": "user", "content": "What is 1 + 2?"}]]
    assert json.loads(out["extra_columns"][0]) == {"answer": "3"}
    with pytest.raises(Exception, match="transform .*to_prompt failed: KeyError"):
        testing.call_strategy("grpo.transform", [{"question": "x"}], config(rewards))


def test_a_type_naming_a_function_is_a_transform_in_axolotls_form(rewards, tmp_path):
    """Axolotl writes GRPO transforms as ``type: module.function``: function(cfg) returns the row function (and
    the columns to remove); its result is merged into the row."""
    from gym.prompt_strategies import grpo as strategies

    cfg = config(rewards)
    cfg["datasets"][0].pop("transform")
    out = testing.call_strategy(f"{rewards}.axolotl_transform", [{"instruction": "What is 1 + 2?", "output": "3",
                                                                   "level": 1}], cfg)
    assert out["prompt"] == [[{"role": "user", "content": "What is 1 + 2?"}]]
    assert json.loads(out["extra_columns"][0]) == {"answer": "3", "level": 1}
    with pytest.raises(DataError, match=rf"{rewards}.not_a_factory\(cfg\) must return a function"):
        testing.call_strategy(f"{rewards}.not_a_factory", [{"instruction": "x"}], cfg)
    # a missing module or function is an error at validate naming datasets.0.type
    found = problems_of({**cfg, "datasets": [{"path": "d.jsonl", "type": f"{rewards}.nothing_here"}]})
    assert "nothing_here" in found["datasets.0.type"]
    assert "datasets.0.type" in problems_of({**cfg, "datasets": [{"path": "d.jsonl", "type": "no_such_module.fn"}]})
    # only with rl: grpo (elsewhere an unknown type is still unknown); editing the module changes the cache key
    found = problems_of({"base_model": "m", "datasets": [{"path": "d.jsonl", "type": f"{rewards}.axolotl_transform"}]})
    assert "unknown dataset type" in found["datasets.0.type"]
    entry = {"path": "d.jsonl", "type": f"{rewards}.axolotl_transform"}
    validated = testing.validate({**cfg, "datasets": [entry]})
    before = strategies.gym_data_settings(validated)
    with open(tmp_path / f"{rewards}.py", "a") as handle:
        handle.write("\n# edited\n")
    assert strategies.gym_data_settings(validated) != before


def test_editing_the_transform_changes_the_prepared_data_key(rewards, tmp_path):
    from gym.prompt_strategies import grpo as strategies

    cfg = testing.validate(config(rewards))
    before = strategies.gym_data_settings(cfg)
    with open(tmp_path / f"{rewards}.py", "a") as handle:
        handle.write("\n# edited\n")
    assert strategies.gym_data_settings(cfg) != before


def test_prompt_rows_drop_and_count_empty_and_too_long_prompts(tmp_path):
    import datasets

    from gym.api import SourceCounts
    from gym.plugins.grpo import EXTRA, PromptRows

    cfg = type("Cfg", (), {"excess_length_strategy": "drop"})()
    shape = PromptRows(cfg, limit=12)
    long_text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    data = datasets.Dataset.from_dict({
        "prompt": ["What is 1 + 2?", "  ", long_text, "", "Fine"],
        EXTRA: [json.dumps({"answer": str(i)}) for i in range(5)],
    })
    counts = SourceCounts(path="p.jsonl", type="prompt", role="train")
    kept = shape.samples(data, counts, tmp_path, tokenizer=testing.tiny_tokenizer())
    assert kept["prompt"] == ["What is 1 + 2?", "Fine"] and counts.kept == 2
    assert counts.dropped == {"empty prompt": 2,
                              "prompt longer than 12 tokens (sequence_len - max_completion_length)": 1}
    rows, figures = shape.rows(kept, "train", tmp_path)
    assert rows.column_names == ["prompt", "answer"] and rows["answer"] == ["0", "4"]
    assert figures == {"prompts": 2, "extra_columns": ["answer"]}
    cut = PromptRows(type("Cfg", (), {"excess_length_strategy": "truncate"})(), limit=12)
    counts = SourceCounts(path="p.jsonl", type="prompt", role="train")
    assert len(cut.samples(data, counts, tmp_path, tokenizer=testing.tiny_tokenizer())) == 3
    assert counts.changed == {"truncated": 1}


# ------------------------------------------------------------------------------------------ rewards


def test_a_failing_reward_function_is_named_with_the_prompt():
    from gym.plugins.grpo import named_reward

    def picky(prompts, completions, answer, **kwargs):
        return [1.0 / (len(c) - 3) for c in completions]

    reward = named_reward("my_rewards.picky", picky)
    assert reward.__name__ == "picky"
    assert reward(prompts=["a", "b"], completions=["xx", "yy"], answer=["1", "2"]) == [-1.0, -1.0]
    with pytest.raises(DataError, match=r"reward function my_rewards.picky failed on prompt 1 of the batch "
                                        r"\('What is 2 \+ 2\?'\): ZeroDivisionError"):
        reward(prompts=["What is 1 + 1?", "What is 2 + 2?"], completions=["ab", "abc"], answer=["2", "4"],
               trainer_state=None)


def test_chat_completions_stop_at_the_end_of_turn_token():
    """chatml ends a turn with <|im_end|> while the tiny model's EOS is <|endoftext|>: TRL must stop at both."""
    import types

    from gym.plugins.grpo import end_of_turn_id, stop_at_end_of_turn

    tokenizer = testing.tiny_tokenizer()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tokenizer) == im_end != tokenizer.eos_token_id
    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=tokenizer.eos_token_id))
    stop_at_end_of_turn(model, tokenizer, [{"prompt": [{"role": "user", "content": "hi"}]}])
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, im_end]
    text_model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=0))
    stop_at_end_of_turn(text_model, tokenizer, [{"prompt": "hi"}])  # text prompts: the EOS as it is
    assert text_model.generation_config.eos_token_id == 0
    # vLLM loads the model from its folder: the end of turn goes to its sampling settings too
    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=tokenizer.eos_token_id))
    args = types.SimpleNamespace(use_vllm=True, generation_kwargs={"top_k": 5})
    stop_at_end_of_turn(model, tokenizer, [{"prompt": [{"role": "user", "content": "hi"}]}], args)
    assert args.generation_kwargs == {"top_k": 5, "stop_token_ids": sorted([tokenizer.eos_token_id, im_end])}


# ------------------------------------------------------------------------------------------ runs


@pytest.mark.slow
@pytest.mark.parametrize("adapter", [None, "lora"])
def test_grpo_trains_a_few_steps(tmp_path, rewards, adapter):
    # full fine-tuning adds a token: the reference must be built as the policy was (TRL would reload the base)
    extra = {"adapter": "lora", "lora_target_linear": True} if adapter else {"special_tokens": {"pad_token": "<|newpad|>"}}
    cfg = config(rewards, rl_beta=0.1, **extra)
    cfg["trl"]["reward_funcs"] = [f"{rewards}.correct", f"{rewards}.length"]
    result = testing.run_config(cfg, steps=2, tmp_path=tmp_path)
    trainer = result.trainer
    assert trainer.state.global_step == 2
    logged = [entry for entry in trainer.state.log_history if "rewards/length/mean" in entry]
    assert logged and all(entry["rewards/length/mean"] > 0 for entry in logged)
    model = trainer.model
    if adapter:
        assert list(model.peft_config) == ["default"]  # the reference is the base with the adapter disabled
        assert trainer.ref_model is None
        assert (tmp_path / "output" / "adapter_config.json").is_file()
    else:
        assert trainer.ref_model is not None  # beta > 0 with full fine-tuning: a frozen copy
        assert trainer.ref_model is not trainer.model
        rows = trainer.model.get_input_embeddings().weight.shape[0]
        assert trainer.ref_model.get_input_embeddings().weight.shape[0] == rows == len(trainer.processing_class)
        assert (tmp_path / "output" / "model.safetensors").is_file()
    # the reward, its parts, KL and completion length reach the summary and the final metrics
    summary = [line for line in result.notes if line.startswith("grpo, first log -> last log: reward ")]
    assert summary and "kl" in summary[0] and "completion length" in summary[0], result.notes
    assert {"reward", "kl", "completions_mean_length", "rewards_length_mean"} <= set(result.metrics)
    assert result.metrics["rewards_length_mean"] > 0
    # counted tokens are those of the passes that train: not generation, not the reference's
    trained = [entry["trained_tokens"] for entry in trainer.state.log_history if "trained_tokens" in entry]
    assert trained and trained[-1] <= 2 * 2 * 64  # 2 steps of 2 rows of at most sequence_len tokens


def test_the_step_plan_counts_each_prompts_generations(rewards):
    """TRL trains on num_generations completions of each prompt, num_iterations times: an epoch is that many
    more steps than prompts / micro_batch_size, and the plan (printed, saves_per_epoch, ...) follows it."""
    from gym.api import get_plugin_manager
    from gym.run import arguments_for

    manager = get_plugin_manager()
    for extra, batch, per_epoch in (({}, 2, 64), ({"num_iterations": 2}, 2, 128), ({"num_generations": 4}, 4, 64)):
        cfg = testing.validate({**config(rewards, trl=extra), "micro_batch_size": batch, "num_epochs": 1,
                                "saves_per_epoch": 4})
        args = arguments_for(cfg, manager.training_method(cfg), 64, False, manager)
        assert (args.gym_plan.steps_per_epoch, args.gym_plan.total_steps) == (per_epoch, per_epoch)
        assert args.save_steps == per_epoch // 4


@pytest.mark.slow
def test_a_reward_function_raising_in_a_run_names_it(tmp_path, rewards):
    cfg = config(rewards)
    cfg["trl"]["reward_funcs"] = [f"{rewards}.broken"]
    with pytest.raises(DataError, match=rf"reward function {rewards}.broken failed on prompt 0 of the batch "
                                        r"\('What is .*ZeroDivisionError: no reward today"):
        testing.run_config(cfg, steps=1, tmp_path=tmp_path)
