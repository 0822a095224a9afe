"""The plugin manager: entry points, environment switches, clashes and broken plugins."""

from __future__ import annotations

import types

import pytest
from pydantic import BaseModel, ConfigDict

from gym.api import hookimpl
from gym.datasets_api import DatasetStrategy
from gym.errors import PluginError
from gym.plugin_manager import GymPluginManager

BUILTINS = {"sft", "lora", "quantization", "flash_attention", "addition", "alpaca", "chat_template", "completion",
            "input_output", "pretrain", "user_defined"}


def loaded(environ=None) -> GymPluginManager:
    manager = GymPluginManager()
    manager.load_entry_points(environ if environ is not None else {})
    return manager


def fragment(name: str, **fields):
    return type(name, (BaseModel,), {"__annotations__": {k: type(v) for k, v in fields.items()}, **fields,
                                     "model_config": ConfigDict(extra="forbid")})


def plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def test_builtins_come_from_entry_points_of_gym_llm():
    manager = loaded()
    assert BUILTINS <= set(manager.infos)
    for name in BUILTINS:
        info = manager.infos[name]
        assert info.builtin and info.distribution == "gym-llm" and info.version


def test_only_env_var_restricts_which_plugins_load():
    manager = loaded({"GYM_PLUGINS": "lora,alpaca"})
    assert set(manager.infos) == {"lora", "alpaca"}
    with pytest.raises(PluginError, match="not installed: nope"):
        loaded({"GYM_PLUGINS": "lora,nope"})


