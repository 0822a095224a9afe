"""The `user_defined` dataset strategy (placeholder: being built)."""

from gym import hookimpl
from gym.datasets_api import DatasetStrategy


@hookimpl
def gym_dataset_strategies():
    return [DatasetStrategy(name="user_defined", builder="gym.prompt_strategies.user_defined:build")]
