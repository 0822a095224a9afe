"""Reward and prompts for examples/grpo-addition.yml: GRPO on builtin:addition.

gym finds this module next to the config (``trl.reward_funcs: [grpo_addition_rewards.correct_sum]``,
``transform: grpo_addition_rewards.addition_prompt``). TRL calls a reward function with the prompts, the sampled
completions and every other dataset column as keyword arguments (here ``answer``, which
:func:`addition_prompt` keeps), and wants one float per completion.
"""


def addition_prompt(row):
    """A builtin:addition row -> the question as a chat prompt (the quickstart's format) and the right answer."""
    return {"prompt": [{"role": "user", "content": row["instruction"]}], "answer": row["output"]}


def _text(completion):
    """A completion is text for text prompts and a list of messages for chat prompts."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


def correct_sum(prompts, completions, answer, **kwargs):
    """1.0 when the completion's first line is exactly the sum, else 0.0."""
    rewards = []
    for completion, expected in zip(completions, answer):
        lines = _text(completion).strip().splitlines()
        rewards.append(1.0 if lines and lines[0].strip() == str(expected) else 0.0)
    return rewards
