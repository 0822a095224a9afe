"""Example third-party plugin for gym.

It contributes one top-level config key, ``qa_answer_prefix``, and one dataset strategy, ``type: qa``, for
rows with a question and an answer column::

    qa_answer_prefix: "A:"
    datasets:
      - path: faq.jsonl
        type: qa
        qa_question_field: question   # optional, this is the default
        qa_answer_field: answer       # optional, this is the default

The prompt ``Q: <question>\\n<prefix> `` is not trained on (unless ``train_on_inputs``); the answer and
the end-of-sequence token are.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gym import hookimpl
from gym.config import ConfigProblem
from gym.datasets_api import DatasetStrategy, RowError


class QAConfig(BaseModel):
    """Top-level keys this plugin adds."""

    model_config = ConfigDict(extra="forbid")

    qa_answer_prefix: str = Field("A:", description="Text written between the question and the answer.")


class QAOptions(BaseModel):
    """Keys a `type: qa` dataset entry accepts."""

    model_config = ConfigDict(extra="forbid")

    qa_question_field: str = Field("question", description="Column holding the question.")
    qa_answer_field: str = Field("answer", description="Column holding the answer.")


@hookimpl
def gym_config_schema():
    return QAConfig


@hookimpl
def gym_validate_config(cfg):
    if cfg.qa_answer_prefix.strip() == "":
        return [ConfigProblem("qa_answer_prefix", "must not be blank")]
    return None


@hookimpl
def gym_dataset_strategies():
    return [
        DatasetStrategy(
            name="qa",
            builder="gym_plugin_qa:QATokenizer",
            options=QAOptions,
            description="question / answer rows",
        )
    ]


class QATokenizer:
    """Turns ``{question, answer}`` rows into ``input_ids`` and ``labels`` (prompt masked with -100)."""

    def __init__(self, tokenizer, cfg, dataset):
        self.tokenizer = tokenizer
        self.prefix = cfg.qa_answer_prefix
        self.question = dataset.qa_question_field
        self.answer = dataset.qa_answer_field
        self.train_on_inputs = cfg.train_on_inputs if dataset.train_on_inputs is None else dataset.train_on_inputs

    def tokenize_batch(self, rows: dict[str, list]) -> dict[str, list]:
        for column in (self.question, self.answer):
            if column not in rows:
                raise RowError(f"column {column!r} not found (columns: {', '.join(rows)})", field=column)
        prompts = [f"Q: {q}\n{self.prefix} " for q in rows[self.question]]
        answers = [str(a) for a in rows[self.answer]]
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        answer_ids = self.tokenizer(answers, add_special_tokens=False)["input_ids"]
        eos = [self.tokenizer.eos_token_id]
        input_ids, labels = [], []
        for p, a in zip(prompt_ids, answer_ids):
            input_ids.append(p + a + eos)
            labels.append((p if self.train_on_inputs else [-100] * len(p)) + a + eos)
        return {"input_ids": input_ids, "labels": labels}
