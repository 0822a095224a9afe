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
    """The ``gym`` command: the core's commands plus those plugins add (``gym_register_commands``), loaded when
    a command is looked up or listed. A user's mistake prints as a short message, not a traceback, and exits
    non-zero."""

    _commands_of: Any = None  # the plugin manager whose commands are added
    _plugin_commands: tuple[str, ...] = ()

    def _add_plugin_commands(self) -> None:
        from gym.plugin_manager import get_plugin_manager

        try:
            manager = get_plugin_manager()
            if manager is self._commands_of:
                return
            for name in self._plugin_commands:  # another manager (tests): its plugins' commands, not the last one's
                self.commands.pop(name, None)
            before = set(self.commands)
            self._commands_of = manager
            manager.hook.gym_register_commands(cli=_Registrar(self))
            self._plugin_commands = tuple(set(self.commands) - before)
        except GymError as exc:  # a broken plugin, before any command runs
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None:
            self._add_plugin_commands()
            found = super().get_command(ctx, cmd_name)
        if found is not None and cmd_name in TRAINING_COMMANDS:
            _add_run_options(found)
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GymError as exc:
            click.secho(f"error{_rank_tag()}: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)


def _rank_tag() -> str:
    """`` (rank 1)`` in a process of a run of several, so that each process's error says whose it is."""
    from gym.output import process_count, process_rank

    return f" (rank {process_rank()})" if process_count() > 1 else ""


TRAINING_COMMANDS = ("run", "train")


def _add_run_options(command: click.Command) -> None:
    """The options plugins add to ``gym run`` / ``gym train`` (``gym_run_options``), once per plugin manager."""
    from gym.plugin_manager import get_plugin_manager

    manager = get_plugin_manager()
    if getattr(command, "_gym_options_of", None) is manager:
        return
    command.params = [p for p in command.params if not getattr(p, "_gym_plugin_option", False)]
    for option in manager.collected("gym_run_options"):
        option._gym_plugin_option = True  # type: ignore[attr-defined]
        command.params.append(option)
    command._gym_options_of = manager  # type: ignore[attr-defined]


class _Registrar(click.Group):
    """What ``gym_register_commands`` gets: adds to the ``gym`` group, refusing a name that is taken."""

    def __init__(self, target: click.Group):
        super().__init__(name=target.name)
        self._target = target

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        from gym.errors import PluginError

        name = name or cmd.name
        if name in self._target.commands:
            raise PluginError(f"gym_register_commands: the command {name!r} exists already; a plugin cannot replace it")
        self._target.add_command(cmd, name)


@click.group(cls=GymGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="gym")
@click.option("--verbose", "-v", is_flag=True, help="Also show the libraries' own warnings (deprecations, notices).")
def main(verbose: bool) -> None:
    """Fine-tune large language models from one YAML config.

    \b
    Overrides are KEY=VALUE pairs applied over the file:
      gym run cfg.yml learning_rate=1e-4 datasets.0.path=data.jsonl
    """
    if not verbose:
        quiet_libraries()


def quiet_libraries() -> None:
    """Hide the warnings and notices of every library but gym (deprecations inside the training stack, optional
    kernels it could not load): ``gym --verbose`` shows them. gym's own messages and every error still show.
    Imports nothing."""
    import logging
    import os
    import warnings

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!gym(\.|$))")
    logging.getLogger().setLevel(logging.ERROR)  # libraries that log through the root logger
    logging.getLogger("gym").setLevel(logging.WARNING)  # gym's own warnings still reach the console
    for variable in ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY"):  # read when those libraries start
        os.environ.setdefault(variable, "error")


def _load(config: str, overrides: tuple[str, ...], quiet: bool = False):
    from gym.config import load_config

    notes: list[str] = []
    cfg = load_config(config, overrides, notes=notes)
    if notes and not quiet:
        click.secho(f"note: {len(notes)} key(s) that change nothing:", fg="yellow", err=True)
        for note in notes:
            click.secho(f"  - {note}", fg="yellow", err=True)
    return cfg


