"""Weights & Biases: log a run to W&B (Axolotl's keys).

    wandb_project: my-project      # turns it on (or use_wandb: true, project from WANDB_PROJECT)
    wandb_entity: my-team
    wandb_name: run-1
    wandb_run_id: abc123           # resume / append to this run id
    wandb_mode: offline            # online (default), offline (no network: `wandb sync` later), disabled
    wandb_watch: gradients         # gradients / parameters / all: histograms every logging step
    wandb_log_model: end           # end: the final model as an artifact; checkpoint: every saved checkpoint

The run's files go under ``output_dir/wandb``. Metric names are those of :mod:`gym.plugins.tracking`, shared by
every tracker; the redacted config is the run's config.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from gym.api import ConfigProblem, StrictConfig, hookimpl, say
from gym.plugins import tracking

NAME = "wandb"
KEYS = ("wandb_entity", "wandb_name", "wandb_run_id", "wandb_watch", "wandb_log_model")


class WandbConfig(StrictConfig):
    use_wandb: bool | None = Field(
        None, description="Log to Weights & Biases (on by itself when wandb_project is set; false turns it off).")
    wandb_project: str | None = Field(None, description="The W&B project to log the run to; setting it turns W&B on.")
    wandb_entity: str | None = Field(None, description="The W&B team or user the project belongs to.")
    wandb_name: str | None = Field(None, description="The run's display name in W&B.")
    wandb_run_id: str | None = Field(None, description="The run id: an existing id appends to (resumes) that run.")
    wandb_mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="online (default), offline (files only, no network; upload later with `wandb sync`), "
        "or disabled (no W&B at all).")
    wandb_watch: Literal["gradients", "parameters", "all"] | None = Field(
        None, description="Log histograms of the gradients, the parameters or both every logging step.")
    wandb_log_model: Literal["end", "checkpoint"] | None = Field(
        None, description="Upload the model as a W&B artifact: `end` (the final model) or `checkpoint` (every saved "
        "checkpoint, and the final model).")

    @field_validator("wandb_watch", "wandb_log_model", mode="before")
    @classmethod
    def _booleans(cls, value: Any, info: ValidationInfo) -> Any:
        """``false`` (as Axolotl configs write it) is off; ``true`` is the usual choice (gradients / end)."""
        word = value.strip().lower() if isinstance(value, str) else value
        if word in (False, "false", "none", ""):
            return None
        if word in (True, "true"):
            return "gradients" if info.field_name == "wandb_watch" else "end"
        return value


def enabled(cfg: Any) -> bool:
    if cfg.use_wandb is False or cfg.wandb_mode == "disabled":
        return False
    return cfg.use_wandb is True or tracking.asked(cfg.wandb_project)


@hookimpl
def gym_config_schema():
    return WandbConfig


@hookimpl
def gym_validate_config(cfg):
    if cfg.use_wandb is False or cfg.wandb_mode == "disabled":
        return None
    if not enabled(cfg):
        problems = tracking.orphan_keys(cfg, (*KEYS, "wandb_mode"), "set wandb_project (or use_wandb: true)")
        return problems or None
    key = "wandb_project" if tracking.asked(cfg.wandb_project) else "use_wandb"
    problems = tracking.missing_package(key, "wandb", "wandb", "Weights & Biases")
    if (cfg.wandb_mode or os.environ.get("WANDB_MODE") or "online") == "online" and not _has_login():
        problems.append(ConfigProblem(key, "logging to W&B online needs a login: `wandb login` or WANDB_API_KEY; "
                                           "or wandb_mode: offline (upload later with `wandb sync`)"))
    return problems or None


def _has_login() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    netrc = [Path(os.environ["NETRC"])] if os.environ.get("NETRC") else [Path("~/.netrc"), Path("~/_netrc")]
    return tracking.netrc_mentions(host, *netrc)


@hookimpl
def gym_callbacks(cfg):
    if not enabled(cfg):
        return None
    return [tracking.callback(cfg, WandbTracker())]


@hookimpl
def gym_after_train(cfg, output_dir):
    if enabled(cfg):
        tracking.finish(cfg, NAME, output_dir)


class WandbTracker(tracking.Tracker):
    name = NAME

    def __init__(self) -> None:
        self.run: Any = None
        self.cfg: Any = None

    def start(self, cfg: Any, args: Any, model: Any) -> None:
        import wandb

        self.cfg = cfg
        folder = Path(cfg.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.wandb_project or None,
            entity=cfg.wandb_entity or None,
            name=cfg.wandb_name or None,
            id=cfg.wandb_run_id or None,
            resume="allow" if cfg.wandb_run_id else None,
            mode=cfg.wandb_mode or None,
            dir=str(folder),
            config=tracking.config_params(cfg),
            reinit="finish_previous",  # the global wandb.run: wandb.watch's hooks log through it
            settings=wandb.Settings(quiet=True),
        )
        where = (f"{Path(self.run.dir).parent} (offline; upload it later with `wandb sync`)" if self.run.offline
                 else self.run.url)
        say(f"wandb: logging to {where}")
        if cfg.wandb_watch and model is not None:
            self.run.watch(model, log=cfg.wandb_watch, log_freq=max(int(args.logging_steps or 1), 1))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, float]) -> None:
        self.run.summary.update(metrics)

    def checkpoint(self, folder: Path, step: int) -> None:
        if self.cfg.wandb_log_model == "checkpoint":
            self._upload(folder, aliases=[f"step-{step}"])

    def model(self, output_dir: Path) -> None:
        if self.cfg.wandb_log_model:
            self._upload(output_dir, aliases=["final"], top_level_only=True)

    def _upload(self, folder: Path, aliases: list[str], top_level_only: bool = False) -> None:
        import wandb

        artifact = wandb.Artifact(name=f"model-{self.run.id}", type="model")
        if top_level_only:  # the final model's files, not the checkpoints, tracker folders or run records
            for path in sorted(folder.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    artifact.add_file(str(path))
        else:
            artifact.add_dir(str(folder))
        self.run.log_artifact(artifact, aliases=aliases)

    def close(self, failed: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
