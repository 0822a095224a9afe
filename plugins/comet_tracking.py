"""Comet: log a run to Comet, online or as an offline archive (Axolotl's keys).

    use_comet: true                # or comet_project_name / comet_workspace turn it on
    comet_project_name: my-project
    comet_workspace: my-team
    comet_api_key: ...             # a secret: redacted everywhere (better: COMET_API_KEY or `comet login`)
    comet_online: false            # offline: an archive under output_dir/comet, uploaded later with `comet upload`
    comet_experiment_key: ...      # 32-50 alphanumerics: append to / name this experiment
    comet_mode: get_or_create      # create / get / get_or_create
    comet_experiment_config: {...} # more of comet_ml.ExperimentConfig's settings (name, tags, offline_directory ...)

gym logs its own metrics (the names of :mod:`gym.plugins.tracking`, shared by every tracker) and the redacted
config as parameters; Comet's automatic logging (code, git, environment, stdout, framework hooks) is off unless
``comet_experiment_config`` turns it on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr

from gym.api import ConfigProblem, StrictConfig, hookimpl, say
from gym.plugins import tracking

NAME = "comet"
QUIET = {  # Comet's automatic logging, off unless comet_experiment_config asks for it
    "auto_metric_logging": False, "auto_param_logging": False, "auto_output_logging": False, "log_code": False,
    "log_git_metadata": False, "log_git_patch": False, "log_env_details": False, "log_graph": False,
    "parse_args": False, "display_summary_level": 0,
}
SWITCHES = ("comet_project_name", "comet_workspace", "comet_api_key", "comet_experiment_key")


class CometConfig(StrictConfig):
    use_comet: bool | None = Field(
        None, description="Log to Comet (on by itself when comet_project_name, comet_workspace, comet_api_key or "
        "comet_experiment_key is set; false turns it off).")
    comet_api_key: SecretStr | None = Field(
        None, description="The Comet API key (a secret; better set COMET_API_KEY or run `comet login`).")
    comet_workspace: str | None = Field(None, description="The Comet workspace (default: your default workspace).")
    comet_project_name: str | None = Field(None, description="The Comet project (default: Uncategorized).")
    comet_experiment_key: str | None = Field(
        None, description="The experiment's key (32-50 alphanumerics): appends to that experiment or names a new one.")
    comet_mode: Literal["create", "get", "get_or_create"] | None = Field(
        None, description="create (always a new experiment), get (an existing one, by comet_experiment_key) or "
        "get_or_create (default).")
    comet_online: bool | None = Field(
        None, description="false: an offline archive under output_dir/comet (upload later with `comet upload`); "
        "default true.")
    comet_experiment_config: dict[str, Any] | None = Field(
        None, description="Further comet_ml.ExperimentConfig settings (name, tags, offline_directory, ...).")


def enabled(cfg: Any) -> bool:
    if cfg.use_comet is False:
        return False
    return cfg.use_comet is True or any(tracking.asked(getattr(cfg, key)) for key in SWITCHES)


def _has_login(cfg: Any) -> bool:
    if cfg.comet_api_key is not None or os.environ.get("COMET_API_KEY"):
        return True
    config = Path(os.environ.get("COMET_CONFIG") or Path.home() / ".comet.config").expanduser()
    return config.is_file() and "api_key" in config.read_text(errors="ignore")


@hookimpl
def gym_config_schema():
    return CometConfig


@hookimpl
def gym_validate_config(cfg):
    if cfg.use_comet is False:
        return None
    if not enabled(cfg):
        return tracking.orphan_keys(cfg, ("comet_mode", "comet_online", "comet_experiment_config"),
                                    "set comet_project_name (or use_comet: true)") or None
    key = "use_comet" if cfg.use_comet else next(k for k in SWITCHES if tracking.asked(getattr(cfg, k)))
    problems = tracking.missing_package(key, "comet_ml", "comet", "Comet")
    if cfg.comet_online is not False and not _has_login(cfg):
        problems.append(ConfigProblem(key, "logging to Comet online needs an API key: comet_api_key, COMET_API_KEY "
                                           "or `comet login`; or comet_online: false for an offline archive"))
    if cfg.comet_mode == "get" and not cfg.comet_experiment_key:
        problems.append(ConfigProblem("comet_mode", "get continues an existing experiment: set comet_experiment_key"))
    return problems or None


@hookimpl
def gym_callbacks(cfg):
    if not enabled(cfg):
        return None
    return [tracking.callback(cfg, CometTracker())]


@hookimpl
def gym_after_train(cfg, output_dir):
    if enabled(cfg):
        tracking.finish(cfg, NAME, output_dir)


class CometTracker(tracking.Tracker):
    name = NAME

    def __init__(self) -> None:
        self.experiment: Any = None

    def start(self, cfg: Any, args: Any, model: Any) -> None:
        os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")  # gym logs what it logs; no framework hooks
        import comet_ml

        settings = {**QUIET, **(cfg.comet_experiment_config or {})}
        if cfg.comet_online is False:
            settings.setdefault("offline_directory", str(Path(cfg.output_dir) / "comet"))
        try:
            config = comet_ml.ExperimentConfig(**settings)
        except TypeError as exc:
            from gym.api import ConfigError

            raise ConfigError(f"comet_experiment_config: {exc}") from None
        self.experiment = comet_ml.start(
            api_key=cfg.comet_api_key.get_secret_value() if cfg.comet_api_key else None,
            workspace=cfg.comet_workspace or None,
            project_name=cfg.comet_project_name or None,
            experiment_key=cfg.comet_experiment_key or None,
            mode=cfg.comet_mode or None,
            online=cfg.comet_online,
            experiment_config=config,
        )
        self.experiment.log_parameters(tracking.flat_params(cfg))
        if cfg.comet_online is False:
            say(f"comet: offline archive in {settings['offline_directory']} (upload it later with `comet upload`)")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.experiment.log_metrics(metrics, step=step)

    def close(self, failed: bool) -> None:
        if self.experiment is not None:
            self.experiment.end()
            self.experiment = None