def test_disable_autoload_keeps_builtins_and_drops_third_party(qa_plugin):
    assert "qa" in loaded({}).infos
    manager = loaded({"GYM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "qa" not in manager.infos and BUILTINS <= set(manager.infos)


def test_third_party_plugin_contributes_key_and_strategy(qa_plugin):
    manager = loaded()
    info = manager.infos["qa"]
    assert (info.distribution, info.version, info.builtin) == ("gym-plugin-qa", "0.1.0", False)
    schema = manager.schema()
    assert "qa_answer_prefix" in schema.model.model_fields
    assert schema.dataset_key_owner["qa_question_field"] == "qa"
    assert "qa" in manager.dataset_strategies()
    assert "gym_dataset_strategies" in info.hooks


def test_same_config_key_from_two_plugins_names_both():
    manager = loaded({"GYM_PLUGINS": "lora"})
    clash = fragment("Clash", lora_r=4)
    manager.register(plugin_module("clashing", gym_config_schema=lambda: clash), "clashing", "gym-plugin-clash", "1.0")
    with pytest.raises(PluginError) as info:
        manager.schema()
    message = str(info.value)
    assert "'lora_r'" in message and "gym-plugin-clash" in message and "'lora'" in message and "gym-llm" in message


def test_key_clashing_with_the_core_names_the_plugin():
    manager = loaded({"GYM_PLUGINS": "alpaca"})
    manager.register(plugin_module("p", gym_config_schema=lambda: fragment("F", seed=1)), "p", "dist-p", "2")
    with pytest.raises(PluginError, match=r"'seed'.*dist-p.*gym core"):
        manager.schema()


def test_same_dataset_type_from_two_plugins_names_both():
    manager = loaded({"GYM_PLUGINS": "alpaca"})
    dup = plugin_module("dup", gym_dataset_strategies=lambda: [DatasetStrategy("alpaca", "x:y")])
    manager.register(dup, "dup", "gym-plugin-dup", "0.3")
    with pytest.raises(PluginError, match="dataset type 'alpaca' is registered twice") as err:
        manager.dataset_strategies()
    assert "gym-plugin-dup" in str(err.value) and "'gym-llm'" in str(err.value)


def test_plugin_failing_to_import_names_plugin_and_distribution(tmp_path, monkeypatch):
    import importlib

    site = tmp_path / "site"
    info = site / "gym_plugin_broken-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gym-plugin-broken\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[gym.plugins]\nbroken = gym_plugin_broken\n")
    (site / "gym_plugin_broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    with pytest.raises(PluginError) as err:
        loaded()
    assert "'broken'" in str(err.value) and "gym-plugin-broken" in str(err.value) and "boom" in str(err.value)


def test_hook_with_a_misspelled_name_is_rejected():
    manager = GymPluginManager()
    bad = plugin_module("bad", gym_config_shema=lambda: None)
    with pytest.raises(PluginError, match="'bad'.*not a valid gym plugin"):
        manager.register(bad, "bad", "gym-plugin-bad")


def test_merged_dict_conflict_names_both_plugins():
    manager = GymPluginManager()
    manager.register(plugin_module("a", gym_model_load_kwargs=lambda cfg: {"dtype": "x"}), "a", "dist-a")
    manager.register(plugin_module("b", gym_model_load_kwargs=lambda cfg: {"dtype": "y"}), "b", "dist-b")
    with pytest.raises(PluginError, match=r"dist-a|dist-b"):
        manager.merged_dict("gym_model_load_kwargs", cfg=None)
    manager2 = GymPluginManager()
    manager2.register(plugin_module("a", gym_model_load_kwargs=lambda cfg: {"dtype": "x"}), "a", "dist-a")
    manager2.register(plugin_module("c", gym_model_load_kwargs=lambda cfg: None), "c", "dist-c")
    assert manager2.merged_dict("gym_model_load_kwargs", {"dtype": "d", "k": 1}, cfg=None) == {"dtype": "x", "k": 1}


def test_builtin_plugins_do_nothing_unless_asked(write_config):
    """With no adapter, quantization or flash attention keys set, their model hooks change nothing."""
    from gym.config import load_config

    manager = loaded()
    cfg = load_config(write_config("base_model: m\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n"), manager=manager)
    assert manager.merged_dict("gym_model_load_kwargs", cfg=cfg) == {}
    sentinel = object()
    assert manager.hook.gym_wrap_model(cfg=cfg, model=sentinel) is None


def test_hooks_go_through_pluggy_so_wrappers_work_and_results_stay_attributed():
    """A wrapper=True implementation wraps the call (it used to come back as a raw generator)."""
    manager = loaded({"GYM_PLUGINS": "lora"})

    class Wrapper:
        @hookimpl(wrapper=True)
        def gym_training_arguments(self, cfg):
            results = yield
            return [*results, {"report_to": ["wrapped"]}]

    class Tracker:
        @hookimpl
        def gym_training_arguments(self, cfg):
            return {"report_to": ["tensorboard"], "logging_steps": 5}

    class OtherTracker:
        @hookimpl
        def gym_training_arguments(self, cfg):
            return {"report_to": ["wandb"], "logging_steps": 7}

    manager.register(Tracker(), "tracker")
    manager.register(Wrapper(), "wrapper")
    results = manager.call("gym_training_arguments", cfg=None)
    assert {"report_to": ["wrapped"]} in results and all(not hasattr(r, "send") for r in results)
    # lists from two plugins combine; a scalar two plugins disagree on is an error naming both
    manager.register(OtherTracker(), "other")
    with pytest.raises(PluginError) as info:
        manager.merged_dict("gym_training_arguments", cfg=None)
    assert "logging_steps" in str(info.value) and "'tracker'" in str(info.value) and "'other'" in str(info.value)


def test_merged_lists_concatenate_across_plugins():
    manager = loaded({"GYM_PLUGINS": "lora"})
    for name, tracker in (("tb", "tensorboard"), ("wb", "wandb")):
        manager.register(plugin_module(name, gym_training_arguments=lambda cfg, t=tracker: {"report_to": [t]}), name)
    merged = manager.merged_dict("gym_training_arguments", base={"report_to": ["none"]}, cfg=None)
    assert sorted(merged["report_to"]) == ["tensorboard", "wandb"]  # plugins replace the base, then combine


def test_third_party_plugins_register_after_builtins_whatever_their_names(qa_plugin):
    manager = loaded()
    order = list(manager.infos)
    assert order.index("qa") > max(order.index(name) for name in BUILTINS)
    builtins = [name for name in order if manager.infos[name].builtin]
    assert builtins == sorted(builtins)


def test_a_hook_called_inside_another_hook_is_not_counted_as_the_outer_ones_result():
    manager = GymPluginManager()

    def rule(cfg):
        manager.call("gym_model_load_kwargs", cfg=cfg)  # a rule asking another hook
        return None

    manager.register(plugin_module("asker", gym_validate_config=rule), "asker")
    manager.register(plugin_module("loader", gym_model_load_kwargs=lambda cfg: {"dtype": "x"}), "loader")
    assert [(name, result) for name, result in manager.validate_config(cfg=None) if result] == []


def test_one_type_name_serves_several_methods_through_different_strategies(tmp_path):
    """``chat_template.default`` is supervised conversations for sft and preference pairs for dpo."""
    from gym import testing
    from gym.config import strategy_of

    manager = testing.plugin_manager()
    base = {"base_model": "builtin:tiny-llama-micro", "datasets": [{"path": "d.jsonl", "type": "chat_template.default"}]}
    sft = testing.validate(base, manager)
    dpo = testing.validate({**base, "rl": "dpo", "datasets": [{**base["datasets"][0], "field_chosen": "good"}]}, manager)
    assert strategy_of(sft.datasets[0], manager, "sft")[0].columns == ("input_ids", "labels")
    assert "chosen" in strategy_of(dpo.datasets[0], manager, "dpo")[0].columns
    with pytest.raises(Exception, match="field_chosen"):  # an option of the preference layout, not of sft's
        testing.validate({**base, "datasets": [{**base["datasets"][0], "field_chosen": "good"}]}, manager)


def test_a_name_registered_twice_for_one_method_is_an_error():
    manager = loaded({"GYM_PLUGINS": "sft,alpaca"})
    copy = DatasetStrategy(name="alpaca", builder="x:y", methods=("sft",))
    manager.register(plugin_module("copycat", gym_dataset_strategies=lambda: [copy]), "copycat")
    with pytest.raises(PluginError, match="'alpaca' is registered twice for the same training method"):
        manager.dataset_strategies()
