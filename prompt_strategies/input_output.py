"""The `input_output` dataset strategy (placeholder: being built)."""

from gym import hookimpl
from gym.datasets_api import DatasetStrategy


@hookimpl
def gym_dataset_strategies():
    return [DatasetStrategy(name="input_output", builder="gym.prompt_strategies.input_output:build")]
