"""TensorBoard: write the run's metrics as TensorBoard event files under ``output_dir`` (Axolotl's key).

    use_tensorboard: true

Each run writes one folder, ``output_dir/tensorboard/<date-time>`` (a resumed run adds a folder beside the
first); view them with ``tensorboard --logdir OUTPUT_DIR/tensorboard``. Scalars use the names of
:mod:`gym.plugins.tracking` (shared by every tracker); the redacted config is the text summary ``config``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field

from gym.api import StrictConfig, hookimpl
from gym.plugins import tracking

NAME = "tensorboard"
FOLDER = "tensorboard"


class TensorboardConfig(StrictConfig):
    use_tensorboard: bool | None = Field(
        None, description="Write TensorBoard event files under output_dir/tensorboard "
        "(view: tensorboard --logdir OUTPUT_DIR/tensorboard).")


def enabled(cfg: Any) -> bool:
    return cfg.use_tensorboard is True


@hookimpl
def gym_config_schema():
    return TensorboardConfig


@hookimpl
def gym_validate_config(cfg):
    if not enabled(cfg):
        return None
    return tracking.missing_package("use_tensorboard", "tensorboard", "tensorboard", "TensorBoard") or None


@hookimpl
def gym_callbacks(cfg):
    if not enabled(cfg):
        return None
    return [tracking.callback(cfg, TensorboardTracker())]


@hookimpl
def gym_after_train(cfg, output_dir):
    if enabled(cfg):
        tracking.finish(cfg, NAME, output_dir)


class TensorboardTracker(tracking.Tracker):
    name = NAME

    def __init__(self) -> None:
        self.writer: Any = None

    def start(self, cfg: Any, args: Any, model: Any) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(cfg.output_dir) / FOLDER / time.strftime("%Y%m%d-%H%M%S")
        self.writer = SummaryWriter(log_dir=str(folder))
        config = yaml.safe_dump(tracking.config_params(cfg), sort_keys=False, allow_unicode=True)
        self.writer.add_text("config", "```yaml\n" + config + "```", global_step=0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self, failed: bool) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
