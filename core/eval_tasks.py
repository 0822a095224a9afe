"""Task evaluations: problems a model answers by generating, and a scorer for its answers.

A plugin registers tasks through ``gym_eval_tasks``; configs name them (the evaluation plugin's ``eval_task``
key), and the evaluation plugin generates greedy answers and scores them, before and after training and in
``gym evaluate``. This module holds only the task type and the registry: what a task is, and which are
installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

from gym.errors import PluginError


@dataclass(frozen=True)
class EvalProblem:
    """One problem: the row the prompt is made from, and the answer expected.

    ``row`` holds the columns a dataset strategy reads; the prompt is the part of the strategy's output that
    is not trained on. Giving the common layouts at once (``instruction`` / ``input`` / ``output``,
    ``messages``, ``text``) lets the prompts follow whatever dataset type the config trains with. ``question``
    is the plain text shown in examples and used when no dataset entry can make the prompt.
    """

    question: str
    expected: str
    row: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalTask:
    """A task evaluation a config names by ``name``.

    - ``problems(cfg, count)``: up to ``count`` :class:`EvalProblem` (the same ones each time).
    - ``score(expected, answer)``: ``{metric: value in [0, 1]}`` for one answer (the generated text, cut at the
      first special token); each metric is averaged over the problems. The first metric is the headline.
    - ``max_new_tokens``: tokens generated per answer (an int, or a function of ``cfg``).
    - ``prompt_entry(cfg)``: the ``datasets`` entry whose type makes the prompts (default: the first).
    - ``unit``: what the problems are called in messages ("held-out problems").
    """

    name: str
    description: str
    problems: Callable[[Any, int], list[EvalProblem]]
    score: Callable[[str, str], dict[str, float]]
    max_new_tokens: Union[int, Callable[[Any], int]] = 32
    prompt_entry: Union[Callable[[Any], Any], None] = None
    unit: str = "problems"

    def tokens_for(self, cfg: Any) -> int:
        return self.max_new_tokens(cfg) if callable(self.max_new_tokens) else int(self.max_new_tokens)

    def entry_for(self, cfg: Any) -> Any:
        if self.prompt_entry is not None:
            return self.prompt_entry(cfg)
        return cfg.datasets[0] if cfg.datasets else None


def eval_tasks(manager: Any = None) -> dict[str, EvalTask]:
    """Every installed task by name (``gym_eval_tasks`` of every plugin); a name registered twice is an error
    naming both plugins."""
    from gym.plugin_manager import get_plugin_manager

    manager = manager or get_plugin_manager()
    found: dict[str, tuple[EvalTask, str]] = {}
    for plugin_name, result in manager.call_each("gym_eval_tasks"):
        for task in result or ():
            if not isinstance(task, EvalTask):
                raise PluginError(f"gym_eval_tasks: {manager.describe(plugin_name)} returned {task!r}, not an EvalTask")
            if task.name in found:
                raise PluginError(
                    f"gym_eval_tasks: the task {task.name!r} is registered by {manager.describe(found[task.name][1])} "
                    f"and by {manager.describe(plugin_name)}"
                )
            found[task.name] = (task, plugin_name)
    return {name: task for name, (task, _) in found.items()}
