"""The `chat_template` dataset strategy (placeholder: being built)."""

from gym import hookimpl
from gym.datasets_api import DatasetStrategy


@hookimpl
def gym_dataset_strategies():
    return [DatasetStrategy(name="chat_template", builder="gym.prompt_strategies.chat_template:build")]
