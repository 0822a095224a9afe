"""Property: whatever config a user writes, ``gym validate`` answers with a valid config or a gym error naming a key.

Configs are generated from the composed schema itself (the core's keys, every loaded plugin's fragment and
every strategy's dataset options): a valid base, then mutations at every level (values of the key's own type
and of every other type, huge and empty values, unicode, nulls, missing and unknown keys, lists for mappings and
the reverse), through the file and through ``KEY=VALUE`` overrides. Profiles: ``ci`` (default, few examples,
derandomized) and ``deep`` (``GYM_FUZZ=deep``: thousands); see docs/testing.md for a deep run's counts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gym.config import load_config
from gym.errors import GymError
from gym.plugin_manager import get_plugin_manager

BASE: dict[str, Any] = {
    "base_model": "builtin:tiny-llama-micro",
    "datasets": [{"path": "builtin:addition", "type": "chat_template"}],
    "output_dir": "out",
}

_MANAGER = get_plugin_manager()
_SCHEMA = _MANAGER.schema()
TOP = _SCHEMA.model.model_json_schema()
DATASET = _SCHEMA.dataset_model.model_json_schema()
TOP_KEYS = sorted(TOP["properties"])
DATASET_KEYS = sorted(DATASET["properties"])

# ---------------------------------------------------------------------------------------------- values

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
nasty_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
    st.sampled_from(["", " ", "0", "-1", "1e400", "nan", "null", "~", "yes", "no", "${oops}", "${oc.env:NOPE}",
                     "builtin:", "builtin:nope", "auto", "x" * 5000, "🙂" * 50, "a: b", "[1, 2", "{", "\\", "'"]),
)
nasty = st.recursive(
    nasty_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)),
    max_leaves=8,
)


def _resolve(fragment: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in fragment:
        fragment = defs[fragment["$ref"].rsplit("/", 1)[-1]]
    return fragment


def shaped(fragment: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> st.SearchStrategy:
    """Values of the shape the schema asks for (often valid, often at the edges of the allowed range)."""
    fragment = _resolve(fragment, defs)
    if depth > 3:
        return nasty_scalars
    if "enum" in fragment:
        return st.sampled_from(fragment["enum"])
    if "const" in fragment:
        return st.just(fragment["const"])
    for union in ("anyOf", "oneOf"):
        if union in fragment:
            return st.one_of([shaped(option, defs, depth + 1) for option in fragment[union]])
    kind = fragment.get("type")
    if kind == "integer":
        low, high = fragment.get("minimum", fragment.get("exclusiveMinimum")), fragment.get("maximum")
        return st.one_of(st.integers(min_value=-5, max_value=5), st.integers(min_value=low, max_value=high),
                         st.sampled_from([0, -1, 2**31, 2**63]))
    if kind == "number":
        return st.one_of(st.floats(-10, 10), st.sampled_from([0.0, -0.0, 1e-12, 1e30, math.inf, -math.inf]))
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return st.one_of(_text, st.sampled_from(["", "auto", "none", "x" * 2000]))
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(shaped(fragment.get("items", {}), defs, depth + 1), max_size=3)
    if kind == "object":
        properties = fragment.get("properties")
        if properties:
            return st.fixed_dictionaries(
                {}, optional={k: shaped(v, defs, depth + 1) for k, v in list(properties.items())[:12]}
            )
        return st.dictionaries(_text, nasty_scalars, max_size=3)
    return nasty


def value_for(fragment: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy:
    return st.one_of(shaped(fragment, defs), nasty)


# ------------------------------------------------------------------------------------------- mutations


@st.composite
def mutated_configs(draw) -> tuple[dict[str, Any] | Any, set[str]]:
    """A config and the keys the mutations touched."""
    import copy

    cfg: Any = copy.deepcopy(BASE)
    touched: set[str] = set()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["top", "top", "top", "dataset", "dataset", "drop", "unknown", "shape"]))
        if not isinstance(cfg, dict):
            break
        if kind == "top":
            key = draw(st.sampled_from(TOP_KEYS))
            cfg[key] = draw(value_for(TOP["properties"][key], TOP.get("$defs", {})))
            touched.add(key)
        elif kind == "dataset" and isinstance(cfg.get("datasets"), list) and cfg["datasets"] and isinstance(
                cfg["datasets"][0], dict):
            key = draw(st.sampled_from(DATASET_KEYS))
            cfg["datasets"][0][key] = draw(value_for(DATASET["properties"][key], DATASET.get("$defs", {})))
            touched |= {"datasets", key}
        elif kind == "drop" and cfg:
            key = draw(st.sampled_from(sorted(cfg)))
            del cfg[key]
            touched.add(key)
        elif kind == "unknown":
            key = draw(st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_"), min_size=1, max_size=20))
            cfg[key] = draw(nasty)
            touched.add(key)
        elif kind == "shape":
            cfg = draw(st.sampled_from([
                [cfg], 5, "text", None, True, {**cfg, "datasets": 5}, {**cfg, "datasets": True},
                {**cfg, "datasets": {"path": "x"}}, {**cfg, "datasets": [5, "x"]}, {**cfg, "test_datasets": 3},
            ]))
            touched |= {"datasets", "test_datasets"}
    return cfg, touched


def check_outcome(path: Path, overrides: list[str], touched: set[str]) -> str:
    """``valid`` or ``error``; anything but a gym error fails the test."""
    try:
        load_config(path, overrides)
    except GymError as exc:
        message = str(exc)
        assert message.strip(), "an error with no message"
        assert "Traceback" not in message
        return "error"
    return "valid"


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                      HealthCheck.data_too_large])
OUTCOMES: dict[str, dict[str, int]] = {"file": {}, "override": {}}


@FUZZ
@given(case=mutated_configs())
def test_every_config_file_is_valid_or_a_gym_error(case, tmp_path_factory):
    cfg, touched = case
    path = tmp_path_factory.mktemp("fuzz") / "c.yml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    outcome = check_outcome(path, [], touched)
    OUTCOMES["file"][outcome] = OUTCOMES["file"].get(outcome, 0) + 1


@st.composite
def overrides(draw) -> list[str]:
    items = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.one_of(
            st.sampled_from(TOP_KEYS),
            st.sampled_from([f"datasets.0.{k}" for k in DATASET_KEYS]),
            st.sampled_from(["datasets", "datasets.5.path", "datasets.x", "a.b.c", "", "=", "lora_r.x", "..", "0"]),
        ))
        value = draw(st.one_of(
            st.sampled_from(["", "5", "-1", "true", "no", "null", "[1,2]", "{a: 1}", "[", "{", "${x}", "1e999", "nan"]),
            _text.filter(lambda text: "\n" not in text and "\r" not in text),
        ))
        items.append(f"{key}={value}" if draw(st.booleans()) or not key else key)
    return items


@FUZZ
@given(items=overrides())
def test_every_override_is_taken_or_a_gym_error(items, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "c.yml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False))
    outcome = check_outcome(path, items, set())
    OUTCOMES["override"][outcome] = OUTCOMES["override"].get(outcome, 0) + 1


@pytest.mark.parametrize("items", [["datasets=5"], ["datasets=true"], ["test_datasets=3"], ["micro_batch_size=lots"],
                                   ["save_strategy=no"]])
def test_known_bad_overrides_name_the_override(items, tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False))
    if items == ["save_strategy=no"]:
        assert load_config(path, items).save_strategy == "no"  # taken as the field's type: the string "no"
        return
    with pytest.raises(GymError, match=items[0].split("=")[0]):
        load_config(path, items)


@pytest.fixture(scope="module", autouse=True)
def _record_outcomes():
    """With GYM_FUZZ_REPORT=FILE, append this module's outcome counts to FILE (for docs/testing.md)."""
    yield
    import os

    if os.environ.get("GYM_FUZZ_REPORT"):
        with open(os.environ["GYM_FUZZ_REPORT"], "a") as handle:
            handle.write(json.dumps({"module": __name__, "outcomes": OUTCOMES}) + "\n")
