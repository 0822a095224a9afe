"""The sft plugin: supervised fine-tuning on gym's prepared rows (the default trainer and collator).

Both hooks answer last (``trylast=True``), so any other plugin that picks a trainer (DPO, ...) or a
collator wins. Nothing heavy is imported until a hook runs.
"""

from __future__ import annotations

from gym import hookimpl


@hookimpl(trylast=True)
def gym_trainer_class(cfg):
    from transformers import TrainingArguments

    from gym.sft_trainer import GymTrainer
    from gym.trainer_api import TrainerChoice

    return TrainerChoice(name="sft", trainer_class=GymTrainer, arguments_class=TrainingArguments)


@hookimpl(trylast=True)
def gym_data_collator(cfg, tokenizer, training):
    from gym.data.collator import GymCollator

    return GymCollator.for_config(cfg, tokenizer, training)


@hookimpl
def gym_validate_config(cfg):
    """Training-loop values gym cannot honour (optimizer and scheduler names, save / eval settings)."""
    from gym.config import ConfigProblem
    from gym.training_options import training_problems

    return [ConfigProblem(name, message) for name, message in training_problems(cfg)]
