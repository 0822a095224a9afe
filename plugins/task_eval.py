"""The task_eval plugin: ``eval_task: addition`` scores greedy answers before and after training.

The score (exact match and per-digit accuracy on held-out problems that never appear in the training
rows) is printed when training starts and ends, and joins the final metrics in the summary and the
model card. The work is done by :mod:`gym.task_eval`; nothing heavy is imported here.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from gym import hookimpl


class TaskEvalConfig(BaseModel):
    """Keys of the task_eval plugin."""

    model_config = ConfigDict(extra="forbid")

    eval_task: Optional[Literal["addition"]] = Field(
        None,
        description="Score the model's greedy answers on held-out problems of a built-in task (addition) "
        "before and after training; prompts follow the first dataset's type.",
    )
    eval_task_samples: int = Field(200, ge=1, le=100_000, description="Held-out problems scored by eval_task.")


@hookimpl
def gym_config_schema():
    return TaskEvalConfig


@hookimpl
def gym_callbacks(cfg):
    if not cfg.eval_task:
        return None
    from gym.task_eval import make_callback

    return [make_callback(cfg)]
