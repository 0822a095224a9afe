"""What every experiment tracker logs, under which names and when; shared by the tracker plugins (no entry point).

Every tracker gets the same names::

    train/loss, train/learning_rate, train/grad_norm,      every logging step (the trainer's logs; other keys a
    train/epoch, train/tokens_per_second                    method logs, such as DPO's, as train/<key>)
    eval/loss (and eval/<key> for the other eval_ keys)     every evaluation
    data/rows_read, data/dropped/<reason>,                  once, when training starts (the data preparation's
    data/train/tokens, data/train/packing_efficiency, ...   figures, ``args.gym_data``)
    final/<metric>                                          once, at the end: the run's final metrics as
                                                            gym_results.json holds them (train_loss,
                                                            tokens_per_second, task-eval scores, ...)

and the resolved config with secrets redacted (:func:`gym.api.redacted`) as the run's params / config.

A tracker plugin supplies a :class:`Tracker` (start, log, finish); :func:`callback` wraps it in the one
``TrainerCallback`` all trackers share, and :func:`finish` (from the plugin's ``gym_after_train``) logs the final
metrics and closes the run. Only the main process logs. ``train/tokens_per_second`` counts the tokens that carry
a loss (or, for methods without labels, the attended tokens) in the training forward passes since the previous
log, on the main process, times the number of processes.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import numbers
import time
from pathlib import Path
from typing import Any

from gym.api import ConfigProblem, is_main_process, redacted

# The trainer's end-of-training log: its figures are in the final metrics (final/train_loss, ...).
TRAINER_SUMMARY_KEYS = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}
)
RESULTS_FILE = "gym_results.json"


# ------------------------------------------------------------------------------------------- names


def step_metrics(logs: dict[str, Any] | None) -> dict[str, float]:
    """A trainer log dict under gym's tracker names: ``eval_<key>`` -> ``eval/<key>``, else ``train/<key>``;
    numbers only, the end-of-training summary left to the final metrics."""
    out: dict[str, float] = {}
    for key, value in (logs or {}).items():
        if key in TRAINER_SUMMARY_KEYS or not _is_number(value):
            continue
        name = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
        out[name] = float(value)
    return out


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The run's final metrics (numbers only) as ``final/<name>``."""
    return {f"final/{key}": float(value) for key, value in metrics.items() if _is_number(value)}


def data_metrics(figures: dict[str, Any] | None) -> dict[str, float]:
    """The data preparation's figures, already under their flat ``data/...`` names."""
    return {key: float(value) for key, value in (figures or {}).items() if _is_number(value)}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy scalars included


def config_params(cfg: Any) -> dict[str, Any]:
    """The resolved config, secrets redacted (``SecretStr`` fields are ``**********``), as nested plain data."""
    return redacted(cfg)


def flat_params(cfg: Any) -> dict[str, str]:
    """The redacted config as flat ``{"datasets.0.path": "..."}`` strings, for trackers whose params are flat."""
    out: dict[str, str] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(value, list) and value and all(isinstance(v, (dict, list)) for v in value):
            for i, item in enumerate(value):
                walk(item, f"{prefix}.{i}")
        else:
            out[prefix] = value if isinstance(value, str) else json.dumps(value, default=str)

    walk(config_params(cfg), "")
    return out


# ------------------------------------------------------------------------------- validate-time checks


def asked(value: Any) -> bool:
    """Whether a key's value asks for something: an empty key (``wandb_project:``) or ``false`` asks for nothing."""
    return value is not None and value is not False and value != ""


def missing_package(key: str, package: str, extra: str, tracker: str) -> list[ConfigProblem]:
    """A ConfigProblem on ``key`` when ``package`` is not importable: said at ``gym validate``, before any data."""
    if importlib.util.find_spec(package) is not None:
        return []
    return [ConfigProblem(key, f"logs to {tracker} with the {package} package, which is not installed: "
                               f"pip install 'gym-llm[{extra}]'")]


def netrc_mentions(host: str, *paths: Path) -> bool:
    """Whether one of the netrc files ``paths`` holds a login for ``host`` (how `wandb login` / `swanlab login`
    save keys); read as text, never printed."""
    for path in paths:
        try:
            if path.expanduser().is_file() and host in path.expanduser().read_text(errors="ignore"):
                return True
        except OSError:
            continue
    return False


def orphan_keys(cfg: Any, keys: tuple[str, ...], switch: str) -> list[ConfigProblem]:
    """Problems for ``keys`` that are set while their tracker is off (they would be silently ignored)."""
    return [ConfigProblem(key, f"has no effect: the tracker is off; {switch}")
            for key in keys if asked(getattr(cfg, key, None))]


