"""Loss watchdog: stop training when the loss stays above a threshold (a diverged run) for N logged steps.

    loss_watchdog_threshold: 5.0
    loss_watchdog_patience: 3     # logged losses in a row above the threshold (default 3)

The run stops as after ``max_steps``: the model trained so far is saved, and the stop is printed and
counted in the final metrics (``loss_watchdog_stopped_at_step``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gym.api import hookimpl, say
from gym.api import ConfigProblem


class LossWatchdogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    loss_watchdog_threshold: float | None = Field(
        None, gt=0, description="Stop when the training loss stays above this value (unset: no watchdog)."
    )
    loss_watchdog_patience: int | None = Field(
        None, ge=1, description="How many logged losses in a row above the threshold stop the run (default 3)."
    )


@hookimpl
def gym_config_schema():
    return LossWatchdogConfig


@hookimpl
def gym_validate_config(cfg):
    if cfg.loss_watchdog_patience is not None and cfg.loss_watchdog_threshold is None:
        return [ConfigProblem("loss_watchdog_patience", "needs loss_watchdog_threshold")]
    return None


@hookimpl
def gym_callbacks(cfg):
    if cfg.loss_watchdog_threshold is None:
        return None
    return [make_callback(cfg.loss_watchdog_threshold, cfg.loss_watchdog_patience or 3)]


def make_callback(threshold: float, patience: int):
    from transformers import TrainerCallback

    class LossWatchdog(TrainerCallback):
        """Counts logged losses above ``threshold`` in a row; at ``patience`` it asks the trainer to stop."""

        def __init__(self) -> None:
            self.strikes = 0
            self.gym_metrics: dict[str, int] = {}
            self.gym_stop_reason: str | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is None:
                return control
            self.strikes = self.strikes + 1 if loss > threshold else 0
            if self.strikes >= patience:
                # every process sees the same (averaged) loss and stops at the same step; rank 0 says so
                say(f"loss watchdog: loss {loss:.4f} above {threshold} for {patience} logged steps in a row; "
                    f"stopping at step {state.global_step}")
                self.gym_metrics["loss_watchdog_stopped_at_step"] = state.global_step
                self.gym_stop_reason = (
                    f"loss watchdog at step {state.global_step}: loss above {threshold} for {patience} logged steps"
                )
                control.should_training_stop = True
            return control

    return LossWatchdog()
