"""Every configuration key of Axolotl's schema is known to gym: implemented, renamed (the error says what to
write) or refused as not supported yet (naming the feature). None may end as "unknown key".

The key names come from ``tests/data/axolotl_keys.txt`` (Axolotl 0.18.0's schema, names only), grouped by
where they apply: the top level, a ``datasets:`` entry, and the ``trl:``, ``vllm:`` and ``fsdp_config:``
sections. Each key is set to a made-up non-empty value: a value error is fine, "unknown key" is not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gym import testing
from gym.api import ConfigError

KEYS_FILE = Path(__file__).parent / "data" / "axolotl_keys.txt"
SAMPLE = 2  # non-empty, so that an unsupported key is an error rather than a note


def _groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    current = None
    for line in KEYS_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = groups.setdefault(line[1:-1], [])
        else:
            current.append(line)
    return groups


GROUPS = _groups()


@pytest.fixture(scope="module")
def manager():
    return testing.plugin_manager()


def _sft(**extra):
    return {"base_model": testing.TINY_MODEL, "datasets": [{"path": "d.jsonl", "type": "alpaca"}], **extra}


def _grpo(**extra):
    return {"base_model": testing.TINY_MODEL, "rl": "grpo", "datasets": [{"path": "d.jsonl", "type": "prompt"}],
            **extra}


def _unknown(config, manager) -> list[str]:
    """The "unknown key" problems of ``config`` (none when it is valid)."""
    try:
        testing.validate(config, manager)
    except ConfigError as exc:
        return [p for p in exc.problems if "unknown key" in p]
    return []


def test_key_list_is_complete():
    assert {g: len(k) > 0 for g, k in GROUPS.items()} == dict.fromkeys(
        ("top", "dataset", "trl", "vllm", "fsdp_config"), True)
    assert "sequence_len" in GROUPS["top"] and "message_property_mappings" in GROUPS["dataset"]


@pytest.mark.parametrize("key", GROUPS["top"])
def test_top_level_key_is_known(key, manager):
    config = _sft()
    config[key] = SAMPLE
    assert _unknown(config, manager) == []


@pytest.mark.parametrize("key", GROUPS["dataset"])
def test_dataset_key_is_known(key, manager):
    config = _sft()
    config["datasets"][0][key] = SAMPLE
    assert _unknown(config, manager) == []


SECTION_KEYS = [(section, key) for section in ("trl", "vllm", "fsdp_config") for key in GROUPS[section]]


@pytest.mark.parametrize("section,key", SECTION_KEYS, ids=[f"{s}.{k}" for s, k in SECTION_KEYS])
def test_section_key_is_known(section, key, manager):
    assert _unknown(_grpo(**{section: {key: SAMPLE}}), manager) == []


def test_no_key_of_a_builtin_plugin_is_still_listed_as_unsupported(manager):
    """Once a plugin implements a key, its "not supported yet" entry goes: the table says what gym lacks."""
    from gym import compat

    declared = set(manager.schema().model.model_fields)
    listed = {key for keys in compat._FEATURES.values() for key in keys}
    assert sorted(listed & declared) == []
