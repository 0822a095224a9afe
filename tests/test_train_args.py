"""How the core training keys map to TrainingArguments, without training anything."""

from __future__ import annotations

import pytest

from gym.errors import ConfigError


def load(write_config, extra: str = ""):
    import textwrap

    from gym.config import load_config

    extra = textwrap.dedent(extra).lstrip("\n")
    return load_config(write_config("base_model: builtin:tiny-llama\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n" + extra))


def args_for(write_config, extra: str = "", rows: int = 1000, has_eval: bool = False):
    from gym.training import HardwarePrecision, plan_steps, training_arguments

    cfg = load(write_config, extra)
    cpu = HardwarePrecision(bf16=False, fp16=False, tf32=None, cuda=False)
    return training_arguments(cfg, plan_steps(cfg, rows, world_size=1), cpu, has_eval)


def test_option_lists_match_the_installed_transformers():
    from transformers.trainer_utils import HubStrategy, SchedulerType
    from transformers.training_args import OptimizerNames

    from gym import training_options

    assert set(training_options.OPTIMIZERS) == {o.value for o in OptimizerNames}
    assert set(training_options.SCHEDULERS) == {s.value for s in SchedulerType}
    assert set(training_options.HUB_STRATEGIES) == {h.value for h in HubStrategy}


