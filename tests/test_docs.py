"""The docs cannot drift from the code: every hook documented and called, the config reference generated."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from gym import hookspecs
from gym.plugin_manager import ENV_DISABLE_AUTOLOAD, GymPluginManager

REPO = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("gym_"))


def test_there_are_hooks_for_every_consumer():
    assert len(HOOKS) >= 13


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_in_the_plugin_guide(hook):
    guide = (REPO / "docs" / "plugins.md").read_text()
    assert re.search(rf"^### {hook}$", guide, re.M), f"docs/plugins.md has no section for {hook}"
    assert getattr(hookspecs, hook).__doc__.strip(), f"{hook} has no docstring"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_caller(hook):
    """No dead hooks: each spec is called somewhere in the core, outside hookspecs.py."""
    sources = [p.read_text() for p in (REPO / "core").rglob("*.py") if p.name != "hookspecs.py"]
    assert any(f'"{hook}"' in s or f".{hook}(" in s for s in sources), f"nothing calls {hook}"


def test_hook_section_of_the_plugin_guide_is_generated_from_the_specs():
    from gym.docs import replace_hooks_section

    guide = (REPO / "docs" / "plugins.md").read_text()
    assert guide == replace_hooks_section(guide), "docs/plugins.md is stale: run python -m gym.docs --hooks docs/plugins.md"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_docstring_says_when_it_runs_how_results_combine_and_each_argument(hook):
    import inspect

    spec = getattr(hookspecs, hook)
    doc = inspect.cleandoc(spec.__doc__)
    assert "When:" in doc and "Combines:" in doc, f"{hook}: say when it runs and how results combine"
    for argument in inspect.signature(spec).parameters:
        assert re.search(rf"^    {argument}: \S", doc, re.M), f"{hook}: argument {argument!r} is not documented"


def test_configuration_reference_is_generated_from_the_schema():
    from gym.docs import render

    manager = GymPluginManager()
    manager.load_entry_points({**os.environ, ENV_DISABLE_AUTOLOAD: "1"})
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(manager), "docs/configuration.md is stale: run python -m gym.docs > docs/configuration.md"


def test_every_example_config_opens_with_the_command_that_runs_it():
    for path in sorted((REPO / "examples").glob("*.yml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# gym ") and path.name in first, f"{path.name} must open with '# gym run {path.name}'"