def _train(config: str, overrides: tuple[str, ...], options: dict[str, Any]) -> None:
    cfg = _load(config, overrides)
    from gym.plugin_manager import get_plugin_manager

    status = get_plugin_manager().hook.gym_launch(cfg=cfg, argv=sys.argv[1:], options=options)
    if status is not None:  # a plugin started the processes that train, and waited for them
        sys.exit(status)
    import atexit

    from gym.run import run

    atexit.register(_skip_final_collection)
    try:
        run(cfg)
    except Exception as exc:
        if _lost_another_process(exc):  # the cause is another process's own error, reported by the launcher
            from gym.errors import LostProcessError

            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LostProcessError(f"lost contact with the other processes of the run ({first_line})") from None
        raise


def _lost_another_process(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process of the run died."""
    from gym.output import process_count

    if process_count() == 1:
        return False
    if any(cls.__name__ == "DistError" for cls in type(exc).__mro__):  # torch.distributed's own errors
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "[gloo/", "NCCL error"))


def _skip_final_collection() -> None:
    """The collector need not walk a trained model's objects at exit (~1.5 s saved). Not when triton is loaded:
    its nanobind extension reports every frozen object as a leak."""
    import gc

    if "triton" not in sys.modules:
        gc.freeze()


@main.command()
@CONFIG
@OVERRIDES
def run(config: str, overrides: tuple[str, ...], **options: Any) -> None:
    """Validate CONFIG, prepare the data, train and save the model."""
    _train(config, overrides, options)


@main.command(name="train")
@CONFIG
@OVERRIDES
def train_command(config: str, overrides: tuple[str, ...], **options: Any) -> None:
    """The same as `gym run`."""
    _train(config, overrides, options)


@main.command()
@CONFIG
@OVERRIDES
@click.option("--json", "as_json", is_flag=True, help="Print the resolved config as JSON (machine-readable).")
@click.option("--print-config", is_flag=True, help="Print the whole resolved config (every default filled in).")
def validate(config: str, overrides: tuple[str, ...], as_json: bool, print_config: bool) -> None:
    """Validate CONFIG and say what it will do (the resolved config with --print-config or --json)."""
    cfg = _load(config, overrides, quiet=as_json)
    if as_json:
        click.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return
    if print_config:
        import yaml

        click.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True).rstrip())
    else:
        click.echo(_summary(cfg))
    click.secho(f"{config}: valid", fg="green", err=True)


def _summary(cfg: Any) -> str:
    """What a valid config will do, in a few lines."""
    from gym.plugin_manager import get_plugin_manager

    method = get_plugin_manager().training_method(cfg)
    data = ", ".join(f"{entry.path} ({entry.type if isinstance(entry.type, str) else 'inline format'})"
                     for entry in cfg.datasets)
    held_out = f"; eval: {cfg.val_set_size:g} held out" if cfg.val_set_size else (
        f"; eval: {len(cfg.test_datasets)} test dataset(s)" if cfg.test_datasets else "")
    length = f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.num_epochs:g} epoch(s)"
    changed = sorted(k for k in cfg.model_fields_set if k not in ("base_model", "datasets", "output_dir"))
    return "\n".join([
        f"model:   {cfg.base_model}",
        f"data:    {data}{held_out}",
        f"method:  {method.name}, {length}, micro batch {cfg.micro_batch_size} x {cfg.gradient_accumulation_steps}, "
        f"learning rate {cfg.learning_rate:g}",
        f"output:  {cfg.output_dir}",
        f"set:     {', '.join(changed) or 'nothing else (defaults)'}",
        "(gym validate --print-config shows every key with its default)",
    ])


@main.command()
@CONFIG
@OVERRIDES
def preprocess(config: str, overrides: tuple[str, ...]) -> None:
    """Prepare the datasets into `dataset_prepared_path` (tokenized, in the training method's rows) without training."""
    cfg = _load(config, overrides)
    from gym.data.prepare import prepare_data

    prepared = prepare_data(cfg)  # the tokenizer (and torch) load only when the cache must be built
    click.echo(prepared.summary())


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


@plugins.command(name="new")
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder to write the package gym-plugin-NAME into.")
def plugins_new(name: str, directory: str) -> None:
    """Write a ready plugin package, gym-plugin-NAME, with a config key, a dataset type and tests."""
    from gym.scaffold import new_plugin

    target = new_plugin(name, directory)
    click.echo(f"wrote {target}; try: cd {target} && python -m pytest -q")


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
