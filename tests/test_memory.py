"""The memory plugin: compile settings reach the trainer's arguments, inductor flags are checked, activation
offloading wraps the forward pass on a GPU and is a note on a CPU."""

from __future__ import annotations

import copy

import pytest

from gym import testing
from gym.api import ConfigError
from gym.plugins import memory

BASE = {"base_model": testing.TINY_MODEL, "datasets": [{"path": "builtin:addition?rows=64", "type": "alpaca"}]}


def test_compile_settings_without_compiling_are_refused():
    with pytest.raises(ConfigError) as error:
        testing.validate({**BASE, "torch_compile_backend": "inductor", "torch_compile_mode": "max-autotune"})
    assert [p.split(" ")[0] for p in error.value.problems] == ["torch_compile_backend", "torch_compile_mode"]
    assert all("set torch_compile: true" in p for p in error.value.problems)


def test_compile_settings_reach_the_training_arguments():
    from gym.plugin_manager import get_plugin_manager

    cfg = testing.validate({**BASE, "torch_compile": True, "torch_compile_backend": "aot_eager",
                            "torch_compile_mode": "max-autotune"})
    assert memory.gym_training_arguments(cfg) == {"torch_compile_backend": "aot_eager",
                                                  "torch_compile_mode": "max-autotune"}
    from transformers import TrainingArguments

    merged = get_plugin_manager().merged_dict("gym_training_arguments", base={"output_dir": "o", "torch_compile": True},
                                              cfg=cfg)
    args = TrainingArguments(**merged, use_cpu=True)
    assert args.torch_compile and args.torch_compile_backend == "aot_eager"


def test_inductor_options_are_set_and_unknown_flags_named():
    from torch._inductor import config as inductor_config

    before = inductor_config.coordinate_descent_tuning
    try:
        cfg = testing.validate({**BASE, "torch_compile": True,
                                "torch_compile_options": {"coordinate_descent_tuning": not before}})
        memory.gym_before_model_load(cfg)
        assert inductor_config.coordinate_descent_tuning is (not before)
    finally:
        inductor_config.coordinate_descent_tuning = before
    cfg = testing.validate({**BASE, "torch_compile": True, "torch_compile_options": {"no_such_flag": 1}})
    with pytest.raises(ConfigError, match="torch_compile_options.no_such_flag: torch._inductor.config has no flag"):
        memory.gym_before_model_load(cfg)


def test_offloaded_forward_saves_through_save_on_cpu_and_gives_the_same_gradients(monkeypatch):
    import torch

    from gym.tiny import build_model, build_tokenizer

    torch.manual_seed(0)
    model = build_model(build_tokenizer(), hidden_size=16, layers=1, heads=2, kv_heads=1, intermediate_size=32)
    offloaded = copy.deepcopy(model)
    entered = []
    real = torch.autograd.graph.save_on_cpu

    class Counting(real):
        def __init__(self, *args, **kwargs):
            entered.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Counting)
    memory.offload_activations(offloaded)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    plain = model(input_ids=ids, labels=ids)
    moved = offloaded(input_ids=ids, labels=ids)
    assert entered == [{"pin_memory": torch.cuda.is_available()}]
    plain.loss.backward()
    moved.loss.backward()
    torch.testing.assert_close(moved.loss, plain.loss)
    grads = dict(offloaded.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name].grad, param.grad, msg=name)


def test_on_a_cpu_offloading_is_a_note(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.fail("this test checks the CPU behaviour")
    cfg = testing.validate({**BASE, "activation_offloading": True})
    model = torch.nn.Linear(2, 2)
    memory.gym_after_wrap_model(cfg, model)
    assert "nothing to offload to" in capsys.readouterr().out
    assert "forward" not in vars(model)


@pytest.mark.slow
def test_a_cpu_run_with_offloading_and_checkpointing_trains(tmp_path, capsys):
    result = testing.run_config({**BASE, "activation_offloading": True, "gradient_checkpointing": True},
                                steps=2, tmp_path=tmp_path)
    assert result.steps == 2 and result.final_loss is not None
    assert "nothing to offload to" in capsys.readouterr().out
    assert result.trainer.model.is_activation_checkpointing
