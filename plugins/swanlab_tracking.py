"""SwanLab: log a run to SwanLab, in the cloud or as local files (Axolotl's keys).

    swanlab_project: my-project    # turns it on (or use_swanlab: true)
    swanlab_experiment_name: run-1
    swanlab_description: ...
    swanlab_workspace: my-team
    swanlab_mode: offline          # cloud (default) / offline (files under output_dir/swanlog; `swanlab sync` later)
                                   # / local (needs swanlab[dashboard]) / disabled
    swanlab_api_key: ...           # a secret, redacted everywhere (or SWANLAB_API_KEY / `swanlab login`)
    swanlab_web_host / swanlab_api_host: a private SwanLab deployment

Metrics use the names of :mod:`gym.plugins.tracking` (shared by every tracker); the redacted config is the
experiment's config. Not supported yet (an error when set): completion tables (``swanlab_log_completions``
and its interval / buffer), model upload (``swanlab_log_model``), Lark notifications.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr

from gym.api import ConfigProblem, StrictConfig, hookimpl
from gym.plugins import tracking

NAME = "swanlab"
FOLDER = "swanlog"
SETTINGS = ("swanlab_experiment_name", "swanlab_description", "swanlab_workspace", "swanlab_mode",
            "swanlab_api_key", "swanlab_web_host", "swanlab_api_host")
UNSUPPORTED = {
    "swanlab_log_completions": "gym logs no completion tables yet",
    "swanlab_completion_log_interval": "gym logs no completion tables yet",
    "swanlab_completion_max_buffer": "gym logs no completion tables yet",
    "swanlab_log_model": "gym uploads no models to SwanLab (Axolotl does not either)",
    "swanlab_lark_webhook_url": "gym sends no Lark notifications",
    "swanlab_lark_secret": "gym sends no Lark notifications",
}


class SwanlabConfig(StrictConfig):
    use_swanlab: bool | None = Field(
        None, description="Log to SwanLab (on by itself when swanlab_project is set; false turns it off).")
    swanlab_project: str | None = Field(None, description="The SwanLab project; setting it turns SwanLab on.")
    swanlab_experiment_name: str | None = Field(None, description="The experiment's name in SwanLab.")
    swanlab_description: str | None = Field(None, description="The experiment's description.")
    swanlab_workspace: str | None = Field(None, description="The SwanLab workspace (organisation or user).")
    swanlab_mode: Literal["cloud", "online", "offline", "local", "disabled"] | None = Field(
        None, description="cloud (default; also `online`), offline (files under output_dir/swanlog, upload later "
        "with `swanlab sync`), local (files and a local dashboard; needs swanlab[dashboard]) or disabled.")
    swanlab_api_key: SecretStr | None = Field(
        None, description="The SwanLab API key (a secret; or SWANLAB_API_KEY, or `swanlab login`).")
    swanlab_web_host: str | None = Field(None, description="Web address of a private SwanLab deployment.")
    swanlab_api_host: str | None = Field(None, description="API address of a private SwanLab deployment.")
    swanlab_log_model: bool | None = Field(None, description="Not supported (an error when true).")
    swanlab_log_completions: bool | None = Field(None, description="Not supported yet (an error when true).")
    swanlab_completion_log_interval: int | None = Field(None, description="Not supported yet (an error when set).")
    swanlab_completion_max_buffer: int | None = Field(None, description="Not supported yet (an error when set).")
    swanlab_lark_webhook_url: SecretStr | None = Field(None, description="Not supported (an error when set).")
    swanlab_lark_secret: SecretStr | None = Field(None, description="Not supported (an error when set).")


def enabled(cfg: Any) -> bool:
    if cfg.use_swanlab is False or cfg.swanlab_mode == "disabled":
        return False
    return cfg.use_swanlab is True or tracking.asked(cfg.swanlab_project)


@hookimpl
def gym_config_schema():
    return SwanlabConfig


@hookimpl
def gym_validate_config(cfg):
    problems = [ConfigProblem(key, f"not supported: {why}") for key, why in UNSUPPORTED.items()
                if tracking.asked(getattr(cfg, key))]
    if cfg.use_swanlab is False or cfg.swanlab_mode == "disabled":
        return problems or None
    if not enabled(cfg):
        return problems + tracking.orphan_keys(cfg, SETTINGS, "set swanlab_project (or use_swanlab: true)") or None
    key = "swanlab_project" if tracking.asked(cfg.swanlab_project) else "use_swanlab"
    problems += tracking.missing_package(key, "swanlab", "swanlab", "SwanLab")
    if cfg.swanlab_mode in (None, "cloud", "online") and not _has_login(cfg):
        problems.append(ConfigProblem(key, "logging to SwanLab's cloud needs a login: swanlab_api_key, "
                                           "SWANLAB_API_KEY or `swanlab login`; or swanlab_mode: offline"))
    if cfg.swanlab_mode == "local" and importlib.util.find_spec("swanboard") is None:
        problems.append(ConfigProblem("swanlab_mode", "local needs SwanLab's dashboard: pip install "
                                                      "'swanlab[dashboard]'; or swanlab_mode: offline (files only)"))
    return problems or None


def _has_login(cfg: Any) -> bool:
    if cfg.swanlab_api_key is not None or os.environ.get("SWANLAB_API_KEY"):
        return True
    root = Path(os.environ.get("SWANLAB_ROOT") or os.environ.get("SWANLAB_SAVE_DIR") or "~/.swanlab")
    host = urlparse(cfg.swanlab_api_host or os.environ.get("SWANLAB_API_HOST") or "https://api.swanlab.cn").hostname
    return tracking.netrc_mentions(host or "swanlab", Path(".swanlab/.netrc"), root / ".netrc")


@hookimpl
def gym_callbacks(cfg):
    if not enabled(cfg):
        return None
    return [tracking.callback(cfg, SwanlabTracker())]


@hookimpl
def gym_after_train(cfg, output_dir):
    if enabled(cfg):
        tracking.finish(cfg, NAME, output_dir)


class SwanlabTracker(tracking.Tracker):
    name = NAME

    def __init__(self) -> None:
        self.run: Any = None

    def start(self, cfg: Any, args: Any, model: Any) -> None:
        import swanlab

        chosen = {"api_key": cfg.swanlab_api_key.get_secret_value() if cfg.swanlab_api_key else None,
                  "web_host": cfg.swanlab_web_host, "api_host": cfg.swanlab_api_host}
        chosen = {key: value for key, value in chosen.items() if value}
        mode = {"cloud": "online"}.get(cfg.swanlab_mode or "", cfg.swanlab_mode)
        self.run = swanlab.init(
            project=cfg.swanlab_project or None,
            workspace=cfg.swanlab_workspace or None,
            name=cfg.swanlab_experiment_name or None,
            description=cfg.swanlab_description or None,
            mode=mode or None,
            log_dir=str(Path(cfg.output_dir) / FOLDER),
            config=tracking.config_params(cfg),
            settings=swanlab.Settings(**chosen) if chosen else None,
            reinit=True,
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self, failed: bool) -> None:
        if self.run is not None:
            self.run.finish(state="crashed") if failed else self.run.finish()
            self.run = None
