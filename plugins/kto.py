"""The kto plugin: ``rl: kto`` (Kahneman-Tversky optimisation) on TRL's ``KTOTrainer``.

KTO learns from single completions labelled desirable or not (``prompt`` / ``completion`` / ``label``), not
pairs. The dataset types of :mod:`gym.prompt_strategies.preference` (``chatml.intel``, ``passthrough``,
``user_defined.default``, ...) read that layout when ``rl: kto``. The reference model is as for DPO: with an
adapter the base (TRL's frozen copy of the untrained adapter), with full fine-tuning a frozen copy of the base.
Every hook returns ``None`` unless ``rl: kto``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import Field

from gym.api import ConfigProblem, StrictConfig, TrainingMethod, hookimpl
from gym.plugins.preference import CheckedTextRows

NAME = "kto"
COLUMNS = ("prompt", "completion", "label")
_FATE = "_fate"
DROP_REASONS = {1: "with no completion", 2: "with no label", 3: "with an empty prompt", 4: "longer than sequence_len",
                5: "with a prompt as long as sequence_len"}
_TRUNCATED = 10


class KtoSettings(StrictConfig):
    """Keys of the kto plugin."""

    kto_desirable_weight: Optional[float] = Field(
        None, gt=0, description="rl: kto: weight of the desirable completions' loss (TRL default 1.0)."
    )
    kto_undesirable_weight: Optional[float] = Field(
        None, gt=0, description="rl: kto: weight of the undesirable completions' loss (TRL default 1.0)."
    )


@hookimpl
def gym_config_schema():
    return KtoSettings


@hookimpl
def gym_validate_config(cfg):
    if getattr(cfg, "rl", None) != NAME:
        problems = [ConfigProblem(key, "used only with rl: kto") for key in ("kto_desirable_weight",
                                                                              "kto_undesirable_weight")
                    if getattr(cfg, key) is not None]
        return problems or None
    problems = []
    if getattr(cfg, "sample_packing", False):
        problems.append(ConfigProblem("sample_packing", "rl: kto trains on prompt / completion rows that TRL batches "
                                      "itself; packing them is not supported, set sample_packing: false"))
    if cfg.micro_batch_size < 2:
        problems.append(ConfigProblem("micro_batch_size", "KTO estimates its KL term from the other rows of a batch; "
                                      "TRL needs micro_batch_size of 2 or more"))
    return problems or None


@hookimpl
def gym_training_method(cfg):
    if getattr(cfg, "rl", None) != NAME:
        return None
    arguments: dict[str, Any] = {"max_length": cfg.sequence_len}
    if cfg.rl_beta is not None:
        arguments["beta"] = cfg.rl_beta
    if cfg.kto_desirable_weight is not None:
        arguments["desirable_weight"] = cfg.kto_desirable_weight
    if cfg.kto_undesirable_weight is not None:
        arguments["undesirable_weight"] = cfg.kto_undesirable_weight
    if getattr(cfg, "precompute_ref_log_probs", None) is not None:
        arguments["precompute_ref_log_probs"] = cfg.precompute_ref_log_probs
    return TrainingMethod(
        name=NAME,
        build_trainer=build_trainer,
        arguments_class="trl:KTOConfig",
        arguments=arguments,
        data_shape=KtoRows(cfg),
        description="KTO (TRL's KTO trainer) on prompt / completion / label rows",
    )


class KtoRules:
    def __init__(self, tokenizer: Any, sequence_len: int, truncate: bool):
        self.tokenizer, self.sequence_len, self.truncate = tokenizer, sequence_len, truncate
        self.eos = getattr(tokenizer, "eos_token", None) or ""

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        fates = []
        for prompt, completion, label in zip(batch["prompt"], batch["completion"], batch["label"]):
            if completion is None or not completion.strip():
                fate = 1
            elif label is None:
                fate = 2
            elif prompt is None or not prompt.strip():
                fate = 3
            elif self.tokenizer is None:
                fate = 0
            else:
                text = prompt + completion
                length = len(self.tokenizer(text)["input_ids"]) + (0 if self.eos and text.endswith(self.eos) else 1)
                fate = 0
                if length > self.sequence_len:
                    if not self.truncate:
                        fate = 4
                    elif len(self.tokenizer(prompt)["input_ids"]) >= self.sequence_len:
                        fate = 5
                    else:
                        fate = _TRUNCATED
            fates.append(fate)
        return {_FATE: fates}


class KtoRows(CheckedTextRows):
    """Text ``prompt`` / ``completion`` and a boolean ``label``; unusable rows dropped and counted."""

    columns = COLUMNS
    rules = KtoRules
    drop_reasons = DROP_REASONS
    checking = "Checking KTO rows"

    def rows(self, dataset: Any, split: str, work: Path, tokenizer: Any = None) -> tuple[Any, dict[str, Any]]:
        desirable = int(sum(dataset["label"])) if len(dataset) else 0
        return dataset.select_columns(list(COLUMNS)), {"desirable": desirable, "undesirable": len(dataset) - desirable}

    def describe(self, split: str, samples: int, rows: int, figures: dict[str, Any]) -> str:
        return (f"{split}: {rows:,} KTO rows ({figures.get('desirable', 0):,} desirable, "
                f"{figures.get('undesirable', 0):,} undesirable)")


def build_trainer(parts: Any) -> Any:
    from trl import KTOTrainer

    from gym.plugins.preference import build_with_reference

    return build_with_reference(KTOTrainer, parts, NAME)


@hookimpl
def gym_model_card(cfg, model):
    if getattr(cfg, "rl", None) != NAME:
        return None
    from gym.plugins.preference import model_card_section

    settings = {"trainer": "trl.KTOTrainer", "beta": cfg.rl_beta if cfg.rl_beta is not None else "0.1 (TRL default)",
                "desirable_weight": cfg.kto_desirable_weight, "undesirable_weight": cfg.kto_undesirable_weight,
                "max_length": cfg.sequence_len}
    return {"tags": [NAME, "trl"], "packages": ["trl"],
            "sections": [model_card_section("Preference training (kto)", settings, "Trained with KTO.")]}