# ---------------------------------------------------------------------------------------- trackers


class Tracker:
    """One tracker's run. Subclasses implement :meth:`start`, :meth:`log` and :meth:`close`; the rest is
    optional. Called on the main process only."""

    name = "tracker"

    def start(self, cfg: Any, args: Any, model: Any) -> None:
        raise NotImplementedError

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def summary(self, metrics: dict[str, float]) -> None:
        """The final metrics once more as the run's summary, where the tracker has one."""

    def checkpoint(self, folder: Path, step: int) -> None:
        """A checkpoint was saved (for trackers asked to upload them)."""

    def model(self, output_dir: Path) -> None:
        """The final model was saved in ``output_dir`` (for trackers asked to upload it)."""

    def close(self, failed: bool) -> None:
        raise NotImplementedError


_OPEN: dict[tuple[str, str], Any] = {}  # (tracker name, output_dir) -> its callback, until finish()


def _key(name: str, output_dir: Any) -> tuple[str, str]:
    return name, str(Path(str(output_dir)).expanduser().resolve())


def callback(cfg: Any, tracker: Tracker):
    """The ``TrainerCallback`` that feeds ``tracker`` gym's names (see the module docstring)."""
    from transformers import TrainerCallback

    class TrackerCallback(TrainerCallback):
        def __init__(self) -> None:
            self.tracker = tracker
            self.started = False
            self.finished = False
            self.step = 0
            self._tokens: Any = 0
            self._counted_at = time.perf_counter()
            self._handle = None
            self._world = 1

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if self.started or not (is_main_process() and state.is_world_process_zero):
                return
            self.tracker.start(cfg, args, model)
            self.started = True
            _OPEN[_key(tracker.name, cfg.output_dir)] = self
            atexit.register(self._close_unfinished)
            self.step = state.global_step
            self._world = max(int(getattr(args, "world_size", 1) or 1), 1)
            data = data_metrics(getattr(args, "gym_data", None))
            if data:
                self.tracker.log(data, step=state.global_step)
            if model is not None:
                self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
            self._counted_at = time.perf_counter()

        def _count(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            if not module.training:
                return
            labels, mask = kwargs.get("labels"), kwargs.get("attention_mask")
            if labels is not None and getattr(labels, "ndim", 0) >= 2:  # token labels (not a class per row)
                self._tokens = self._tokens + (labels[..., 1:] != -100).sum()
            elif mask is not None and hasattr(mask, "sum"):
                self._tokens = self._tokens + mask.sum()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not self.started or self.finished:
                return
            metrics = step_metrics(logs)
            if "train/loss" in metrics:
                now = time.perf_counter()
                tokens, self._tokens = int(self._tokens), 0
                if tokens and now > self._counted_at:
                    metrics["train/tokens_per_second"] = round(tokens * self._world / (now - self._counted_at), 2)
                self._counted_at = now
            if metrics:
                self.step = state.global_step
                self.tracker.log(metrics, step=state.global_step)

        def on_save(self, args, state, control, **kwargs):
            if self.started and not self.finished:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    self.tracker.checkpoint(folder, state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            if self._handle is not None:
                self._handle.remove()
                self._handle = None
            self.step = state.global_step

        def finish(self, output_dir: Path) -> None:
            """Log the final metrics from ``gym_results.json`` and close the run."""
            if self.finished:
                return
            results = Path(output_dir) / RESULTS_FILE
            metrics = json.loads(results.read_text()).get("metrics", {}) if results.exists() else {}
            final = final_metrics(metrics)
            if final:
                self.tracker.log(final, step=self.step)
                self.tracker.summary(final)
            self.tracker.model(Path(output_dir))
            self.finished = True
            self.tracker.close(failed=False)

        def _close_unfinished(self) -> None:
            """At exit, a run that never reached the end (an error after training started) is closed as failed."""
            if self.started and not self.finished:
                self.finished = True
                try:
                    self.tracker.close(failed=True)
                except Exception:  # noqa: BLE001 - the interpreter is exiting; nothing else can be done
                    pass

    return TrackerCallback()


def finish(cfg: Any, name: str, output_dir: str) -> None:
    """From a tracker plugin's ``gym_after_train``: final metrics and close, for the run this process started."""
    cb = _OPEN.pop(_key(name, output_dir), None) or _OPEN.pop(_key(name, cfg.output_dir), None)
    if cb is not None:
        cb.finish(Path(output_dir))
