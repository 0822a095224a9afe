"""Preference dataset types: each layout gives text prompt / chosen / rejected; bad pairs are dropped and counted
by reason; a layout of the wrong shape names the field; types fit only the methods they serve."""

from __future__ import annotations

import json

import pytest

from gym import testing
from gym.api import ConfigError


def pairs(type_name, rows, config=None):
    out = testing.call_strategy(type_name, rows, config or DPO)
    assert out["completion"] == [None] * len(rows) and out["label"] == [None] * len(rows)
    return {name: out[name] for name in ("prompt", "chosen", "rejected")}

DPO = {"rl": "dpo"}
CHATML_PROMPT = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
LLAMA3_PROMPT = ("<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_chatml_intel_and_prompt_pairs():
    out = pairs("chatml.intel", [{"system": "be brief", "question": "2+2?", "chosen": "4",
                                                  "rejected": "5"}], DPO)
    assert out == {"prompt": [CHATML_PROMPT], "chosen": ["4<|im_end|>"], "rejected": ["5<|im_end|>"]}
    out = pairs("chatml.prompt_pairs", [{"system": "be brief", "prompt": "2+2?", "chosen": "4",
                                                         "rejected": "5"}], DPO)
    assert out["prompt"] == [CHATML_PROMPT]


def test_llama3_argilla_chat_and_ultra():
    conversation = lambda answer: [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}]
    out = pairs("llama3.argilla_chat", [{"chosen": conversation("yo"), "rejected": conversation("no")}],
                                DPO)
    assert out == {"prompt": [LLAMA3_PROMPT], "chosen": ["yo<|eot_id|>"], "rejected": ["no<|eot_id|>"]}
    out = pairs("llama3.ultra", [{"prompt": "hi", "chosen": conversation("yo"),
                                                  "rejected": conversation("no")}], DPO)
    assert out == {"prompt": [LLAMA3_PROMPT], "chosen": ["yo<|eot_id|>"], "rejected": ["no<|eot_id|>"]}
    out = pairs("chatml.ultra", [{"prompt": "hi", "chosen": conversation("yo"),
                                                  "rejected": conversation("no")}], DPO)
    assert out["chosen"] == ["yo<|im_end|>"] and out["prompt"][0].startswith("<|im_start|>user\nhi")


def test_passthrough_renders_conversations_with_the_chat_template_and_keeps_text():
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yo"}],
             "rejected": [{"role": "assistant", "content": "no"}]}]
    out = pairs("passthrough", rows)
    assert out == {"prompt": ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"],
                   "chosen": ["yo<|im_end|>\n"], "rejected": ["no<|im_end|>\n"]}
    out = pairs("passthrough", [{"prompt": "Q: hi\nA:", "chosen": " yo", "rejected": " no"}], DPO)
    assert out == {"prompt": ["Q: hi\nA:"], "chosen": [" yo"], "rejected": [" no"]}


def test_user_defined_reads_fields_and_formats_from_the_entry():
    entry = {"field_prompt": "q", "field_chosen": "good", "field_rejected": "bad", "prompt_format": "Q: {prompt}\nA: ",
             "chosen_format": "{chosen}!", "rejected_format": "{rejected}?"}
    out = pairs("user_defined.default", [{"q": "hi", "good": "yo", "bad": "no"}], {**DPO, "datasets": [entry]})
    assert out == {"prompt": ["Q: hi\nA: "], "chosen": ["yo!"], "rejected": ["no?"]}


def test_a_row_of_the_wrong_shape_names_the_field():
    from gym.api import RowError

    with pytest.raises(RowError) as error:
        testing.call_strategy("chatml.argilla_chat", [{"chosen": "not a conversation", "rejected": []}], DPO)
    assert error.value.field == "chosen"
    with pytest.raises(RowError) as error:
        testing.call_strategy("chatml.intel", [{"chosen": "a", "rejected": "b"}], DPO)
    assert error.value.field == "question"
    for method in (DPO, {"rl": "kto", "micro_batch_size": 2}):  # .default reads the first prompt column there is: all are named
        with pytest.raises(RowError) as error:
            testing.call_strategy("chatml.default", [{"text": "t", "chosen": "a", "rejected": "b", "completion": "a",
                                                      "label": True}], method)
        assert "'prompt', 'input', 'question', 'instruction'" in str(error.value) and "'text'" in str(error.value)


