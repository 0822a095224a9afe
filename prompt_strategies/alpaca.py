"""The `alpaca` dataset strategy (placeholder: being built)."""

from gym import hookimpl
from gym.datasets_api import DatasetStrategy


@hookimpl
def gym_dataset_strategies():
    return [DatasetStrategy(name="alpaca", builder="gym.prompt_strategies.alpaca:build")]
