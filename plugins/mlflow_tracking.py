"""MLflow: log a run to an MLflow tracking store (Axolotl's keys).

    mlflow_tracking_uri: sqlite:///mlflow.db   # or http://host:5000; unset: MLFLOW_TRACKING_URI / MLflow's default
    mlflow_experiment_name: my-experiment      # created when missing; unset: MLFLOW_EXPERIMENT_NAME / Default
    mlflow_run_name: run-1
    hf_mlflow_log_artifacts: true              # upload every saved checkpoint and the final model as artifacts
    use_mlflow: true                           # on by itself when mlflow_tracking_uri or the experiment is set

Metrics use the names of :mod:`gym.plugins.tracking` (shared by every tracker); the redacted config is logged as
the run's params, flattened (``datasets.0.path``). gym talks to the store through ``MlflowClient`` only, so it
never changes the process's active MLflow run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from gym.api import StrictConfig, hookimpl
from gym.plugins import tracking

NAME = "mlflow"
MAX_PARAM_LENGTH = 6000  # MLflow refuses longer param values
BATCH = 100  # params / metrics per log_batch call


class MlflowConfig(StrictConfig):
    use_mlflow: bool | None = Field(
        None, description="Log to MLflow (on by itself when mlflow_tracking_uri or mlflow_experiment_name is set; "
        "false turns it off).")
    mlflow_tracking_uri: str | None = Field(
        None, description="The tracking store: `sqlite:///mlflow.db`, `http://host:5000`, ... (unset: "
        "MLFLOW_TRACKING_URI, else MLflow's default).")
    mlflow_experiment_name: str | None = Field(
        None, description="The experiment to log the run to, created when missing (unset: MLFLOW_EXPERIMENT_NAME, "
        "else MLflow's Default experiment).")
    mlflow_run_name: str | None = Field(None, description="The run's name in MLflow.")
    hf_mlflow_log_artifacts: bool | None = Field(
        None, description="Upload every saved checkpoint, and the final model, to the run's artifacts.")


def enabled(cfg: Any) -> bool:
    if cfg.use_mlflow is False:
        return False
    return cfg.use_mlflow is True or tracking.asked(cfg.mlflow_tracking_uri) or tracking.asked(
        cfg.mlflow_experiment_name)


@hookimpl
def gym_config_schema():
    return MlflowConfig


@hookimpl
def gym_validate_config(cfg):
    if cfg.use_mlflow is False:
        return None
    if not enabled(cfg):
        return tracking.orphan_keys(cfg, ("mlflow_run_name", "hf_mlflow_log_artifacts"),
                                    "set mlflow_tracking_uri or mlflow_experiment_name (or use_mlflow: true)") or None
    key = next(k for k in ("mlflow_tracking_uri", "mlflow_experiment_name", "use_mlflow")
               if tracking.asked(getattr(cfg, k)))
    return tracking.missing_package(key, "mlflow", "mlflow", "MLflow") or None


@hookimpl
def gym_callbacks(cfg):
    if not enabled(cfg):
        return None
    return [tracking.callback(cfg, MlflowTracker())]


@hookimpl
def gym_after_train(cfg, output_dir):
    if enabled(cfg):
        tracking.finish(cfg, NAME, output_dir)


class MlflowTracker(tracking.Tracker):
    name = NAME

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id: str | None = None
        self.cfg: Any = None

    def start(self, cfg: Any, args: Any, model: Any) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.client = MlflowClient(tracking_uri=cfg.mlflow_tracking_uri or None)
        experiment_name = cfg.mlflow_experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        experiment_id = "0"  # MLflow's Default experiment
        if experiment_name:
            found = self.client.get_experiment_by_name(experiment_name)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment_name)
        run = self.client.create_run(experiment_id, run_name=cfg.mlflow_run_name or None,
                                     tags={"gym.output_dir": str(Path(cfg.output_dir).resolve())})
        self.run_id = run.info.run_id
        params = [Param(key, value[:MAX_PARAM_LENGTH]) for key, value in tracking.flat_params(cfg).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, value, now, step) for key, value in metrics.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + BATCH])

    def checkpoint(self, folder: Path, step: int) -> None:
        if self.cfg.hf_mlflow_log_artifacts:
            self.client.log_artifacts(self.run_id, str(folder), artifact_path=folder.name)

    def model(self, output_dir: Path) -> None:
        if self.cfg.hf_mlflow_log_artifacts:
            for path in sorted(output_dir.iterdir()):  # the final model's files, not checkpoints or tracker folders
                if path.is_file() and not path.name.startswith("."):
                    self.client.log_artifact(self.run_id, str(path), artifact_path="model")

    def close(self, failed: bool) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
            self.run_id = None
