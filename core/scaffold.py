"""``gym plugins new NAME``: write a ready third-party plugin package to start from.

The package holds a config key, a dataset strategy, a cross-field rule, tests written on :mod:`gym.testing`
(they pass as written, installed or not) and a README. The plugin imports only from :mod:`gym.api`.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from gym.errors import ConfigError

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "A gym plugin: the `$snake` dataset type and the `${snake}_response_prefix` key."
requires-python = ">=3.10"
dependencies = ["gym-llm"]

[project.optional-dependencies]
test = ["pytest>=8"]

# How gym finds the plugin once the package is installed: `gym plugins list` shows it as "$snake".
[project.entry-points."gym.plugins"]
$snake = "$module"

[tool.setuptools]
packages = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]  # the tests register the plugin through gym.testing: no install needed
'''

PLUGIN = '''\
"""gym plugin `$snake`: a dataset type for prompt / response rows and the key that joins them.

::

    ${snake}_response_prefix: "Response:"
    datasets:
      - path: data.jsonl
        type: $snake
        ${snake}_prompt_field: prompt       # optional, this is the default
        ${snake}_response_field: response   # optional, this is the default

A row becomes ``<prompt>\\\\n<prefix> <response><eos>``; the prompt is not trained (unless
``train_on_inputs``), the response and the EOS token are. Import only from ``gym.api``, the plugin API.
"""

from __future__ import annotations

from gym.api import ConfigProblem, DatasetStrategy, StrictConfig, hookimpl
from gym.api import SegmentEncoder, column, text_at, train_on_inputs_for  # the strategy toolkit

# Unknown keys are errors, and the docstring under each field is its description (docs, `gym config schema`).
DOCUMENTED = {**StrictConfig.model_config, "use_attribute_docstrings": True}


class ${camel}Config(StrictConfig):
    """Top-level keys this plugin adds (flat names, each with a default)."""

    model_config = DOCUMENTED
    ${snake}_response_prefix: str = "Response:"
    """Text written between the prompt and the response of a `type: $snake` row."""


class ${camel}Options(StrictConfig):
    """Keys a `type: $snake` dataset entry accepts."""

    model_config = DOCUMENTED
    ${snake}_prompt_field: str = "prompt"
    """Column holding the prompt."""
    ${snake}_response_field: str = "response"
    """Column holding the response."""


@hookimpl
def gym_config_schema():
    return ${camel}Config


@hookimpl
def gym_validate_config(cfg):
    """Rules across fields; return problems naming the field to fix, never raise."""
    if not cfg.${snake}_response_prefix.strip():
        return [ConfigProblem("${snake}_response_prefix", "must not be blank")]
    return None


@hookimpl
def gym_dataset_strategies():
    return [DatasetStrategy("$snake", f"{__name__}:${camel}Strategy", options=${camel}Options,
                            description="prompt / response rows; the response is trained")]


class ${camel}Strategy:
    """Built once a dataset: turns a batch of rows into ``input_ids`` and ``labels`` (-100: not trained)."""

    def __init__(self, tokenizer, cfg, dataset):
        self.encoder = SegmentEncoder(tokenizer)
        self.prefix = cfg.${snake}_response_prefix
        self.prompt, self.response = dataset.${snake}_prompt_field, dataset.${snake}_response_field
        self.train_prompt = train_on_inputs_for(cfg, dataset)

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        prompts, responses = column(rows, self.prompt), column(rows, self.response)
        samples = [
            [(f"{text_at(prompts, i, self.prompt)}\\n{self.prefix} ", self.train_prompt),
             (text_at(responses, i, self.response), True)]
            for i in range(len(prompts))
        ]
        return self.encoder.encode(samples, eos=[True] * len(samples))
'''

TEST = '''\
"""Tests of the `$snake` plugin, written on gym.testing (the plugin is registered in code, not installed)."""

from __future__ import annotations

import json
import math

import pytest

import $module as plugin
from gym import testing
from gym.api import ConfigError

ROWS = [{"prompt": "Say hi", "response": "hi"}, {"prompt": "Add 2 and 3", "response": "5"}]


def config(**keys):
    return {"base_model": "builtin:tiny-llama-micro", "datasets": [{"path": "d.jsonl", "type": "$snake"}], **keys}


def test_config_key_validates():
    cfg = testing.validate(config(${snake}_response_prefix="Answer:"), plugin)
    assert cfg.${snake}_response_prefix == "Answer:"
    with pytest.raises(ConfigError) as err:
        testing.validate(config(${snake}_response_prefix=" "), plugin)
    assert any("${snake}_response_prefix" in problem for problem in err.value.problems)


def test_strategy_masks_the_prompt():
    tok = testing.tiny_tokenizer()
    out = testing.call_strategy("$snake", ROWS, None, plugin, tokenizer=tok)
    assert len(out["input_ids"]) == 2
    for ids, labels, row in zip(out["input_ids"], out["labels"], ROWS):
        assert len(ids) == len(labels) and labels[0] == -100
        trained = [t for t, label in zip(ids, labels) if label != -100]
        assert tok.decode(trained) == row["response"] + tok.eos_token


def test_short_run_has_a_finite_loss(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\\n" for row in ROWS * 4))
    result = testing.run_config({"datasets": [{"path": str(data), "type": "$snake"}]}, plugin, tmp_path=tmp_path)
    assert result.steps == 3 and math.isfinite(result.final_loss)
'''

README = '''\
# $dist

A gym plugin. It adds the dataset type `$snake` (rows with a prompt and a response; the response is trained)
and the config key `${snake}_response_prefix`:

```yaml
${snake}_response_prefix: "Response:"
datasets:
  - path: data.jsonl
    type: $snake
```

## Develop

```bash
pip install -e .             # gym finds it through the `gym.plugins` entry point in pyproject.toml
gym plugins list             # shows "$snake"
python -m pytest -q          # the tests use gym.testing and pass without installing
```

Edit `$module/__init__.py`: import only from `gym.api`, gym's plugin API. The hooks a plugin can implement
are listed in gym's `docs/plugins.md`.
'''


def new_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write the package ``gym-plugin-NAME`` into ``directory`` and return its folder.

    ``NAME`` is letters, digits, ``_`` and ``-``, starting with a letter (a ``gym-plugin-`` prefix is dropped);
    it becomes the entry-point name, the dataset type and the prefix of the config keys. An existing target
    folder is never touched: that is a :class:`gym.errors.ConfigError`.
    """
    bare = re.sub(r"^gym[-_]plugin[-_]", "", name.strip(), flags=re.IGNORECASE)
    if not NAME.fullmatch(bare):
        raise ConfigError(
            f"plugin name {name!r}: use letters, digits, '_' and '-', starting with a letter (for example my_feature)"
        )
    snake = bare.lower().replace("-", "_")
    values = {
        "snake": snake,
        "camel": "".join(part.capitalize() for part in snake.split("_")),
        "module": f"gym_plugin_{snake}",
        "dist": f"gym-plugin-{snake.replace('_', '-')}",
    }
    target = Path(directory).expanduser() / values["dist"]
    if target.exists():
        raise ConfigError(f"{target} exists already; choose another name or --dir, or remove that folder")
    files = {
        "pyproject.toml": PYPROJECT,
        f"{values['module']}/__init__.py": PLUGIN,
        "tests/test_plugin.py": TEST,
        "README.md": README,
    }
    for relative, template in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values))
    return target
