"""Example third-party plugin for gym, written only against ``gym.api``.

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

from gym.api import ConfigProblem, DatasetStrategy, StrictConfig, hookimpl
from gym.api import SegmentEncoder, column, text_at, train_on_inputs_for  # the strategy toolkit

# Strict (unknown keys are errors), and each field's docstring is its description in `gym config schema`.
DOCUMENTED = {**StrictConfig.model_config, "use_attribute_docstrings": True}


class QAConfig(StrictConfig):
    """Top-level keys this plugin adds."""

    model_config = DOCUMENTED
    qa_answer_prefix: str = "A:"
    """Text written between the question and the answer."""


class QAOptions(StrictConfig):
    """Keys a ``type: qa`` dataset entry accepts."""

    model_config = DOCUMENTED
    qa_question_field: str = "question"
    """Column holding the question."""
    qa_answer_field: str = "answer"
    """Column holding the answer."""


@hookimpl
def gym_config_schema():
    return QAConfig


@hookimpl
def gym_validate_config(cfg):
    if not cfg.qa_answer_prefix.strip():
        return [ConfigProblem("qa_answer_prefix", "must not be blank")]
    return None


@hookimpl
def gym_dataset_strategies():
    return [DatasetStrategy("qa", f"{__name__}:QAStrategy", options=QAOptions, description="question / answer rows")]


class QAStrategy:
    """``{question, answer}`` rows -> ``input_ids`` and ``labels`` (the prompt masked with -100)."""

    def __init__(self, tokenizer, cfg, dataset):
        self.encoder = SegmentEncoder(tokenizer)
        self.prefix = cfg.qa_answer_prefix
        self.question, self.answer = dataset.qa_question_field, dataset.qa_answer_field
        self.train_prompt = train_on_inputs_for(cfg, dataset)

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        questions, answers = column(rows, self.question), column(rows, self.answer)
        samples = [
            [(f"Q: {text_at(questions, i, self.question)}\n{self.prefix} ", self.train_prompt),
             (text_at(answers, i, self.answer), True)]
            for i in range(len(questions))
        ]
        return self.encoder.encode(samples, eos=[True] * len(samples))  # the EOS token is trained too
