"""The hooks every gym plugin can implement.

A plugin is a module (or any object) registered under the ``gym.plugins`` entry-point group whose
functions are marked with :data:`gym.hookimpl`. Each hook below says *when* gym calls it, *with what*,
and *how the results of several plugins combine*:

- "all results" hooks return a value from every plugin that implements them; gym merges them as the
  docstring says (``None`` results are ignored).
- "first result" hooks stop at the first plugin that returns something other than ``None``. Plugins
  registered later are asked first; a built-in default marks itself ``trylast=True`` so that a third
  party's answer wins.

A plugin acts only when the configuration asks for its feature: every hook taking ``cfg`` should return
``None`` (or do nothing) unless its own keys are set. Hook functions may declare only the arguments they
use, in any order (pluggy passes them by name).

The hooks run in this order for ``gym run``::

    gym_config_schema          (composing the config model, also for validate / config schema)
    gym_validate_config        (after pydantic validation)
    gym_dataset_strategies     (collecting the ``datasets[].type`` registry)
    gym_before_model_load      (monkeypatches, environment)
    gym_model_load_kwargs      (kwargs for from_pretrained)
    gym_after_model_load       (freezing, resizing, casting)
    gym_wrap_model             (adapters)
    gym_data_collator          (batching)
    gym_trainer_class          (which trainer and arguments class)
    gym_training_arguments     (extra TrainingArguments)
    gym_trainer_kwargs         (extra trainer constructor arguments)
    gym_callbacks              (trainer callbacks)
    gym_after_train            (merge, export, push)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # never imported at run time: commands that do not train must not import torch
    from pydantic import BaseModel

    from gym.config import GymConfig, ConfigProblem
    from gym.datasets_api import DatasetStrategy
    from gym.trainer_api import TrainerChoice

PROJECT_NAME = "gym"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------------------------- config


@hookspec
def gym_config_schema() -> type[BaseModel] | None:
    """Contribute a Pydantic model whose fields become top-level config keys.

    Called once, when gym composes the config model (for every command, including ``validate`` and
    ``config schema``). The model's fields are flat keys (``lora_r``, not ``lora.r``); give each a
    ``description`` and a default so that a config that does not use the feature needs none of them.
    Use ``model_config = ConfigDict(extra="forbid")``. Field validators on the fragment run as part of
    config validation.

    All results are collected. Two plugins contributing the same key is an error naming both.
    """


@hookspec
def gym_validate_config(cfg: GymConfig) -> list[ConfigProblem] | None:
    """Check rules across fields after the whole config validated field by field.

    Called once per ``validate`` / ``run`` / ``preprocess``, with the typed config. Return a list of
    :class:`gym.config.ConfigProblem` (each naming the offending field) or ``None``. Do not raise.

    All results are collected; every problem from every plugin is reported together.
    """


# -------------------------------------------------------------------------------------------- datasets


@hookspec
def gym_dataset_strategies() -> list[DatasetStrategy] | None:
    """Register dataset strategies by the name users write in ``datasets[].type``.

    Called once, when gym composes the config model (a strategy's ``options`` model adds the keys
    it accepts in a dataset entry) and again when datasets are prepared. Return a list of
    :class:`gym.datasets_api.DatasetStrategy`. The strategy's builder is imported lazily, so
    registering one costs nothing for commands that do not tokenize.

    All results are collected. Two strategies with the same name is an error naming both plugins.
    """


@hookspec(firstresult=True)
def gym_data_collator(cfg: GymConfig, tokenizer: Any, training: bool) -> Any | None:
    """Return the callable that turns a list of tokenized rows into a batch.

    Called while the trainer is built, once for training (``training=True``) and once for evaluation.
    Rows hold ``input_ids`` and ``labels`` and, for packed rows, ``position_ids``.

    First result wins; the built-in SFT plugin's padding / packing collator is the fallback.
    """


# ----------------------------------------------------------------------------------------------- model


@hookspec
def gym_before_model_load(cfg: GymConfig) -> None:
    """Patch libraries before the model is built (kernel monkeypatches such as Liger's).

    Called once, after the tokenizer is loaded and before ``from_pretrained``. Return nothing.
    All implementations are called.
    """


@hookspec
def gym_model_load_kwargs(cfg: GymConfig) -> dict[str, Any] | None:
    """Contribute keyword arguments for ``AutoModelForCausalLM.from_pretrained``.

    Called once, just before the model is loaded. Typical keys: ``attn_implementation``,
    ``quantization_config``, ``dtype``, ``device_map``.

    All results are collected and merged into gym's defaults; a plugin's value replaces the default,
    and two plugins setting the same key to different values is an error naming both.
    """


@hookspec
def gym_after_model_load(cfg: GymConfig, model: Any, tokenizer: Any) -> None:
    """Change the loaded model in place: freeze layers (Spectrum), cast, prepare for k-bit training.

    Called once, after the model is loaded (and its embeddings resized for new tokens) and before an
    adapter wraps it. All implementations are called.
    """


@hookspec(firstresult=True)
def gym_wrap_model(cfg: GymConfig, model: Any) -> Any | None:
    """Wrap the model with an adapter (LoRA, QLoRA, DoRA) and return the wrapped model.

    Called once, after :func:`gym_after_model_load`. First result wins; ``None`` leaves the model
    as it is (full fine-tuning).
    """


# -------------------------------------------------------------------------------------------- training


@hookspec(firstresult=True)
def gym_trainer_class(cfg: GymConfig) -> TrainerChoice | None:
    """Choose the trainer class and its arguments class (SFT, DPO, KTO, ORPO, GRPO, ...).

    Called once, when the trainer is built. Return a :class:`gym.trainer_api.TrainerChoice`.
    First result wins; the built-in SFT plugin answers last.
    """


@hookspec
def gym_training_arguments(cfg: GymConfig) -> dict[str, Any] | None:
    """Contribute keyword arguments for the arguments class that :func:`gym_trainer_class` chose.

    Called once, after gym has mapped the core config keys to ``TrainingArguments`` keys. Typical
    keys: ``report_to``, ``deepspeed``, ``beta`` (DPO). All results are merged over gym's values;
    two plugins setting one key to different values is an error naming both.
    """


@hookspec
def gym_trainer_kwargs(cfg: GymConfig, model: Any, tokenizer: Any) -> dict[str, Any] | None:
    """Contribute keyword arguments for the trainer's constructor (a reference model, reward functions).

    Called once, right before the trainer is constructed. All results are merged; conflicts are
    errors naming both plugins.
    """


@hookspec
def gym_callbacks(cfg: GymConfig) -> list[Any] | None:
    """Return ``transformers.TrainerCallback`` instances to add to the trainer.

    Called once, when the trainer is built. All results are collected, in plugin order.
    """


@hookspec
def gym_after_train(cfg: GymConfig, model: Any, tokenizer: Any, output_dir: str) -> None:
    """Act on the trained model after it is saved to ``output_dir`` (merge an adapter, export, push).

    Called once, on the main process, after training finished and the final model was written.
    All implementations are called.
    """
