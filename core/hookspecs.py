"""The hooks every gym plugin can implement.

A plugin is a module (or any object) registered under the ``gym.plugins`` entry-point group whose
functions are marked with :data:`gym.api.hookimpl`. Each hook below says *when* gym calls it, *with
what*, and *how the results of several plugins combine*:

- **all results**: every plugin that implements the hook is called; ``None`` results are ignored and the
  rest are combined as the hook says (dicts merged, lists concatenated).
- **first result**: plugins are asked one by one and the first answer that is not ``None`` wins. Plugins
  registered later are asked first: gym registers its own plugins first and third-party plugins after
  them (each group sorted by entry-point name), so a third party's answer wins over a built-in one
  whatever the names. Built-in defaults are also marked ``trylast=True``.

Hooks are called through pluggy, so ``wrapper=True`` implementations work as pluggy documents. A plugin
acts only when the configuration asks for its feature: a hook that gets ``cfg`` returns ``None`` (or does
nothing) unless its own keys are set. Implementations may declare only the arguments they use, in any
order (pluggy passes them by name).

A run is a short sequence of phases; the hooks of each phase, in the order ``gym run`` calls them::

    config    gym_config_schema, gym_dataset_strategies, gym_dataset_type, gym_validate_config,
              gym_training_method
    launch    gym_run_options, gym_launch
    data      gym_builtin_datasets, gym_data_settings        (strategies and the method's DataShape run here)
    trainer   gym_training_arguments                          (before the model: ZeRO-3 needs them early)
    model     gym_builtin_models, gym_model_class, gym_before_model_load, gym_model_load_kwargs,
              gym_after_model_load, gym_wrap_model, gym_after_wrap_model
    trainer   gym_data_collator, gym_callbacks                (then TrainingMethod.build_trainer)
    train     (the trainer's own loop)
    outputs   gym_model_card, gym_after_train

``gym_register_commands`` runs when the ``gym`` command starts, before any of these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # never imported at run time: commands that do not train must not import torch
    import click
    from pydantic import BaseModel

    from gym.config import ConfigProblem
    from gym.datasets_api import BuiltinDataset, DatasetStrategy
    from gym.eval_tasks import EvalTask
    from gym.methods import TrainingMethod
    from gym.schema import CoreConfig

PROJECT_NAME = "gym"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------------------------- config


@hookspec
def gym_config_schema() -> type[BaseModel] | None:
    """Contribute a Pydantic model whose fields become top-level config keys.

    When: once, while gym composes the config model, for every command (``validate`` and ``config schema``
    included).

    Returns: a model class (subclass :class:`gym.api.StrictConfig`) whose fields are flat keys (``lora_r``,
    not ``lora.r``), each with a ``description`` and a default, so a config that does not use the feature
    needs none of them. Field validators run as part of config validation.

    Combines: all results; two plugins contributing the same key is an error naming both.
    """


@hookspec
def gym_validate_config(cfg: CoreConfig) -> list[ConfigProblem] | None:
    """Check rules across fields after the whole config validated field by field.

    When: once per ``validate`` / ``run`` / ``preprocess``, after the core's own rules passed.

    Args:
        cfg: the validated config (the core's keys and every plugin's keys, as attributes).

    Returns: a list of :class:`gym.api.ConfigProblem`, each naming the field to fix, or ``None``. Do not
    raise.

    Combines: all results; every problem from every plugin is reported together, with its YAML line.
    """


@hookspec(firstresult=True)
def gym_training_method(cfg: CoreConfig) -> TrainingMethod | None:
    """Say which training method this config asks for, and how it builds its trainer.

    When: at validation (the method's name decides which dataset types fit) and at the start of the data,
    trainer and output phases. Keep it cheap: import nothing heavy here; name the trainer builder and the
    arguments class as functions or ``"module:attribute"`` strings that are loaded when used.

    Args:
        cfg: the validated config.

    Returns: a :class:`gym.api.TrainingMethod` when the config asks for this plugin's method (``rl: dpo``,
    say), else ``None``.

    Combines: first result; the built-in ``sft`` plugin answers last.
    """


# ------------------------------------------------------------------------------------------- commands


@hookspec
def gym_register_commands(cli: click.Group) -> None:
    """Add commands to the ``gym`` command line (``gym merge-lora``, ``gym chat``, ...).

    When: once, when the ``gym`` command starts and needs its list of commands. Import nothing heavy at
    module level or here: put torch and friends inside the command's body.

    Args:
        cli: the ``gym`` click group; call ``cli.command()`` / ``cli.add_command(...)`` on it.

    Combines: all implementations are called. A command name that is already taken is an error naming the
    plugin.
    """


@hookspec
def gym_run_options() -> list[click.Option] | None:
    """Add command-line options to ``gym run`` and ``gym train`` (``--nproc-per-node``).

    When: as ``gym run`` or ``gym train`` is looked up, before its arguments are parsed (so ``gym run --help``
    lists them). Each option's value reaches :func:`gym_launch` in ``options``, by the option's parameter name.

    Returns: ``click.Option`` objects. Combines: all implementations are called and the lists concatenated.
    """


@hookspec(firstresult=True)
def gym_launch(cfg: CoreConfig, argv: list[str], options: dict[str, Any]) -> int | None:
    """Decide how ``gym run`` starts its processes.

    When: once, after the config validated and before anything heavy, in the process the user started.

    Args:
        cfg: the validated config.
        argv: the arguments ``gym`` was started with (``["run", "cfg.yml", "lora_r=8"]``), so that a
            launcher can start the same command in other processes.
        options: the values of the options plugins added with :func:`gym_run_options`
            (``{"nproc_per_node": 2}``).

    Returns: ``None`` to train in this process (the default), or the exit status of the processes the
    plugin started and waited for (say, ``torch.distributed.run`` over N workers); this process then trains
    nothing. The started processes must be able to tell that they are workers (for example from
    ``LOCAL_RANK``) and answer ``None`` there.

    Combines: first result.
    """


# -------------------------------------------------------------------------------------------- datasets


@hookspec
def gym_dataset_strategies() -> list[DatasetStrategy] | None:
    """Register dataset strategies by the name users write in ``datasets[].type``.

    When: once, while gym composes the config model (a strategy's ``options`` add the keys its dataset
    entries accept), and again when data is prepared.

    Returns: a list of :class:`gym.api.DatasetStrategy`. Each names its builder by import path (nothing
    heavy is imported until data is prepared), the columns its rows carry, and the training methods it
    serves.

    Combines: all results; two strategies with the same name is an error naming both plugins.
    """


@hookspec
def gym_dataset_type(type_name: str, method: str | None) -> DatasetStrategy | None:
    """Read a ``datasets[].type`` that no registered strategy has, such as a function of the user's named
    ``module.function``.

    When: whenever a dataset entry's type is looked up (``validate``, data preparation, ``eval_task`` prompts) and
    no strategy registered with :func:`gym_dataset_strategies` serves ``method`` under ``type_name``.

    Args:
        type_name: the ``type`` the entry names.
        method: the name of the config's training method (``None`` when it is not known).

    Returns: the :class:`gym.api.DatasetStrategy` that reads the type (its ``name`` is ``type_name``), or
    ``None`` when the type is not this plugin's. Check that what it names exists in
    :func:`gym_validate_config`, where the config's folder is known.

    Combines: first result.
    """


@hookspec
def gym_builtin_datasets() -> list[BuiltinDataset] | None:
    """Register generated datasets that configs name as ``path: builtin:<name>``.

    When: when a ``builtin:`` dataset path is read, fingerprinted or checked.

    Returns: a list of :class:`gym.api.BuiltinDataset` (a name, a description and the function that writes
    the rows to a file).

    Combines: all results; a name registered twice is an error.
    """


@hookspec
def gym_data_settings(cfg: CoreConfig) -> dict[str, Any] | None:
    """Name the config values that change what a prepared row looks like (part of the cache key).

    When: whenever the prepared-data fingerprint is computed (``gym run``, ``gym preprocess``).

    Args:
        cfg: the validated config.

    Returns: ``{key: value}`` for every value of this plugin's keys that changes prepared rows (a
    strategy's ``eot_tokens``, a method's ``sequence_len`` or ``sample_packing``). Leaving one out means
    two configs that differ in it share a cache entry: a stale cache.

    Combines: all results, merged into one dict; two plugins giving one key different values is an error.
    """


@hookspec(firstresult=True)
def gym_data_collator(cfg: CoreConfig, tokenizer: Any, training: bool) -> Any | None:
    """Replace the collator the training method's data shape would use.

    When: while the trainer is built, once for training and once for evaluation.

    Args:
        cfg: the validated config.
        tokenizer: the loaded tokenizer (or processor).
        training: ``True`` for the training batches, ``False`` for evaluation.

    Returns: a callable turning a list of prepared rows into a batch, or ``None`` to keep the method's own
    (:meth:`gym.api.DataShape.collator`).

    Combines: first result.
    """


# ----------------------------------------------------------------------------------------------- model


@hookspec
def gym_before_model_load(cfg: CoreConfig) -> None:
    """Patch libraries before the model is built (kernel monkeypatches such as Liger's).

    When: once per model built (training, merging, ...), after the tokenizer is loaded and before
    ``from_pretrained``.

    Args:
        cfg: the validated config.

    Combines: all implementations are called; results are ignored.
    """


@hookspec
def gym_model_load_kwargs(cfg: CoreConfig) -> dict[str, Any] | None:
    """Contribute keyword arguments for ``from_pretrained``.

    When: once per model built, just before it is loaded. Typical keys: ``attn_implementation``,
    ``quantization_config``, ``dtype``, ``device_map``.

    Args:
        cfg: the validated config.

    Combines: all results, merged over gym's defaults: a plugin's value replaces the default; two plugins
    setting one key to different values is an error naming both; lists are concatenated.
    """


@hookspec
def gym_after_model_load(cfg: CoreConfig, model: Any, tokenizer: Any) -> None:
    """Change the loaded model in place: freeze layers (Spectrum), cast, prepare for k-bit training.

    When: once per model built, after it is loaded (and its embeddings resized for new tokens) and before
    an adapter wraps it.

    Args:
        cfg: the validated config.
        model: the loaded ``transformers`` model.
        tokenizer: the loaded tokenizer.

    Combines: all implementations are called; results are ignored.
    """


@hookspec(firstresult=True)
def gym_wrap_model(cfg: CoreConfig, model: Any) -> Any | None:
    """Wrap the model with an adapter (LoRA, QLoRA, DoRA) and return the wrapped model.

    When: once per model built for training, after :func:`gym_after_model_load`.

    Args:
        cfg: the validated config.
        model: the loaded model.

    Returns: the wrapped model, or ``None`` to leave the model as it is (full fine-tuning).

    Combines: first result.
    """


@hookspec
def gym_after_wrap_model(cfg: CoreConfig, model: Any) -> None:
    """Patch the model as it will train: kernels that must see the adapter's modules, compilation.

    When: once per model built for training, after :func:`gym_wrap_model` (whether or not anything
    wrapped it).

    Args:
        cfg: the validated config.
        model: the model the trainer will get (an adapter model when one wrapped it).

    Combines: all implementations are called; results are ignored.
    """


@hookspec
def gym_builtin_models() -> dict[str, Any] | None:
    """Register generated models that configs name as ``base_model: builtin:<name>`` (next to gym's own
    ``builtin:tiny-llama``).

    When: whenever a ``builtin:`` model that gym itself does not make is resolved (loading the tokenizer or the
    model, fingerprinting the tokenizer for the data cache).

    Returns: ``{name: materialize}``, where ``materialize(path) -> str`` (a callable or ``"module:function"``)
    writes the model, its tokenizer (and processor) once into the gym cache and returns that folder; it must
    return the same folder for the same path and a new folder whenever what it writes changes.

    Combines: all results, merged; a name registered twice, or one of gym's own names, is an error.
    """


@hookspec(firstresult=True)
def gym_model_class(cfg: CoreConfig) -> str | None:
    """Name the ``transformers`` class the model is loaded with when ``model_type`` is not set
    (``AutoModelForImageTextToText`` for a vision-language model).

    When: once per model built, just before ``from_pretrained``.

    Args:
        cfg: the validated config.

    Returns: a class name of ``transformers`` with ``from_pretrained``, or ``None`` for the default
    (``AutoModelForCausalLM``). ``model_type`` in the config always wins.

    Combines: first result.
    """


# -------------------------------------------------------------------------------------------- training


@hookspec
def gym_training_arguments(cfg: CoreConfig) -> dict[str, Any] | None:
    """Contribute keyword arguments for the arguments class the training method chose.

    When: once, after the data is prepared and before the model is loaded, over the values gym mapped
    from the core keys and the method's own. Typical keys: ``report_to``, ``deepspeed``, ``beta`` (DPO).

    Args:
        cfg: the validated config.

    Combines: all results, merged over gym's values; two plugins setting one key to different values is an
    error naming both; lists are concatenated (two trackers adding to ``report_to``).
    """


@hookspec
def gym_callbacks(cfg: CoreConfig) -> list[Any] | None:
    """Return ``transformers.TrainerCallback`` instances to add to the trainer.

    When: once, while the trainer is built. A callback may carry ``gym_metrics`` (a dict that joins the
    run's final metrics and the model card), ``gym_summary`` (lines printed with the summary at the end) and,
    when it stopped the run early, ``gym_stop_reason`` (one line saying why). During training, the
    ``args`` every callback event receives carry ``gym_data``: the data preparation's figures under flat
    names (``data/rows_read``, ``data/dropped/<reason>``, ``data/train/tokens``, ...), for trackers.

    Args:
        cfg: the validated config.

    Combines: all results, concatenated in plugin order.
    """


# --------------------------------------------------------------------------------------------- outputs


@hookspec
def gym_model_card(cfg: CoreConfig, model: Any) -> dict[str, Any] | None:
    """Contribute to the model card (``README.md`` in ``output_dir``).

    When: once, on the main process, after the model was saved.

    Args:
        cfg: the validated config.
        model: the trained model as it was saved (an adapter model for adapters).

    Returns: a dict with any of ``library_name`` (str), ``tags`` (list), ``sections`` (list of markdown
    texts, each starting with a ``##`` heading), ``usage`` (Python code that loads the saved model) and
    ``packages`` (distributions whose versions the card lists).

    Combines: all results, merged; lists are concatenated, two plugins giving one key different values
    is an error.
    """


@hookspec
def gym_after_train(cfg: CoreConfig, model: Any, tokenizer: Any, output_dir: str) -> None:
    """Act on the trained model after it is saved (merge an adapter, export, push).

    When: once, on the main process only, after training finished and the final model, tokenizer, config,
    model card, ``trainer_state.json`` (the logged history) and ``gym_results.json`` (metrics, data figures,
    why the run stopped, versions, hardware) were written to ``output_dir``.

    Args:
        cfg: the validated config.
        model: the trained model.
        tokenizer: the tokenizer saved with it.
        output_dir: where the model was saved.

    Combines: all implementations are called; results are ignored.
    """


# ---------------------------------------------------------------------------------------------- evaluation


@hookspec
def gym_eval_tasks() -> list[EvalTask] | None:
    """Register task evaluations that configs name in ``eval_task`` (``eval_task: addition``).

    When: when a config that names task evaluations is validated, and when the tasks run: before and after
    training, and in ``gym evaluate``.

    Returns: a list of :class:`gym.api.EvalTask`: a name, the problems it asks (each a row a dataset strategy
    turns into a prompt, and the expected answer), and the scorer of one generated answer.

    Combines: all results; a task name registered twice is an error naming both plugins.
    """