def test_sft_type_with_rl_and_preference_type_without_rl_are_errors_naming_the_entry():
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": "m", "rl": "dpo", "datasets": [{"path": "d.jsonl", "type": "alpaca"}]})
    assert len(error.value.problems) == 1 and "datasets.0.type" in error.value.problems[0]
    assert "makes rows for sft" in str(error.value)
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "chatml.intel"}]})
    assert len(error.value.problems) == 1 and "datasets.0.type" in error.value.problems[0]
    for rl in ("dpo", "ipo", "simpo", "orpo", "kto"):
        cfg = testing.validate({"base_model": "m", "rl": rl, "micro_batch_size": 2,
                                "datasets": [{"path": "d.jsonl", "type": "chatml.intel"}]})
        assert cfg.rl == rl


def test_bad_pairs_are_dropped_and_counted_by_reason(tmp_path):
    """Through gym's data phase: each reason counted, the summary says so, the kept pairs are the good ones."""
    from gym.api import prepare_data

    rows = [
        {"question": "good", "chosen": "yes", "rejected": "no"},
        {"question": "no rejected", "chosen": "yes", "rejected": ""},
        {"question": "no chosen", "chosen": None, "rejected": "no"},
        {"question": "", "chosen": "yes", "rejected": "no"},
        {"question": "same", "chosen": "yes", "rejected": "yes"},
        {"question": "long " * 200, "chosen": "yes", "rejected": "no"},
        {"question": "also good", "chosen": "a", "rejected": "b"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = testing.validate({"base_model": testing.TINY_MODEL, "rl": "dpo", "sequence_len": 64,
                            "datasets": [{"path": str(path), "type": "chatml.intel"}]})
    prepared = prepare_data(cfg)
    source = prepared.report.sources[0]
    assert source.kept == 2
    assert source.dropped == {"with no chosen response": 1, "with no rejected response": 1,
                              "with an empty prompt": 1, "with chosen identical to rejected": 1,
                              "longer than sequence_len": 1}
    assert "dropped" in prepared.summary() and "preference pairs" in prepared.summary()
    assert sorted(prepared.train["chosen"]) == ["a<|im_end|>", "yes<|im_end|>"]

    truncating = testing.validate({"base_model": testing.TINY_MODEL, "rl": "dpo", "sequence_len": 64,
                                   "excess_length_strategy": "truncate",
                                   "datasets": [{"path": str(path), "type": "chatml.intel"}]})
    source = prepare_data(truncating).report.sources[0]
    assert "longer than sequence_len" not in source.dropped
    assert source.dropped.get("with a prompt as long as sequence_len") == 1  # TRL would keep no response token


@pytest.mark.parametrize("near", [False, True])
def test_builtin_addition_preferences_rows(tmp_path, monkeypatch, near):
    from gym.plugins import dpo
    from gym.plugins.addition import AdditionTask

    monkeypatch.setenv("GYM_HOME", str(tmp_path))
    path = dpo.materialize(f"builtin:addition-preferences?rows=400&digits=2&near={int(near)}")
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == 400
    distances = set()
    for row in rows:
        question = row["prompt"][0]["content"]
        a, b = (int(x) for x in question.removeprefix("What is ").removesuffix("?").split(" + "))
        assert row["chosen"][0]["content"] == str(a + b)
        wrong = int(row["rejected"][0]["content"])
        assert wrong != a + b and (near or 20 <= wrong <= 198)  # a sum two two-digit numbers can make
        assert near or len(str(wrong)) == len(str(a + b))
        distances.add(abs(wrong - (a + b)))
        assert not AdditionTask.held_out(a, b)
        assert row["completion"] in (row["chosen"], row["rejected"]) and row["label"] == (row["completion"] == row["chosen"])
    assert distances <= {1, 10} if near else max(distances) > 40
    assert dpo.materialize(f"builtin:addition-preferences?rows=400&digits=2&near={int(near)}") == path


def test_careless_addition_forgets_half_the_carries(tmp_path, monkeypatch):
    from gym.plugins.addition import AdditionTask, materialize, units_carry

    monkeypatch.setenv("GYM_HOME", str(tmp_path))
    clean = [json.loads(line) for line in open(materialize("builtin:addition?rows=2000"))]
    careless = [json.loads(line) for line in open(materialize("builtin:addition?rows=2000&slips=50"))]
    carrying = slipped = 0
    for right, row in zip(clean, careless):
        assert row["instruction"] == right["instruction"]  # the same problems
        a, b = (int(x) for x in row["instruction"].removeprefix("What is ").removesuffix("?").split(" + "))
        assert right["output"] == str(a + b)
        if units_carry(a, b):
            carrying += 1
            slipped += row["output"] == str(a + b - 10)
            assert row["output"] in (str(a + b), str(a + b - 10))
        else:
            assert row["output"] == str(a + b)
        assert row["messages"][1]["content"] == row["output"] and row["text"].endswith(" " + row["output"])
    assert 0.45 < slipped / carrying < 0.55
    assert AdditionTask(slips=50).evaluation_rows(20) == AdditionTask().evaluation_rows(20)  # always right


def test_prepared_preference_data_is_cached(tmp_path, monkeypatch):
    from gym.api import prepare_data

    monkeypatch.setenv("GYM_HOME", str(tmp_path / "home"))
    config = {"base_model": testing.TINY_MODEL, "rl": "dpo", "dataset_prepared_path": str(tmp_path / "prepared"),
              "datasets": [{"path": "builtin:addition-preferences?rows=20", "type": "passthrough"}]}
    first = prepare_data(testing.validate(config))
    second = prepare_data(testing.validate(config))
    assert (first.report.cache, second.report.cache) == ("miss", "hit")
    assert second.train["chosen"] == first.train["chosen"] and len(second.train) == 20
    kto = prepare_data(testing.validate({**config, "rl": "kto", "micro_batch_size": 2}))
    assert kto.report.cache == "miss" and kto.train.column_names == ["prompt", "completion", "label"]


def test_passthrough_without_a_prompt_takes_what_chosen_and_rejected_share():
    """HH-RLHF's layout: whole exchanges in chosen and rejected."""
    out = pairs("passthrough", [{"chosen": "\n\nHuman: hi\n\nAssistant: hello there",
                                 "rejected": "\n\nHuman: hi\n\nAssistant: go away"}])
    assert out == {"prompt": ["\n\nHuman: hi\n\nAssistant: "], "chosen": ["hello there"], "rejected": ["go away"]}
    talk = [{"role": "user", "content": "hi"}]
    out = pairs("passthrough", [{"chosen": talk + [{"role": "assistant", "content": "yo"}],
                                 "rejected": talk + [{"role": "assistant", "content": "no"}]}])
    assert out["prompt"] == ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]
    assert out["chosen"] == ["yo<|im_end|>\n"]


def test_chat_template_pairs_builder_for_the_chat_template_default_layout():
    """Axolotl's chat_template.default preference rows (messages + chosen / rejected messages); ready for the
    chat_template strategy to hand preference configs to."""
    import types

    from gym.prompt_strategies.preference import build_chat_template_pairs

    entry = types.SimpleNamespace(field_messages="conversation", message_property_mappings={"role": "from",
                                                                                             "content": "value"})
    cfg = types.SimpleNamespace(rl="dpo", chat_template=None)
    strategy = build_chat_template_pairs(testing.tiny_tokenizer(), cfg, entry)
    out = strategy.process_batch({"conversation": [[{"from": "human", "value": "hi"}]],
                                  "chosen": [{"from": "gpt", "value": "yo"}], "rejected": ["no"]})
    assert out["prompt"] == ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]
    assert (out["chosen"], out["rejected"]) == (["yo<|im_end|>\n"], ["no<|im_end|>\n"])


