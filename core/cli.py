"""The ``gym`` command.

Only click and the config machinery are imported at start-up; commands that train import the
training stack (torch, transformers) inside their own bodies, so ``--help``, ``validate``,
``plugins list`` and ``config schema`` stay fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from gym import __version__
from gym.errors import GymError

CONFIG = click.argument("config", type=click.Path(dir_okay=False))
OVERRIDES = click.argument("overrides", nargs=-1)


class GymGroup(click.Group):
    """Prints a user's mistake as a short message, not a traceback, and exits non-zero."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GymError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=GymGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="gym")
def main() -> None:
    """Fine-tune large language models from one YAML config.

    \b
    Overrides are KEY=VALUE pairs applied over the file:
      gym run cfg.yml lora_r=32 datasets.0.path=data.jsonl
    """


def _load(config: str, overrides: tuple[str, ...], quiet: bool = False):
    from gym.config import load_config

    notes: list[str] = []
    cfg = load_config(config, overrides, notes=notes)
    if notes and not quiet:
        click.secho(f"note: {len(notes)} key(s) left empty and ignored:", fg="yellow", err=True)
        for note in notes:
            click.secho(f"  - {note}", fg="yellow", err=True)
    return cfg


def _train(config: str, overrides: tuple[str, ...]) -> None:
    cfg = _load(config, overrides)
    from gym.train import train

    train(cfg)


@main.command()
@CONFIG
@OVERRIDES
def run(config: str, overrides: tuple[str, ...]) -> None:
    """Validate CONFIG, prepare the data, train and save the model."""
    _train(config, overrides)


@main.command(name="train")
@CONFIG
@OVERRIDES
def train_command(config: str, overrides: tuple[str, ...]) -> None:
    """The same as `gym run`."""
    _train(config, overrides)


@main.command()
@CONFIG
@OVERRIDES
@click.option("--json", "as_json", is_flag=True, help="Print the resolved config as JSON.")
def validate(config: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Validate CONFIG and print the resolved config."""
    cfg = _load(config, overrides, quiet=as_json)
    data = cfg.model_dump(mode="json")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    import yaml

    click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())
    click.secho(f"{config}: valid", fg="green", err=True)


@main.command()
@CONFIG
@OVERRIDES
def preprocess(config: str, overrides: tuple[str, ...]) -> None:
    """Tokenize (and pack) the datasets into `dataset_prepared_path` without training."""
    cfg = _load(config, overrides)
    from gym.data.prepare import prepare_datasets
    from gym.model import load_tokenizer

    tokenizer = load_tokenizer(cfg)
    prepared = prepare_datasets(cfg, tokenizer)
    click.echo(prepared.summary())


@main.command(name="merge-lora")
@CONFIG
@OVERRIDES
@click.option("--lora-model-dir", default=None, help="Adapter folder (default: output_dir).")
def merge_lora(config: str, overrides: tuple[str, ...], lora_model_dir: str | None) -> None:
    """Merge a trained LoRA / QLoRA adapter into its base model, written to OUTPUT_DIR/merged."""
    cfg = _load(config, overrides)
    from gym.merge import merge_adapter

    target = merge_adapter(cfg, lora_model_dir)
    click.echo(f"merged model written to {target}")


@main.group()
def plugins() -> None:
    """Inspect installed plugins."""


@plugins.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_list(as_json: bool) -> None:
    """Each plugin: name, version, distribution, config keys and hooks."""
    from gym.plugin_manager import get_plugin_manager

    manager = get_plugin_manager()
    manager.schema()  # fills in config keys and dataset types
    infos = [info.as_dict() for info in manager.infos.values()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for info in infos:
        origin = "built-in" if info["builtin"] else "third-party"
        click.secho(f"{info['name']}", bold=True, nl=False)
        click.echo(f"  {info['distribution']} {info['version']} ({origin}, {info['module']})")
        if info["config_keys"]:
            click.echo(f"    config keys:   {', '.join(info['config_keys'])}")
        if info["dataset_types"]:
            click.echo(f"    dataset types: {', '.join(info['dataset_types'])}")
        click.echo(f"    hooks:         {', '.join(info['hooks']) or '-'}")


@main.group()
def config() -> None:
    """Inspect the config schema."""


@config.command(name="schema")
@click.option("--indent", default=2, show_default=True, help="JSON indentation.")
def config_schema(indent: int) -> None:
    """Print the JSON Schema of the whole config (core and every loaded plugin's keys).

    \b
    For editors with yaml-language-server, save it and start configs with:
      # yaml-language-server: $schema=gym-schema.json
    """
    from gym.plugin_manager import get_plugin_manager

    schema = get_plugin_manager().schema().model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gym config"
    click.echo(json.dumps(schema, indent=indent))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