def test_scheduler_arguments_match_the_installed_transformers():
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

    from gym import training_options

    fixed = {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"}
    for kind, function in TYPE_TO_SCHEDULER_FUNCTION.items():
        params = inspect.signature(function).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            assert training_options.SCHEDULER_KWARGS[kind.value] is None, kind.value
        else:
            assert set(training_options.SCHEDULER_KWARGS[kind.value]) == set(params) - fixed, kind.value


def test_a_scheduler_argument_it_does_not_take_is_a_validate_error(write_config):
    from gym.config import load_config
    from gym.errors import ConfigError

    path = write_config("base_model: builtin:tiny-llama-micro\ndatasets:\n  - path: a.jsonl\n    type: alpaca\n"
                        "lr_scheduler: cosine\nlr_scheduler_kwargs: {num_cycles: 0.5, power: 2}\n")
    with pytest.raises(ConfigError, match=r"lr_scheduler_kwargs .*power: not an argument of the cosine scheduler "
                                          r"\(it takes num_cycles\)"):
        load_config(path)


def test_step_plan_counts_batches_accumulation_and_epochs(write_config):
    from gym.training import plan_steps

    cfg = load(write_config, "micro_batch_size: 4\ngradient_accumulation_steps: 3\nnum_epochs: 2.5\n")
    plan = plan_steps(cfg, 50, world_size=1)  # 13 batches -> 5 steps an epoch (the last one short)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (13, 5, 13)
    assert plan_steps(cfg, 50, world_size=2).steps_per_epoch == 3  # 25 rows a rank, 7 batches
    assert plan_steps(load(write_config, "max_steps: 7\n"), 50, world_size=1).total_steps == 7


def test_core_keys_map_to_training_arguments(write_config):
    args = args_for(
        write_config,
        """
        micro_batch_size: 4
        eval_batch_size: 16
        gradient_accumulation_steps: 2
        learning_rate: 0.001
        optimizer: adamw_8bit
        lr_scheduler: cosine
        cosine_min_lr_ratio: 0.1
        warmup_ratio: 0.1
        weight_decay: 0.01
        max_grad_norm: 0
        adam_beta2: 0.95
        saves_per_epoch: 4
        evals_per_epoch: 2
        save_total_limit: 2
        gradient_checkpointing: true
        logging_steps: 5
        seed: 7
        ddp_timeout: 120
        """,
        rows=1000,
        has_eval=True,
    )
    # 1000 rows / 4 = 250 batches / 2 = 125 steps an epoch
    assert args["per_device_train_batch_size"] == 4 and args["per_device_eval_batch_size"] == 16
    assert args["optim"] == "adamw_8bit"
    assert args["lr_scheduler_type"] == "cosine_with_min_lr" and args["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    assert args["warmup_steps"] == 13
    assert args["max_grad_norm"] == 0.0  # 0: no clipping
    assert args["adam_beta2"] == 0.95 and "adam_beta1" not in args
    assert (args["save_strategy"], args["save_steps"]) == ("steps", 31)
    assert (args["eval_strategy"], args["eval_steps"]) == ("steps", 62)
    assert args["activation_checkpointing"] is True
    assert args["activation_checkpointing_kwargs"] == {"use_reentrant": False}
    assert args["remove_unused_columns"] is False  # position_ids of packed rows must reach the model
    assert (args["bf16"], args["fp16"], args["use_cpu"], args["seed"]) == (False, False, True, 7)
    assert args["ddp_timeout"] == 120  # transformers starts the process group with it

    from transformers import TrainingArguments

    TrainingArguments(**args)  # every key is one TrainingArguments takes


def test_defaults_log_about_twenty_times_and_save_each_epoch(write_config):
    args = args_for(write_config, "micro_batch_size: 2\n", rows=400)
    assert args["logging_steps"] == 10 and args["save_strategy"] == "epoch" and args["eval_strategy"] == "no"
    assert args["lr_scheduler_type"] == "cosine" and args["warmup_steps"] == 0


def test_early_stopping_uses_eval_loss(write_config):
    args = args_for(write_config, "val_set_size: 0.1\nearly_stopping_patience: 2\neval_steps: 10\n", has_eval=True)
    assert args["metric_for_best_model"] == "eval_loss" and args["greater_is_better"] is False


@pytest.mark.parametrize(
    "extra, field, message",
    [
        ("optimizer: adamw_torhc\n", "optimizer", "did you mean adamw_torch"),
        ("lr_scheduler: one_cycle\n", "lr_scheduler", "'one_cycle' is not available"),
        ("lr_scheduler: linear\ncosine_min_lr_ratio: 0.1\n", "cosine_min_lr_ratio", "applies to lr_scheduler: cosine"),
        ("saves_per_epoch: 2\nsave_steps: 10\n", "save_steps", "not both"),
        ("early_stopping_patience: 3\n", "early_stopping_patience", "needs evaluation data"),
        ("save_safetensors: false\n", "save_safetensors", "always writes safetensors"),
        ("eval_steps: 2.5\n", "eval_steps", "whole number"),
    ],
)
def test_values_gym_cannot_honour_are_rejected_by_validate(write_config, extra, field, message):
    with pytest.raises(ConfigError) as info:
        load(write_config, extra)
    assert any(p.startswith(field) and message in p for p in info.value.problems), info.value.problems


def test_precision_auto_is_fp32_without_tf32_on_a_cpu(write_config):
    from gym.training import resolve_precision

    precision = resolve_precision(load(write_config, "bf16: auto\nfp16: auto\ntf32: auto\n"))
    assert (precision.bf16, precision.fp16, precision.tf32, precision.cuda) == (False, False, None, False)
    assert precision.describe() == "fp32 on CPU"
    with pytest.raises(ConfigError, match="fp16: float16 mixed precision needs a GPU"):
        resolve_precision(load(write_config, "fp16: true\nbf16: false\n"))
    # tf32 only exists on Ampere+ GPUs: asking for it elsewhere is said and changes nothing (GPU configs run here)
    assert resolve_precision(load(write_config, "tf32: true\n")).tf32 is None
    assert resolve_precision(load(write_config, "bf16: true\n")).bf16 is True


def test_validate_never_imports_torch_for_these_rules(write_config):
    import subprocess
    import sys

    config = write_config(
        "base_model: builtin:tiny-llama\ndatasets:\n  - path: d.jsonl\n    type: alpaca\noptimizer: nope\n", name="v.yml"
    )
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom gym.cli import main\n"
        f"r = CliRunner().invoke(main, ['validate', {str(config)!r}])\n"
        "assert r.exit_code != 0 and 'optimizer' in r.output, r.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
