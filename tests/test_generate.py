"""``gym generate``: batched, resumable answers to a JSONL file, equal to what ``gym chat --greedy`` answers."""

from __future__ import annotations

import json

import pytest

from test_chat import IDENTITY, PASSWORD, invoke, trained, without_template, write_config


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_greedy_answers_equal_gym_chat_and_keep_the_input_fields(tmp_path):
    config = str(trained("full"))
    rows = [
        {"id": "a", "prompt": PASSWORD, "tags": ["x"]},
        {"id": "b", "messages": [{"role": "user", "content": IDENTITY}]},
        {"id": "c", "prompt": "Tell me a story about a long journey"},  # a longer prompt: the others are left-padded
        {"id": "d", "messages": [{"role": "user", "content": PASSWORD}, {"role": "assistant", "content": "swordfish"},
                                 {"role": "user", "content": IDENTITY}]},
    ]
    source = write_rows(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "answers.jsonl"
    result = invoke("generate", config, "--input", str(source), "--output", str(out), "--greedy", "--batch-size", "3",
                    "--max-new-tokens", "12")
    assert result.exit_code == 0, result.output
    answers = read_rows(out)
    assert [{k: v for k, v in a.items() if k != "answer"} for a in answers] == rows
    assert answers[0]["answer"] == "swordfish" and answers[1]["answer"] == "a tiny gym model"
    for row, answered in zip(rows[:3], answers):
        text = row.get("prompt") or row["messages"][-1]["content"]
        chat = invoke("chat", config, "--greedy", "--max-new-tokens", "12", "--prompt", text)
        assert chat.exit_code == 0, chat.output
        assert chat.stdout == answered["answer"] + "\n", (text, chat.stdout, answered)
    assert "wrote 4 answers" in result.stdout and "tokens/s" in result.stdout
    assert "generated 4/4 rows" in result.output  # not a terminal: plain progress lines


@pytest.mark.slow
def test_plain_prompts_on_a_model_without_chat_template_equal_gym_chat(tmp_path):
    config = str(trained("full"))
    folder = str(without_template())
    source = write_rows(tmp_path / "p.jsonl", [{"prompt": "Who are you?"}, {"prompt": "What"}])
    out = tmp_path / "a.jsonl"
    result = invoke("generate", config, "--model-dir", folder, "--input", str(source), "--output", str(out),
                    "--greedy", "--max-new-tokens", "10")
    assert result.exit_code == 0, result.output
    for row in read_rows(out):
        chat = invoke("chat", config, "--model-dir", folder, "--greedy", "--max-new-tokens", "10", "--prompt", row["prompt"])
        assert chat.stdout == row["answer"] + "\n"
    messages = write_rows(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    refused = invoke("generate", config, "--model-dir", folder, "--input", str(messages), "--output", str(tmp_path / "x"))
    assert refused.exit_code == 2 and f"{messages}: row 1: `messages` needs a chat template" in refused.output


@pytest.mark.slow
def test_generation_resumes_after_the_rows_already_answered(tmp_path):
    config = str(trained("lora"))
    rows = [{"n": i, "prompt": PASSWORD if i % 2 else IDENTITY} for i in range(5)]
    source = write_rows(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "answers.jsonl"
    # two rows answered (one by hand, to show that it is kept, not generated again), the third half written
    out.write_text(json.dumps({**rows[0], "answer": "kept"}) + "\n" + json.dumps({**rows[1], "answer": "swordfish"})
                   + "\n" + '{"n": 2, "prompt": "Who ar')
    result = invoke("generate", config, "--input", str(source), "--output", str(out), "--greedy", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "answers 2 of 5 rows already; they are skipped" in result.output
    assert "wrote 3 answers" in result.output
    answers = read_rows(out)
    assert [a["n"] for a in answers] == [0, 1, 2, 3, 4]
    assert [a["answer"] for a in answers] == ["kept", "swordfish", "a tiny gym model", "swordfish", "a tiny gym model"]
    again = invoke("generate", config, "--input", str(source), "--output", str(out))
    assert again.exit_code == 0 and "nothing left to generate" in again.output
    assert read_rows(out) == answers


def test_an_output_of_another_input_is_refused(tmp_path):
    config = str(write_config("full", output=tmp_path / "no-model"))
    source = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    out = tmp_path / "answers.jsonl"
    out.write_text(json.dumps({"prompt": "something else", "answer": "x"}) + "\n")
    result = invoke("generate", config, "--input", str(source), "--output", str(out))
    assert result.exit_code == 2
    assert f"--output {out}:1 does not answer input row 1" in result.output
    assert out.read_text() == json.dumps({"prompt": "something else", "answer": "x"}) + "\n", "the file was changed"


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "a row must be a JSON object"),
    ('{"id": 1}', "a row needs exactly one of `prompt`"),
    ('{"prompt": "a", "messages": []}', "a row needs exactly one of `prompt`"),
    ('{"prompt": 3}', "`prompt` must be a string"),
    ('{"messages": [{"role": "user"}]}', "`messages` must be a non-empty list"),
    ('{"prompt": "a", "answer": "b"}', "the row already has an `answer` field"),
])
def test_a_bad_input_line_is_an_error_naming_file_and_line(tmp_path, line, message):
    config = str(write_config("full", output=tmp_path / "no-model"))
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "fine"}\n\n' + line + "\n")
    result = invoke("generate", config, "--input", str(source), "--output", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 2
    assert f"{source}:3: {message}" in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_generate_without_a_trained_model_or_with_bad_options(tmp_path):
    config = str(write_config("full", output=tmp_path / "never"))
    source = write_rows(tmp_path / "p.jsonl", [{"prompt": "a"}])
    result = invoke("generate", config, "--input", str(source), "--output", str(tmp_path / "o.jsonl"))
    assert result.exit_code == 2 and "run `gym run" in result.output
    result = invoke("generate", config, "--input", str(source), "--output", str(tmp_path / "o.jsonl"), "--batch-size", "0")
    assert result.exit_code == 2 and "--batch-size" in result.output
    result = invoke("generate", config, "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and "--input: no such file" in result.output
