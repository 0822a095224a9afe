"""``eval_task: gsm8k``: GSM8K-style problems from a local file, exact match of the final number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gym import testing
from gym.plugins.numeric_answer import expected_number, final_number, score_answer

# seven word problems, each asked many times: a tiny model learns to repeat their worked answers
PROBLEMS = [(f"Sam has {a} apples and buys {b} more. How many apples does Sam have?", a + b)
            for a, b in [(3, 4), (12, 30), (7, 8), (20, 5), (1, 1), (9, 90), (1200, 34)]]


def gsm8k_rows(problems=PROBLEMS) -> list[dict]:
    return [{"question": q, "answer": f"{q.split()[2]} + {q.split()[6]} = {n}\n#### {n:,}"} for q, n in problems]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    "answer, number",
    [
        ("3 + 4 = 7\n#### 7", "7"),
        ("#### 42", "42"),
        ("The answer is 42.", "42"),
        ("She pays 5 * 8 = 40 dollars. The answer is $1,234.50.", "1234.5"),
        ("so the total is 18", "18"),
        ("#### -3\nQuestion: what is 2 + 5? #### 7", "-3"),  # the model's own answer, not what it rambles on to
        ("The answer is: 18 apples, since 9 * 2 = 18 and 18 - 0 = 18", "18"),
        ("42.0", "42"),
        ("#### 0.50", "0.5"),
        ("I do not know", None),
    ],
)
def test_the_final_number_of_an_answer(answer, number):
    assert final_number(answer) == number


def test_the_expected_number_and_the_score():
    assert expected_number("12 * 3 = 36 apples\n#### 1,036") == "1036"
    assert expected_number("no marker 42") is None
    assert score_answer("1036", "The answer is 1,036.") == {"exact_match": 1.0}
    assert score_answer("1036", "#### 1037") == {"exact_match": 0.0}
    assert score_answer("18", "") == {"exact_match": 0.0}


def config(data: Path, problems_path, output_dir: Path, **extra) -> dict:
    return {"base_model": testing.TINY_MODEL, "output_dir": str(output_dir),
            "datasets": [{"path": str(data), "type": {"field_instruction": "question", "field_output": "answer"}}],
            "eval_task": "gsm8k", "eval_task_path": str(problems_path), **extra}


def test_the_key_is_checked_at_validate(tmp_path):
    from gym.api import ConfigError

    data = write_jsonl(tmp_path / "train.jsonl", gsm8k_rows())
    with pytest.raises(ConfigError, match="eval_task_path.*eval_task: gsm8k needs the file of problems"):
        testing.validate({**config(data, "x", tmp_path), "eval_task_path": None})
    with pytest.raises(ConfigError, match="eval_task_path.*no such file: .*missing.jsonl"):
        testing.validate(config(data, tmp_path / "missing.jsonl", tmp_path))
    with pytest.raises(ConfigError, match="eval_task_path.*is read only by eval_task: gsm8k"):
        testing.validate({**config(data, data, tmp_path), "eval_task": "addition"})
    folder = tmp_path / "two"
    write_jsonl(folder / "a.jsonl", gsm8k_rows())
    write_jsonl(folder / "b.jsonl", gsm8k_rows())
    with pytest.raises(ConfigError, match=r"exactly one .jsonl / .json file \(found: a.jsonl, b.jsonl\)"):
        testing.validate(config(data, folder, tmp_path))


def test_problems_are_read_in_file_order_with_every_layout(tmp_path):
    from gym.plugins.numeric_answer import problems

    data = write_jsonl(tmp_path / "gsm8k" / "test.jsonl", gsm8k_rows())
    cfg = testing.validate(config(data, tmp_path / "gsm8k", tmp_path))  # a folder holding test.jsonl
    found = problems(cfg, 3)
    assert [p.expected for p in found] == ["7", "42", "15"]
    row = found[1].row
    assert row["question"] == row["instruction"] == PROBLEMS[1][0] and row["answer"] == row["output"]
    assert row["messages"][1] == {"role": "assistant", "content": row["answer"]}
    assert len(problems(cfg, 100)) == 7
    assert problems(cfg, 7)[6].expected == "1234"  # "#### 1,234"


def test_a_row_without_the_marker_is_a_data_error_naming_the_line(tmp_path):
    from gym.api import DataError
    from gym.plugins.numeric_answer import problems

    rows = gsm8k_rows()
    rows[2]["answer"] = "15"
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    cfg = testing.validate(config(path, path, tmp_path))
    with pytest.raises(DataError, match=r"bad.jsonl:3: the answer does not end with '#### <number>'"):
        problems(cfg, 10)


@pytest.mark.slow
def test_a_model_trained_on_the_problems_answers_them_and_gym_evaluate_scores_it(tmp_path):
    from gym.plugins.evaluate import evaluate

    data = write_jsonl(tmp_path / "train.jsonl", gsm8k_rows() * 30)
    problems_file = write_jsonl(tmp_path / "test.jsonl", gsm8k_rows())
    cfg = config(data, problems_file, tmp_path / "out", eval_task_max_new_tokens=24, micro_batch_size=8,
                 learning_rate=1e-2, seed=1)
    result = testing.run_config(cfg, steps=80, tmp_path=tmp_path)

    assert result.metrics["gsm8k_exact_match_before"] == 0.0
    assert result.metrics["gsm8k_exact_match"] >= 2 / 7, result.metrics  # 3 of 7 measured (seed 1)
    assert any(note.startswith("gsm8k on 7 problems: exact match 0.0% -> ") for note in result.notes)

    manager = testing.plugin_manager()
    out = evaluate(testing.validate(cfg, manager), manager=manager)
    saved = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert saved["tasks"]["gsm8k"]["exact_match"] == out.tasks["gsm8k"]["exact_match"] == result.metrics["gsm8k_exact_match"]
    example = saved["tasks"]["gsm8k"]["examples"][0]
    assert example["question"] == PROBLEMS[0][0] and example["expected"] == "7"
    assert saved["eval_loss"] is None and saved["metrics"] == {"gsm8k_exact_match": out.tasks["gsm8k"]["exact_match"]}
