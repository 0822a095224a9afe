"""Console output on a terminal: the training bar carries the latest figures; no dict is printed per log."""

from __future__ import annotations

from types import SimpleNamespace


class Bar:
    def __init__(self) -> None:
        self.postfix = None
        self.written: list[str] = []

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text

    def write(self, text):
        self.written.append(text)


def test_the_bar_shows_loss_lr_and_eval_loss_instead_of_printing_dicts():
    from gym.output import terminal_progress_callback

    callback = terminal_progress_callback()
    state = SimpleNamespace(is_world_process_zero=True)
    callback.shown = {}
    callback.training_bar = bar = Bar()
    callback.on_log(None, state, None, logs={"loss": 1.234567, "learning_rate": 0.0001234, "grad_norm": 3.0})
    assert bar.postfix == "loss 1.2346, lr 0.000123"
    callback.on_log(None, state, None, logs={"eval_loss": 0.5, "eval_runtime": 0.2})
    callback.on_log(None, state, None, logs={"loss": 0.9, "learning_rate": 0.0001, "tokens_per_second": 1234.5})
    assert bar.postfix == "loss 0.9000, lr 0.0001, eval loss 0.5000, tokens/s 1,234"
    assert bar.written == []