# ------------------------------------------------------------- Axolotl's user-defined format written in `type:`

INLINE = {"field_prompt": "question", "field_system": "sys", "field_chosen": "good", "field_rejected": "bad",
          "prompt_format": "[{system}] Q: {prompt}\nA: ", "chosen_format": "{chosen}.", "rejected_format": "{rejected}."}


def _sums(count):
    """Generated pairs: the right sum is chosen, a near miss rejected; every other row has a system prompt."""
    rows = []
    for i in range(count):
        a, b = 3 * i + 1, 7 * i + 2
        row = {"question": f"{a}+{b}?", "good": str(a + b), "bad": str(a + b + 1)}
        if i % 2:
            row["sys"] = "add"
        rows.append(row)
    return rows


def test_inline_user_defined_format_renders_pairs_through_the_data_phase(tmp_path):
    """`rl: dpo` with `type:` a mapping (Axolotl's user_defined.default): read as the preference format, not SFT's,
    and gym's data phase gives the rendered prompt / chosen / rejected columns."""
    from gym.api import prepare_data
    from gym.prompt_strategies.preference import UserDefinedPairFormat

    rows = _sums(12)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = testing.validate({"base_model": testing.TINY_MODEL, "rl": "dpo", "datasets": [{"path": str(path),
                                                                                         "type": INLINE}]})
    assert isinstance(cfg.datasets[0].type, UserDefinedPairFormat) and cfg.datasets[0].type.field_prompt == "question"
    prepared = prepare_data(cfg)
    assert prepared.report.sources[0].kept == 12
    got = {(p, c, r) for p, c, r in zip(prepared.train["prompt"], prepared.train["chosen"], prepared.train["rejected"])}
    want = {(f"[{row.get('sys', '')}] Q: {row['question']}\nA: ", row["good"] + ".", row["bad"] + ".") for row in rows}
    assert got == want
    assert prepared.train.column_names == ["prompt", "chosen", "rejected"]


