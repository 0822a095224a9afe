"""``gym.testing``: a plugin author's kit for testing a plugin without installing it.

::

    from gym import testing
    import gym_plugin_my as plugin

    cfg = testing.validate({"base_model": "m", "datasets": [...], "my_key": 1}, plugin)
    out = testing.call_strategy("my_type", [{"prompt": "hi", "response": "yo"}], None, plugin)
    result = testing.run_config({"datasets": [{"path": "data.jsonl", "type": "my_type"}]}, plugin)

Every function takes the plugins to test as extra arguments: a module or object (registered under its last
dotted name, ``gym_plugin_`` dropped: ``gym_plugin_my`` is ``my``), a ``(name, plugin)`` tuple, or one ready
:class:`~gym.plugin_manager.GymPluginManager` to use as it is. gym's built-in plugins are loaded too (only
those: installed third-party plugins are not). Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

TINY_MODEL = "builtin:tiny-llama-micro"

__all__ = ["plugin_manager", "validate", "tiny_model", "tiny_tokenizer", "call_strategy", "run_config", "run_processes",
           "write_config", "logged_losses"]


def plugin_manager(*plugins: Any, builtins: bool = True):
    """A new ``GymPluginManager`` with gym's built-in plugins (none when ``builtins=False``) and then each of
    ``plugins`` registered as a third-party plugin (a module or object, or a ``(name, plugin)`` tuple)."""
    from gym.plugin_manager import GymPluginManager

    manager = GymPluginManager()
    if builtins:
        manager.load_entry_points(environ={"GYM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    for plugin in plugins:
        name, plugin = plugin if isinstance(plugin, tuple) else (_name_of(plugin), plugin)
        manager.register(plugin, name)
    return manager


def _name_of(plugin: Any) -> str:
    name = getattr(plugin, "__name__", None) or type(plugin).__name__
    return name.rpartition(".")[2].removeprefix("gym_plugin_") or name


def _manager(plugins: tuple[Any, ...]):
    from gym.plugin_manager import GymPluginManager

    if len(plugins) == 1 and isinstance(plugins[0], GymPluginManager):
        return plugins[0]
    return plugin_manager(*plugins)


def _plain(value: Any) -> Any:
    """Paths as text, so that the config can be written as YAML."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def validate(config: dict[str, Any], *plugins: Any, overrides: Iterable[str] = ()):
    """The validated cfg for ``config`` (a dict, as the YAML file would hold it) with ``plugins`` loaded.

    The dict goes through gym's own path: written to a YAML file, read with ``KEY=VALUE`` ``overrides``,
    validated. A bad config raises :class:`gym.api.ConfigError`, whose ``problems`` name each field."""
    import yaml

    from gym.config import read_config, validate_config
    from gym.plugin_manager import using_plugin_manager

    manager = _manager(plugins)
    with tempfile.TemporaryDirectory(prefix="gym-testing-") as folder, using_plugin_manager(manager):
        path = Path(folder) / "config.yml"
        path.write_text(yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True))
        return validate_config(read_config(path, overrides), manager)


def tiny_model(path: str | os.PathLike | None = None) -> Path:
    """The folder of gym's tiny test model (``builtin:tiny-llama-micro``: a random 2-layer Llama and its
    tokenizer, made once into the gym cache); with ``path``, a copy of it written there."""
    from gym.builtin import materialize_model

    folder = materialize_model(TINY_MODEL)
    if path is None:
        return folder
    shutil.copytree(folder, path, dirs_exist_ok=True)
    return Path(path)


