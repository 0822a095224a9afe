"""The reward_model plugin: ``reward_model: true`` trains a reward model on preference pairs with TRL's
``RewardTrainer`` (Bradley-Terry loss: the chosen response must score above the rejected one).

The model is loaded as ``AutoModelForSequenceClassification`` with one output (``num_labels: 1``; a new,
randomly initialised ``score`` head on a causal LM checkpoint); ``model_type`` defaults to that class when
``reward_model`` is set. Rows are the preference pairs of the dpo plugin's dataset types (``chatml.intel``,
``passthrough``, ...). Every hook returns ``None`` unless ``reward_model: true``.
"""

from __future__ import annotations

import importlib.util

from typing import Optional

from pydantic import Field, model_validator

from gym.api import ConfigProblem, StrictConfig, TrainingMethod, hookimpl

NAME = "reward_model"
SEQUENCE_CLASSIFIER = "AutoModelForSequenceClassification"


class RewardModelSettings(StrictConfig):
    """Keys of the reward_model plugin."""

    reward_model: Optional[bool] = Field(
        None, description="Train a reward model (a sequence classifier scoring responses) on preference pairs "
        "instead of a language model."
    )
    num_labels: Optional[int] = Field(
        None, ge=1, description="Outputs of the reward model's head; TRL's reward trainer needs 1 (the default)."
    )
    center_rewards_coefficient: Optional[float] = Field(
        None, ge=0, description="Weight of a penalty on the squared mean reward, pushing rewards towards zero mean."
    )

    @model_validator(mode="after")
    def _classifier_by_default(self):
        """``reward_model: true`` loads a sequence classifier unless ``model_type`` names a class."""
        if self.reward_model and getattr(self, "model_type", "absent") is None:
            object.__setattr__(self, "model_type", SEQUENCE_CLASSIFIER)
        return self


@hookimpl
def gym_config_schema():
    return RewardModelSettings


@hookimpl
def gym_validate_config(cfg):
    if not cfg.reward_model:
        problems = [ConfigProblem(key, "used only with reward_model: true")
                    for key in ("num_labels", "center_rewards_coefficient") if getattr(cfg, key) is not None]
        return problems or None
    problems = []
    if importlib.util.find_spec("trl") is None:
        problems.append(ConfigProblem("reward_model", "trains with TRL, which is not installed: pip install 'gym-llm[rl]'"))
    if getattr(cfg, "rl", None):
        problems.append(ConfigProblem("reward_model", f"trains a reward model; it cannot be combined with rl: {cfg.rl}"))
    if cfg.num_labels not in (None, 1):
        problems.append(ConfigProblem("num_labels", "TRL's reward trainer needs one output (a scalar reward); set "
                                      "num_labels: 1 or leave it out"))
    if cfg.model_type and "SequenceClassification" not in cfg.model_type:
        problems.append(ConfigProblem("model_type", f"a reward model is a sequence classifier; use model_type: "
                                      f"{SEQUENCE_CLASSIFIER} (or leave it out)"))
    if getattr(cfg, "sample_packing", False):
        problems.append(ConfigProblem("sample_packing", "reward_model trains on chosen / rejected pairs that TRL batches "
                                      "itself; packing them is not supported, set sample_packing: false"))
    if getattr(cfg, "adapter", None) and "score" not in (getattr(cfg, "lora_modules_to_save", None) or ()):
        problems.append(ConfigProblem("lora_modules_to_save", "a reward model's head (score) is new: with an adapter "
                                      "it must train and be saved too; add lora_modules_to_save: [score]"))
    return problems or None


@hookimpl
def gym_after_model_load(cfg, model):
    """A causal LM checkpoint loads as a classifier with a new head of ``config.num_labels`` (2 by default)
    outputs: give it one output, the reward."""
    if not cfg.reward_model or getattr(model.config, "num_labels", 1) == 1:
        return
    import torch

    from gym.api import ModelError

    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise ModelError(f"reward_model: {type(model).__name__} has no linear `score` head to give one output")
    new = torch.nn.Linear(head.in_features, 1, bias=head.bias is not None, dtype=head.weight.dtype,
                          device=head.weight.device)
    new.weight.data.normal_(0.0, getattr(model.config, "initializer_range", 0.02))
    if new.bias is not None:
        new.bias.data.zero_()
    model.score = new
    model.config.num_labels = 1


@hookimpl
def gym_training_method(cfg):
    if not getattr(cfg, "reward_model", None) or getattr(cfg, "rl", None):
        return None
    from gym.plugins.preference import PreferenceRows

    arguments = {"max_length": cfg.sequence_len}
    if cfg.center_rewards_coefficient is not None:
        arguments["center_rewards_coefficient"] = cfg.center_rewards_coefficient
    return TrainingMethod(
        name=NAME,
        build_trainer="gym.plugins.reward_model:build_trainer",
        arguments_class="trl:RewardConfig",
        arguments=arguments,
        data_shape=PreferenceRows(cfg),
        description="a reward model (TRL's reward trainer) on prompt / chosen / rejected pairs",
    )


def build_trainer(parts):
    from trl import RewardTrainer

    from gym.plugins.preference import figures_callback

    model = parts.model
    if model.config.pad_token_id is None and parts.tokenizer.pad_token_id is not None:
        model.config.pad_token_id = parts.tokenizer.pad_token_id  # the classifier finds each row's last token by it
    return RewardTrainer(
        model=model,
        args=parts.args,
        data_collator=parts.train_collator,
        train_dataset=parts.train_dataset,
        eval_dataset=parts.eval_dataset,
        processing_class=parts.tokenizer,
        callbacks=[*parts.callbacks, figures_callback(NAME)],
    )


@hookimpl
def gym_model_card(cfg, model):
    if not cfg.reward_model:
        return None
    from gym.plugins.preference import model_card_section

    settings = {"trainer": "trl.RewardTrainer", "model class": cfg.model_type, "num_labels": 1,
                "center_rewards_coefficient": cfg.center_rewards_coefficient, "max_length": cfg.sequence_len}
    return {"tags": ["reward-model", "trl"], "packages": ["trl"],
            "sections": [model_card_section("Reward model", settings,
                                            "Scores a prompt and response; higher is preferred.")]}
