"""trackio: log a run to trackio's local database, optionally synced to a Hugging Face Space (Axolotl's keys).

    trackio_project_name: my-project   # turns it on (or use_trackio: true; the project then defaults to "gym")
    trackio_run_name: run-1
    trackio_space_id: user/space       # also sync the dashboard to this Space (needs the hub; untested here)

Runs are stored locally (TRACKIO_DIR, by default trackio's folder in the Hugging Face cache); view them with
``trackio show --project NAME``. Metrics use the names of :mod:`gym.plugins.tracking` (shared by every
tracker); the redacted config is the run's config.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from gym.api import StrictConfig, hookimpl, say
from gym.plugins import tracking

NAME = "trackio"
DEFAULT_PROJECT = "gym"


class TrackioConfig(StrictConfig):
    use_trackio: bool | None = Field(
        None, description="Log to trackio (on by itself when trackio_project_name is set; false turns it off).")
    trackio_project_name: str | None = Field(
        None, description="The trackio project; setting it turns trackio on (use_trackio alone: project `gym`).")
    trackio_run_name: str | None = Field(None, description="The run's name in trackio.")
    trackio_space_id: str | None = Field(
        None, description="A Hugging Face Space (user/name) to sync the dashboard to; unset: local only.")


def enabled(cfg: Any) -> bool:
    if cfg.use_trackio is False:
        return False
    return cfg.use_trackio is True or tracking.asked(cfg.trackio_project_name)


@hookimpl
def gym_config_schema():
    return TrackioConfig


@hookimpl
def gym_validate_config(cfg):
    if cfg.use_trackio is False:
        return None
    if not enabled(cfg):
        return tracking.orphan_keys(cfg, ("trackio_run_name", "trackio_space_id"),
                                    "set trackio_project_name (or use_trackio: true)") or None
    key = "trackio_project_name" if tracking.asked(cfg.trackio_project_name) else "use_trackio"
    return tracking.missing_package(key, "trackio", "trackio", "trackio") or None


@hookimpl
def gym_callbacks(cfg):
    if not enabled(cfg):
        return None
    return [tracking.callback(cfg, TrackioTracker())]


@hookimpl
def gym_after_train(cfg, output_dir):
    if enabled(cfg):
        tracking.finish(cfg, NAME, output_dir)


class TrackioTracker(tracking.Tracker):
    name = NAME

    def __init__(self) -> None:
        self.run: Any = None

    def start(self, cfg: Any, args: Any, model: Any) -> None:
        import trackio

        project = cfg.trackio_project_name or DEFAULT_PROJECT
        self.run = trackio.init(project=project, name=cfg.trackio_run_name or None,
                                space_id=cfg.trackio_space_id or None, config=tracking.config_params(cfg),
                                embed=False, auto_log_gpu=False, auto_log_cpu=False)
        say(f"trackio: run {self.run.name} in project {project} (view: trackio show --project {project!r})")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self, failed: bool) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