def test_inline_user_defined_format_serves_every_pair_method_and_kto():
    rows = [{"question": "1+1?", "sys": "add", "good": "2", "bad": "3"}]
    for rl in ("dpo", "ipo", "simpo", "orpo"):
        out = pairs(INLINE, rows, {"rl": rl})
        assert out == {"prompt": ["[add] Q: 1+1?\nA: "], "chosen": ["2."], "rejected": ["3."]}, rl
    # defaults: prompt / chosen / rejected columns written as they are
    out = pairs({"field_system": "sys"}, [{"prompt": "hi", "chosen": "yo", "rejected": "no"}])
    assert out == {"prompt": ["hi"], "chosen": ["yo"], "rejected": ["no"]}
    kto = {"field_prompt": "q", "field_completion": "answer", "field_label": "ok", "prompt_format": "Q: {prompt}\nA: ",
           "completion_format": "{completion}!"}
    out = testing.call_strategy(kto, [{"q": "1+1?", "answer": "2", "ok": True}, {"q": "1+1?", "answer": "3", "ok": 0}],
                                {"rl": "kto", "micro_batch_size": 2})
    assert (out["prompt"], out["completion"], out["label"]) == (["Q: 1+1?\nA: "] * 2, ["2!", "3!"], [True, False])


def problems(config):
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": "m", "rl": "dpo", **config})
    return error.value.problems


