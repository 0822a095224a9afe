"""The flash_attention plugin: the boolean key, its rule, and a clear error where flash-attn is missing."""

from __future__ import annotations

import importlib.util

import pytest

from gym.errors import ModelError
from gym.plugin_manager import get_plugin_manager
from gym.plugins import flash_attention

HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None


def make_cfg(**keys):
    data = {"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "alpaca"}], **keys}
    return get_plugin_manager().schema().model.model_validate(data)


def test_does_nothing_unless_asked():
    cfg = make_cfg(attn_implementation="sdpa")
    assert flash_attention.gym_model_load_kwargs(cfg) is None
    assert flash_attention.gym_before_model_load(cfg) is None
    assert flash_attention.gym_validate_config(cfg) is None


def test_boolean_asks_for_flash_attention_2():
    assert flash_attention.gym_model_load_kwargs(make_cfg(flash_attention=True)) == {
        "attn_implementation": "flash_attention_2"
    }


def test_conflicting_attention_keys_name_both():
    problems = flash_attention.gym_validate_config(make_cfg(flash_attention=True, attn_implementation="eager"))
    problem = problems[0]  # (and, without flash-attn, the missing package)
    assert problem.field == "flash_attention" and "attn_implementation" in problem.message
    assert len(problems) == (1 if HAS_FLASH_ATTN else 2)


@pytest.mark.parametrize("keys", [{"flash_attention": True}, {"attn_implementation": "flash_attention_2"}])
def test_missing_package_is_a_clear_error_before_loading(keys):
    """On machines without flash-attn (every CPU machine) the error names the key and the fix."""
    if HAS_FLASH_ATTN:  # on a GPU machine with the package the check must let the run go on
        assert flash_attention.gym_before_model_load(make_cfg(**keys)) is None
        return
    with pytest.raises(ModelError, match="needs the flash-attn package.*attn_implementation: sdpa"):
        flash_attention.gym_before_model_load(make_cfg(**keys))