def tiny_tokenizer():
    """The tokenizer of :func:`tiny_model` (a byte-level BPE with an EOS and a pad token, chatml template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model()))


def call_strategy(type_name: str, rows: list[dict[str, Any]], config: dict[str, Any] | None = None, *plugins: Any,
                  tokenizer: Any = None) -> dict[str, list]:
    """The columns the dataset strategy ``type_name`` makes of ``rows`` (one dict a row).

    ``config`` holds top-level keys (``base_model`` defaults to the tiny model) and, in ``datasets[0]``, the
    entry's own options; ``path`` and ``type`` are filled in. The strategy is built as ``gym run`` builds it,
    from the validated cfg and entry; ``tokenizer`` defaults to the one the config loads (the tiny model's)."""
    from gym.config import strategy_of

    config = dict(config or {})
    config.setdefault("base_model", TINY_MODEL)
    entries = [dict(e) for e in config.get("datasets") or [{}]]
    entries[0] = {"path": "rows.jsonl", **entries[0], "type": type_name}
    manager = _manager(plugins)
    cfg = validate({**config, "datasets": entries}, manager)
    strategy, _ = strategy_of(cfg.datasets[0], manager, manager.training_method(cfg).name)
    if tokenizer is None:
        from gym.model import load_tokenizer

        tokenizer = load_tokenizer(cfg)
    converter = strategy.load_builder()(tokenizer=tokenizer, cfg=cfg, dataset=cfg.datasets[0])
    names = list(dict.fromkeys(key for row in rows for key in row))
    return converter.process_batch({name: [row.get(name) for row in rows] for name in names})


def run_config(config: dict[str, Any], *plugins: Any, steps: int = 3, tmp_path: str | os.PathLike | None = None):
    """The ``RunResult`` of a short real run of ``config`` (``first_loss``, ``final_loss``, ``trainer`` ...).

    Defaults fill what ``config`` leaves out: the tiny model, ``steps`` steps of 2 rows of up to 128 tokens, a
    loss logged every step, no checkpoints, ``output_dir`` under ``tmp_path`` (or a temporary folder). The
    plugins' manager is the process-wide one for the whole run, so every phase and hook sees them."""
    from gym.plugin_manager import using_plugin_manager
    from gym.run import run

    if tmp_path is None:
        tmp_path = tempfile.mkdtemp(prefix="gym-testing-run-")
        atexit.register(shutil.rmtree, tmp_path, True)
    manager = _manager(plugins)
    with using_plugin_manager(manager):
        return run(validate({**_run_defaults(tmp_path, steps), **config}, manager), manager)


def _run_defaults(tmp_path: str | os.PathLike, steps: int = 3) -> dict[str, Any]:
    """What a test run leaves out: the tiny model, ``steps`` steps of 2 rows of up to 128 tokens, a loss logged
    every step, no checkpoints, ``output_dir`` under ``tmp_path``."""
    return {
        "base_model": TINY_MODEL, "max_steps": steps, "micro_batch_size": 2, "sequence_len": 128,
        "output_dir": str(Path(tmp_path) / "output"), "learning_rate": 1e-3, "logging_steps": 1,
        "save_strategy": "no",
    }


def run_processes(config: dict[str, Any], nproc: int, tmp_path: str | os.PathLike, overrides: Iterable[str] = (),
                  env: dict[str, str] | None = None, timeout: float = 600, launch: Iterable[str] = ()):
    """Run ``gym run`` on ``config`` over ``nproc`` processes on this machine (gloo on a CPU); the
    ``subprocess.CompletedProcess`` (``returncode``, ``stdout``, ``stderr``: text).

    ``config`` is written to ``tmp_path/config.yml``; the defaults of :func:`run_config` fill what it leaves out
    (``output_dir`` is ``tmp_path/output``). Each process uses one torch thread. ``launch`` adds options for
    the launcher (``["--nnodes", "2"]``). Only installed plugins take part (this runs the ``gym`` command)."""
    import subprocess
    import sys

    path = write_config(config, tmp_path)
    command = [sys.executable, "-m", "gym.cli", "run", str(path), "--nproc-per-node", str(nproc), *launch,
               *overrides]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    environment = {**inherited, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment,
                          cwd=path.parent)


# What a launcher leaves in the environment: a test run inside another run's process must not join that run.
_LAUNCHER_PREFIXES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_", "SLURM_", "GROUP_RANK", "ROLE_")


def write_config(config: dict[str, Any], tmp_path: str | os.PathLike) -> Path:
    """``config`` with :func:`run_config`'s defaults, written to ``tmp_path/config.yml`` (``output_dir``:
    ``tmp_path/output``); its path."""
    import yaml

    tmp = Path(tmp_path)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "config.yml"
    path.write_text(yaml.safe_dump(_plain({**_run_defaults(tmp), **config}), sort_keys=False))
    return path


def logged_losses(output_dir: str | os.PathLike) -> list[float]:
    """The training loss of every logged step of a finished run, from ``output_dir/trainer_state.json``."""
    import json

    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]