def test_inline_user_defined_format_is_validated_strictly():
    entry = lambda spec, **more: {"datasets": [{"path": "d.jsonl", "type": spec, **more}]}
    (problem,) = problems(entry({**INLINE, "field_promt": "q"}))
    assert problem.startswith("datasets.0.type.field_promt") and "did you mean 'field_prompt'" in problem
    (problem,) = problems(entry({"field_instruction": "q", "field_chosen": "c"}))
    assert problem.startswith("datasets.0.type.field_instruction") and "for sft, not for dpo" in problem
    (problem,) = problems(entry({"prompt_format": "Q: {promt}"}))
    assert problem.startswith("datasets.0.type.prompt_format") and "did you mean {prompt}" in problem
    (problem,) = problems(entry({"chosen_format": "{chosen"}))
    assert problem.startswith("datasets.0.type.chosen_format") and "not a valid format string" in problem
    (problem,) = problems(entry({"field_completion": "c"}))
    assert problem.startswith("datasets.0.type.field_completion") and "rl: kto" in problem
    (problem,) = problems(entry({"field_prompt": "q"}, field_chosen="c"))
    assert problem.startswith("datasets.0.field_chosen") and "in `type:`" in problem
    (problem,) = problems({"rl": "kto", "micro_batch_size": 2, **entry({"field_chosen": "c"})})
    assert problem.startswith("datasets.0.type.field_chosen") and "not used with rl: kto" in problem
    # the SFT format keeps its own keys without rl, and refuses the preference ones
    with pytest.raises(ConfigError) as error:
        testing.validate({"base_model": "m", **entry({"field_prompt": "q"})})
    (problem,) = error.value.problems
    assert problem.startswith("datasets.0.type.field_prompt") and "not for sft" in problem
    assert testing.validate({"base_model": "m", **entry({"field_instruction": "q"})}).datasets[0].type.field_instruction


@pytest.mark.slow  # the first TRL import alone takes seconds
def test_dpo_trains_on_the_inline_user_defined_format(tmp_path):
    rows = _sums(8)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = testing.run_config({"rl": "dpo", "adapter": "lora", "lora_target_linear": True,
                                 "datasets": [{"path": str(path), "type": INLINE}]}, steps=2, tmp_path=tmp_path)
    assert result.method == "dpo" and result.steps == 2
    assert "rewards_margins" in result.metrics
    tokenizer = testing.tiny_tokenizer()
    prompts = {tokenizer.decode(row["prompt_ids"]) for row in result.trainer.train_dataset}
    assert "[add] Q: 4+9?\nA: " in prompts and "[] Q: 1+2?\nA: " in prompts


def test_axolotl_dotted_names_argilla_icr_default_and_passthrough_default():
    out = pairs("chatml.argilla", [{"system": "be brief", "instruction": "2+2?", "chosen_response": "4",
                                    "rejected_response": "5"}])
    assert out == {"prompt": [CHATML_PROMPT], "chosen": ["4<|im_end|>"], "rejected": ["5<|im_end|>"]}
    out = pairs("chatml.icr", [{"system": "be brief", "input": "2+2?", "chosen": "4", "rejected": "5"}])
    assert out == {"prompt": [CHATML_PROMPT], "chosen": ["4<|im_end|>"], "rejected": ["5<|im_end|>"]}
    out = pairs("llama3.default", [{"question": "hi", "chosen_response": "yo", "rejected": "no"}])
    assert out == {"prompt": [LLAMA3_PROMPT], "chosen": ["yo<|eot_id|>"], "rejected": ["no<|eot_id|>"]}
    out = pairs("passthrough.default", [{"prompt": "Q: hi\nA:", "chosen": " yo", "rejected": " no"}])
    assert out == {"prompt": ["Q: hi\nA:"], "chosen": [" yo"], "rejected": [" no"]}
    kto = testing.call_strategy("chatml.argilla", [{"instruction": "2+2?", "completion": "4", "label": True}],
                                {"rl": "kto", "micro_batch_size": 2})
    assert (kto["prompt"], kto["completion"], kto["label"]) == (
        ["<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"], ["4<|im_end|>"], [True])
    from gym.api import RowError

    with pytest.raises(RowError) as error:
        testing.call_strategy("chatml.argilla", [{"question": "2+2?", "chosen_response": "4"}], DPO)
    assert error.value.field == "instruction"


def test_an_unknown_dotted_preference_type_lists_the_known_names():
    (problem,) = problems({"datasets": [{"path": "d.jsonl", "type": "zephyr.nectar"}]})
    assert problem.startswith("datasets.0.type") and "unknown dataset type 'zephyr.nectar'" in problem
    for name in ("chatml.intel", "chatml.argilla", "llama3.ultra", "passthrough", "user_defined.default"):
        assert name in problem
