"""The loss watchdog plugin stops a run whose loss stays above the threshold, and does nothing unless asked."""

from __future__ import annotations

from gym.plugin_manager import get_plugin_manager
from gym.plugins import loss_watchdog


def make_cfg(**keys):
    data = {"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "alpaca"}], **keys}
    return get_plugin_manager().schema().model.model_validate(data)


def test_no_threshold_no_callback():
    assert loss_watchdog.gym_callbacks(make_cfg()) is None
    callbacks = [c for _, r in get_plugin_manager().call_each("gym_callbacks", cfg=make_cfg()) for c in r or ()]
    assert not any(type(c).__name__ == "LossWatchdog" for c in callbacks)


def test_stops_after_patience_losses_in_a_row_above_threshold():
    from transformers import TrainerControl, TrainerState

    (watchdog,) = loss_watchdog.gym_callbacks(make_cfg(loss_watchdog_threshold=5.0, loss_watchdog_patience=2))
    state, control = TrainerState(), TrainerControl()
    for step, loss in enumerate([6.0, 4.0, 6.0, 7.0], start=1):
        state.global_step = step
        watchdog.on_log(None, state, control, logs={"loss": loss})
        if step < 4:
            assert not control.should_training_stop, f"stopped early at step {step}"
    assert control.should_training_stop
    assert watchdog.gym_metrics == {"loss_watchdog_stopped_at_step": 4}


def test_patience_without_threshold_is_a_config_problem():
    (problem,) = loss_watchdog.gym_validate_config(make_cfg(loss_watchdog_patience=3))
    assert problem.field == "loss_watchdog_patience" and "loss_watchdog_threshold" in problem.message
