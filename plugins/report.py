"""The run report: ``output_dir/report.html`` after every run, and ``gym report`` to rebuild or compare runs.

The report is one self-contained HTML file (inline SVG charts, its own CSS and a small hover script; it needs no
network to open): loss (training and evaluation), learning rate, grad norm and throughput against steps; the
final metrics; the task evaluations before and after training; the data figures; the config, keys changed from
the defaults first; versions and hardware; and, when the run stopped early, why and at which step.

It is built only from the files a run leaves (``gym_results.json``, ``trainer_state.json``, ``gym_config.yml``),
so ``gym report OUTPUT_DIR`` rebuilds it at any time, also for a run that was killed (from its newest
``checkpoint-N/trainer_state.json``), and ``gym report RUN_A RUN_B ...`` draws several runs on the same axes with
their config differences side by side. Neither imports torch.

Its callback adds ``tokens_per_second`` and ``trained_tokens`` to each training entry of the logged history (see
:func:`throughput_callback`), so the throughput chart has data for every run, a killed one included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gym.api import GymError, hookimpl, say

REPORT_FILE = "report.html"
COMPARISON_FILE = "report-comparison.html"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


# ------------------------------------------------------------------------------------------------ hooks


@hookimpl
def gym_callbacks(cfg):
    return [throughput_callback()]


@hookimpl
def gym_after_train(cfg, output_dir):
    path = Path(output_dir) / REPORT_FILE
    try:
        write_report([Path(output_dir)], path)
    except (GymError, OSError, ValueError) as exc:  # the model is saved; say why the report is missing
        say(f"note: the run report could not be written: {exc}")
        return
    say(f"run report written to {path}")


@hookimpl
def gym_register_commands(cli):
    import click

    @cli.command(name="report")
    @click.argument("output_dirs", nargs=-1, required=True, metavar="OUTPUT_DIR [OUTPUT_DIR ...]")
    @click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
                  help=f"Where to write the HTML (default: OUTPUT_DIR/{REPORT_FILE} for one run, "
                  f"./{COMPARISON_FILE} for several).")
    def report_command(output_dirs, output):
        """Rebuild the run report from the files a run left (a killed run too, from its newest checkpoint);
        given several runs, draw them on the same axes and show their config differences side by side."""
        folders = [Path(p) for p in output_dirs]
        if output:
            target = Path(output)
        elif len(folders) == 1:
            target = folders[0] / REPORT_FILE
        else:
            target = Path(COMPARISON_FILE)
        runs = write_report(folders, target)
        for run in runs:
            if not run.finished:
                click.echo(f"{run.folder}: the run did not finish; rebuilt from {run.history_source}")
        click.echo(f"report written to {target}")


# ------------------------------------------------------------------------------------------- throughput


def throughput_callback():
    """A ``TrainerCallback`` that adds ``tokens_per_second`` (trained tokens per second of training since the
    previous log, evaluation time left out, all processes) and ``trained_tokens`` (so far) to each training entry
    of the logged history, so the history in ``trainer_state.json`` and in every checkpoint carries them.

    Tokens are counted as gym's summary and the trackers count them: those that carry a loss (shifted labels
    other than -100), or the attended tokens for methods without labels. The counts stay on the device until a
    log, when the trainer has just synchronised for the loss anyway: counting costs no extra synchronisation."""
    import time

    from transformers import TrainerCallback

    class Throughput(TrainerCallback):
        def __init__(self) -> None:
            self.pending: Any = 0  # a device tensor between logs
            self.total = 0
            self.since = time.perf_counter()
            self.paused = 0.0  # seconds spent evaluating since the previous log
            self.world = 1
            self.handle = None

        def count(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            import torch

            if not module.training or not torch.is_grad_enabled():  # a reference model's pass, generation
                return
            labels, mask = kwargs.get("labels"), kwargs.get("attention_mask")
            if labels is not None and hasattr(labels, "ndim"):
                self.pending = self.pending + (labels[..., 1:] != -100).sum()
            elif mask is not None and hasattr(mask, "sum"):
                self.pending = self.pending + mask.sum()

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.world = max(int(getattr(args, "world_size", 1) or 1), 1)
            earlier = [e["trained_tokens"] for e in state.log_history if "trained_tokens" in e]
            self.total = earlier[-1] if earlier else 0  # a resumed run goes on counting
            if model is not None and self.handle is None:
                self.handle = model.register_forward_pre_hook(self.count, with_kwargs=True)
            self.since, self.paused = time.perf_counter(), 0.0

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.paused += float((metrics or {}).get("eval_runtime") or 0.0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            entry = state.log_history[-1] if state.log_history else {}
            if "loss" not in (logs or {}) or entry.get("step") != state.global_step or "loss" not in entry:
                return
            now = time.perf_counter()
            tokens, self.pending = int(self.pending) * self.world, 0
            seconds = now - self.since - self.paused
            self.total += tokens
            entry["trained_tokens"] = self.total
            if tokens and seconds > 0:
                entry["tokens_per_second"] = round(tokens / seconds, 2)
            self.since, self.paused = now, 0.0

        def on_train_end(self, args, state, control, **kwargs):
            if self.handle is not None:
                self.handle.remove()
                self.handle = None

    return Throughput()


# ----------------------------------------------------------------------------------------- reading a run


@dataclass
class RunFiles:
    """What a run folder holds, read back: the config, the results record and the logged history."""

    folder: Path
    name: str
    config: dict[str, Any]
    config_source: str | None
    results: dict[str, Any] | None
    history: list[dict[str, Any]]
    history_source: str | None
    state: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None  # what ``gym evaluate`` wrote (eval_results.json), when it ran

    @property
    def finished(self) -> bool:
        return self.results is not None

    @property
    def stop_reason(self) -> str | None:
        return (self.results or {}).get("stop_reason")

    @property
    def steps(self) -> int | None:
        step = self.state.get("global_step")
        if step is None:
            step = (self.results or {}).get("metrics", {}).get("train_steps")
        return step

    @property
    def planned_steps(self) -> int | None:
        planned = (self.results or {}).get("planned_steps")
        if planned is None:
            planned = self.state.get("max_steps")
        return planned or None

    @property
    def metrics(self) -> dict[str, Any]:
        return (self.results or {}).get("metrics") or {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise GymError(f"{path} cannot be read as JSON ({exc}); was it cut short?") from None


def _newest_checkpoint_state(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))),
                   reverse=True)
    for _, checkpoint in found:
        state_file = checkpoint / "trainer_state.json"
        if state_file.is_file():
            try:
                return state_file, json.loads(state_file.read_text())
            except ValueError:
                continue  # cut short while written: the next older one
    return None


def read_run(folder: Path) -> RunFiles:
    """The run in ``folder``; a :class:`GymError` naming it when it is not a gym run or left nothing to show."""
    import yaml

    if not folder.is_dir():
        raise GymError(f"{folder} is not a folder (gym report takes the output_dir of a gym run)")
    results_file, state_file, config_file = (folder / "gym_results.json", folder / "trainer_state.json",
                                             folder / "gym_config.yml")
    results = _read_json(results_file) if results_file.is_file() else None
    state: dict[str, Any] | None = None
    source = None
    if state_file.is_file():
        state, source = _read_json(state_file), state_file.name
    # killed: the newest checkpoint's history. A checkpoint beyond the saved state means a later session (a
    # resumed run) was killed: the results left here are an earlier session's, stale.
    newest = _newest_checkpoint_state(folder)
    if newest is not None and (state is None or newest[1].get("global_step", 0) > state.get("global_step", 0)
                               or (results is None and newest[1].get("global_step", 0) == state.get("global_step"))):
        state, source, results = newest[1], str(newest[0].relative_to(folder)), None
    if results is None and state is None:
        if (folder / ".gym-run").exists() or config_file.is_file():
            raise GymError(f"{folder} is a gym run that has logged nothing yet (no trainer_state.json, no "
                           "checkpoint-N folder, no gym_results.json)")
        raise GymError(f"{folder} is not a gym run: it holds no gym_results.json, trainer_state.json or "
                       "checkpoint-N folder")
    config: dict[str, Any] = {}
    config_source = None
    if config_file.is_file():
        config = yaml.safe_load(config_file.read_text()) or {}
        config_source = config_file.name
    elif source and source != state_file.name:
        run_file = folder / Path(source).parent / "gym_run.json"
        if run_file.is_file():  # the checkpoint's record of its run: every key but those a resume may change
            config = (_read_json(run_file) or {}).get("settings") or {}
            config_source = str(run_file.relative_to(folder))
    state = state or {}
    history = list(state.get("log_history") or [])
    evaluation = _read_json(folder / EVAL_RESULTS_FILE) if (folder / EVAL_RESULTS_FILE).is_file() else None
    return RunFiles(folder, folder.resolve().name or str(folder), config, config_source, results, history, source,
                    {k: v for k, v in state.items() if k != "log_history"}, evaluation)


EVAL_RESULTS_FILE = "eval_results.json"  # written by ``gym evaluate`` (the evaluate plugin)


def read_runs(folders: Sequence[Path]) -> list[RunFiles]:
    runs = [read_run(Path(f)) for f in folders]
    names = [r.name for r in runs]
    for run in runs:  # two runs called "output": name them by their parent folder too
        if names.count(run.name) > 1:
            resolved = run.folder.resolve()
            run.name = f"{resolved.parent.name}/{resolved.name}"
    names = [r.name for r in runs]
    for index, run in enumerate(runs):
        if names.count(run.name) > 1:
            run.name = f"{run.name} ({index + 1})"
    return runs


# ------------------------------------------------------------------------------------ series and figures


def series_of(history: list[dict[str, Any]], key: str, only_training: bool = False) -> list[tuple[float, float]]:
    points: dict[float, float] = {}
    for entry in history:
        value, step = entry.get(key), entry.get("step")
        if step is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if only_training and "loss" not in entry:
            continue
        points[float(step)] = float(value)  # a step logged twice (a resumed run): the later value
    return sorted(points.items())


def throughput_of(history: list[dict[str, Any]]) -> tuple[list[tuple[float, float]], str]:
    """Tokens per second between logging steps: gym's ``tokens_per_second`` (:func:`throughput_callback`); for a
    history written without it, transformers' input-token counts (``include_num_input_tokens_seen``) or its
    running average (``train_tokens_per_second``). Returns the points and what tokens they count."""
    logged = series_of(history, "tokens_per_second", only_training=True)
    if logged:
        return logged, "trained"
    points: list[tuple[float, float]] = []
    previous: tuple[float, float] | None = None
    evaluating = 0.0  # seconds spent evaluating since the previous training log: not training time
    for entry in history:
        evaluating += entry.get("eval_runtime") or 0.0
        tokens, seconds = entry.get("num_input_tokens_seen"), entry.get("train_runtime")
        if "loss" not in entry or tokens is None or not seconds:
            continue
        if previous is not None and seconds - evaluating > previous[1] and tokens >= previous[0]:
            points.append((float(entry["step"]), (tokens - previous[0]) / (seconds - evaluating - previous[1])))
        elif previous is None or seconds <= previous[1]:  # the first log (or a resumed session's first)
            points.append((float(entry["step"]), tokens / seconds))
        previous, evaluating = (tokens, seconds), 0.0
    return points or series_of(history, "train_tokens_per_second", only_training=True), "input"


def task_scores(metrics: dict[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    """``{metric: (before, after)}`` for the task evaluations (metrics that have a ``_before`` twin)."""
    scores = {}
    for key, value in metrics.items():
        if key.endswith("_before"):
            base = key[: -len("_before")]
            scores[base] = (value, metrics.get(base))
    return scores


# ---------------------------------------------------------------------------------------- config defaults


def schema_defaults() -> tuple[dict[str, Any], set[str], set[str]]:
    """(each key's default as plain data, the required keys, the secret keys) of the composed config schema."""
    from gym.api import get_plugin_manager
    from pydantic import SecretStr
    from pydantic_core import to_jsonable_python

    model = get_plugin_manager().schema().model
    defaults: dict[str, Any] = {}
    required: set[str] = set()
    secrets: set[str] = set()
    for name, info in model.model_fields.items():
        if "SecretStr" in repr(info.annotation) or info.annotation is SecretStr:
            secrets.add(name)
        if info.is_required():
            required.add(name)
            continue
        try:
            defaults[name] = to_jsonable_python(info.get_default(call_default_factory=True))
        except Exception:  # noqa: BLE001 - a default that is no plain data: compare as text
            defaults[name] = str(info.get_default(call_default_factory=True))
    return defaults, required, secrets


def changed_keys(config: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """Keys whose value is not the schema's default (required keys and keys unknown here included)."""
    return [key for key, value in config.items() if key not in defaults or defaults[key] != value]


def _redact(config: dict[str, Any], secrets: set[str]) -> dict[str, Any]:
    return {key: ("**********" if key in secrets and value is not None else value) for key, value in config.items()}


# ------------------------------------------------------------------------------------------- the page


def write_report(folders: Sequence[Path], target: Path) -> list[RunFiles]:
    """Read the runs in ``folders`` and write their report to ``target``; returns the runs read."""
    runs = read_runs(folders)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(runs))
    return runs


def render(runs: list[RunFiles]) -> str:
    from gym.plugins import report_html as page

    defaults, required, secrets = schema_defaults()
    for run in runs:
        run.config = _redact(run.config, secrets)
    colors = {run.name: page.PALETTE[i % len(page.PALETTE)] for i, run in enumerate(runs)}
    several = len(runs) > 1
    title = f"gym report: {runs[0].name}" if not several else f"gym report: {len(runs)} runs compared"
    body = [_header(runs, colors, several)]
    body.append(_status_banners(runs, several))
    if not several:
        body.append(_stat_cards(runs[0]))
    body.append('<h2 id="training">Training</h2>')
    body.append(_charts(runs, colors, several))
    if several:
        body += [_metrics_section(runs), _tasks_section(runs), _evaluation_section(runs), _data_section(runs)]
    else:  # one run: its results and its data side by side
        body.append(f'<div class="twocol"><div>{_metrics_section(runs)}{_tasks_section(runs)}'
                    f"{_evaluation_section(runs)}</div><div>{_data_section(runs)}</div></div>")
    body.append(_config_section(runs, defaults, required))
    body.append(_environment_section(runs))
    body.append(_notes_section(runs))
    body.append('<footer>Written by gym (<code>gym report</code> rebuilds it from the run folder). '
                'Self-contained: no network needed to view it.</footer>')
    return page.page(title, "\n".join(part for part in body if part))


def _status(run: RunFiles) -> tuple[str, str]:
    if not run.finished:
        return "killed", "did not finish"
    if run.stop_reason:
        return "early", "stopped early"
    return "done", "finished"


def _steps_text(run: RunFiles) -> str:
    steps, planned = run.steps, run.planned_steps
    if steps is None:
        return "no steps logged"
    return f"step {steps:,} of {planned:,} planned" if planned else f"{steps:,} steps"


def _header(runs: list[RunFiles], colors: dict[str, str], several: bool) -> str:
    from gym.plugins.report_html import esc

    if not several:
        run = runs[0]
        kind, label = _status(run)
        badge = f'<span class="badge {kind}">{esc(label)}</span>'
        facts = [esc((run.results or {}).get("method") or run.config.get("rl") or "sft")]
        if run.config.get("base_model"):
            facts.append(f"base model <code>{esc(run.config['base_model'])}</code>")
        facts.append(esc(_steps_text(run)))
        if run.results and run.results.get("finished"):
            facts.append(f"finished {esc(run.results['finished'].replace('T', ' '))}")
        return (f"<h1>{esc(run.name)} {badge}</h1>"
                f'<p class="sub">{" · ".join(facts)} · <code>{esc(run.folder.resolve())}</code></p>')
    items = []
    for run in runs:
        kind, label = _status(run)
        items.append(f'<li><span class="swatch" style="background:{colors[run.name]}"></span><b>{esc(run.name)}</b>'
                     f'<span class="badge {kind}">{esc(label)}</span><span class="sub" style="margin:0">'
                     f"{esc(_steps_text(run))}</span></li>")
    return f'<h1>{len(runs)} runs compared</h1><ul class="runs">{"".join(items)}</ul>'


def _status_banners(runs: list[RunFiles], several: bool) -> str:
    from gym.plugins.report_html import esc

    out = []
    for run in runs:
        who = f"{run.name}: " if several else ""
        if not run.finished:
            out.append(
                f'<div class="banner killed"><b>{esc(who)}The run did not finish.</b>This report is rebuilt from '
                f"<code>{esc(run.history_source)}</code> ({esc(_steps_text(run))}). Final metrics, task evaluations "
                "and data figures are written only when a run ends.</div>")
        elif run.stop_reason:
            out.append(f'<div class="banner early"><b>{esc(who)}Stopped early at {esc(_steps_text(run))}.</b>'
                       f"{esc(run.stop_reason)}</div>")
    return "".join(out)


def _stat_cards(run: RunFiles) -> str:
    from gym.plugins.report_html import esc, fmt

    m = run.metrics
    losses = series_of(run.history, "loss")
    evals = series_of(run.history, "eval_loss")
    cards = []
    final = m.get("final_loss", losses[-1][1] if losses else None)
    first = m.get("first_loss", losses[0][1] if losses else None)
    if final is not None:
        cards.append(("final train loss", fmt(final), f"from {fmt(first)}" if first is not None else ""))
    eval_loss = m.get("eval_loss", evals[-1][1] if evals else None)
    if eval_loss is not None:
        cards.append(("eval loss", fmt(eval_loss), f"best {fmt(min(v for _, v in evals))}" if evals else ""))
    if run.steps is not None:
        cards.append(("steps", f"{run.steps:,}", f"of {run.planned_steps:,}" if run.planned_steps else ""))
    if m.get("train_seconds") is not None:
        cards.append(("training time", _duration(m["train_seconds"]), ""))
    if m.get("tokens_per_second") is not None:
        cards.append(("throughput", fmt(m["tokens_per_second"]), "trained tokens/s"))
    for metric, (before, after) in list(task_scores(m).items())[:1]:  # the first task's headline metric
        if after is not None:
            cards.append((metric.replace("_", " "), f"{100 * after:.1f}%",
                          f"from {100 * before:.1f}%" if before is not None else ""))
    return '<div class="stats">' + "".join(
        f'<div class="stat"><div class="label">{esc(label)}</div><div class="value">{esc(value)} '
        f"<small>{esc(extra)}</small></div></div>" for label, value, extra in cards) + "</div>"


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _charts(runs: list[RunFiles], colors: dict[str, str], several: bool) -> str:
    from gym.plugins.report_html import PALETTE, Chart, Series, chart_card

    def color(run: RunFiles, kind_index: int) -> str:
        return colors[run.name] if several else PALETTE[kind_index]

    def label(run: RunFiles, what: str) -> str:
        return f"{run.name} {what}" if several else what

    loss = Chart("Loss", "loss")
    lr = Chart("Learning rate", "learning rate")
    grad = Chart("Gradient norm", "grad norm (before clipping)")
    speed = Chart("Throughput", "trained tokens / second",
                  note="Tokens that carry a loss, per second of training between logging steps (evaluation "
                  "time left out), all processes together.")
    for run in runs:
        history = run.history
        loss.series.append(Series(label(run, "train loss"), color(run, 0), series_of(history, "loss"),
                                  run=run.name, kind="loss"))
        loss.series.append(Series(label(run, "eval loss"), color(run, 1), series_of(history, "eval_loss"),
                                  dashed=True, markers=True, run=run.name, kind="eval_loss"))
        lr.series.append(Series(label(run, "learning rate"), color(run, 2), series_of(history, "learning_rate"),
                                run=run.name, kind="learning_rate"))
        grad.series.append(Series(label(run, "grad norm"), color(run, 3), series_of(history, "grad_norm"),
                                  run=run.name, kind="grad_norm"))
        points, counted = throughput_of(history)
        speed.series.append(Series(label(run, f"{counted} tokens/s"), color(run, 5), points, run=run.name,
                                   kind="throughput"))
        if points and counted == "input":
            speed.y_label = "tokens / second"
            speed.note = (f"{run.name + ': ' if several else ''}input tokens per second (transformers' counts; this "
                          "history has no trained-token counts).")
        best = run.metrics.get("best_step")
        if best is not None or run.state.get("best_global_step") is not None:
            text = "best, loaded" if best is not None else "best eval"
            loss.marks.append((float(best if best is not None else run.state["best_global_step"]),
                               f"{run.name}: {text}" if several else text, colors[run.name] if several else "#555"))
    if speed.empty:
        speed.note = "No token counts were logged by this run."
    cards = [chart_card(chart, f"chart-{i}") for i, chart in enumerate((loss, lr, grad, speed))]
    return '<div class="charts">' + "".join(cards) + "</div>"


def _value(value: Any) -> str:
    from gym.plugins.report_html import fmt

    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return fmt(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "), default=str)
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], differs: Sequence[bool] = (),
           numbers_right: bool = True) -> str:
    from gym.plugins.report_html import esc

    head = "".join(f'<th{" class=num" if numbers_right and i else ""}>{esc(h)}</th>' for i, h in enumerate(header))
    body = []
    for index, row in enumerate(rows):
        cls = ' class="differs"' if index < len(differs) and differs[index] else ""
        cells = [f'<td class="key">{esc(row[0])}</td>']
        for cell in row[1:]:
            text = cell if isinstance(cell, _Html) else esc(_value(cell))
            cells.append(f'<td class="{"num" if numbers_right else "value"}">{text}</td>')
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Html(str):
    """A table cell that is markup already."""


def _metrics_section(runs: list[RunFiles]) -> str:
    names = [r.name for r in runs]
    skip = {key for run in runs for base in task_scores(run.metrics) for key in (base, f"{base}_before")}
    keys = list(dict.fromkeys(k for run in runs for k in run.metrics if k not in skip))
    if not keys:
        return ('<h2 id="metrics">Final metrics</h2><p class="empty-note">No final metrics: they are written when a '
                "run ends.</p>")
    rows = [[key, *[run.metrics.get(key) for run in runs]] for key in keys]
    header = ["metric", *(names if len(runs) > 1 else ["value"])]
    return f'<h2 id="metrics">Final metrics</h2>{_table(header, rows)}'


def _tasks_section(runs: list[RunFiles]) -> str:
    from gym.plugins.report_html import esc

    scores = [task_scores(run.metrics) for run in runs]
    keys = list(dict.fromkeys(k for s in scores for k in s))
    if not keys:
        return ""

    def cell(pair: tuple[float | None, float | None] | None) -> _Html:
        if pair is None:
            return _Html("—")
        before, after = pair
        if before is None or after is None:
            return _Html(esc(_percent(after if after is not None else before)))
        change = 100 * (after - before)
        direction = "up" if change > 0 else "down" if change < 0 else ""
        return _Html(f"{esc(_percent(before))} → <b>{esc(_percent(after))}</b> "
                     f'<span class="delta {direction}">({change:+.1f} pts)</span>')

    rows = [[key.replace("_", " "), *[cell(s.get(key)) for s in scores]] for key in keys]
    header = ["task metric", *([r.name for r in runs] if len(runs) > 1 else ["before → after training"])]
    return f'<h2 id="tasks">Task evaluations</h2>{_table(header, rows)}'


def _evaluation_section(runs: list[RunFiles]) -> str:
    """``gym evaluate``'s figures (loss, perplexity, task and lm-eval scores), for the runs it was run on."""
    from gym.plugins.report_html import esc

    evaluated = [run for run in runs if run.evaluation]
    if not evaluated:
        return ""
    keys = list(dict.fromkeys(k for run in evaluated for k in (run.evaluation.get("metrics") or {})))
    rows = [[key, *[(run.evaluation.get("metrics") or {}).get(key) for run in evaluated]] for key in keys]
    header = ["metric", *([r.name for r in evaluated] if len(runs) > 1 else ["value"])]
    models = "; ".join(f"{esc(str(run.evaluation.get('model', '')))}" for run in evaluated)
    return (f'<h2 id="evaluation">gym evaluate</h2><p class="empty-note">{models}</p>{_table(header, rows)}')


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _data_section(runs: list[RunFiles]) -> str:
    figures = [(run.results or {}).get("data_figures") or {} for run in runs]
    keys = list(dict.fromkeys(k for f in figures for k in f))
    if not keys:
        return ('<h2 id="data">Data</h2><p class="empty-note">No data figures: they are written when a run '
                "ends.</p>")
    rows = [[key.removeprefix("data/"), *[f.get(key) for f in figures]] for key in keys]
    header = ["figure", *([r.name for r in runs] if len(runs) > 1 else ["value"])]
    parts = [f'<h2 id="data">Data</h2>{_table(header, rows)}']
    if len(runs) == 1:
        sources = ((runs[0].results or {}).get("data") or {}).get("sources") or []
        if sources:
            source_rows = [[s.get("path"), s.get("type") if isinstance(s.get("type"), str) else "user-defined",
                            s.get("role"), s.get("rows"), s.get("kept"),
                            ", ".join(f"{k}: {v:,}" for k, v in (s.get("dropped") or {}).items()) or "none"]
                           for s in sources]
            parts.append("<h3>Sources</h3>" + _table(["path", "type", "role", "rows", "kept", "dropped"], source_rows,
                                                     numbers_right=False))
    return "".join(parts)


def _config_section(runs: list[RunFiles], defaults: dict[str, Any], required: set[str]) -> str:
    from gym.plugins.report_html import esc

    notes = "".join(f'<p class="sub">{esc(run.name)}: only the keys recorded in <code>{esc(run.config_source)}'
                    "</code> (the run wrote no gym_config.yml).</p>"
                    for run in runs if run.config_source and run.config_source != "gym_config.yml")
    if not any(run.config for run in runs):
        return '<h2 id="config">Config</h2><p class="empty-note">No config was found in the run folder.</p>'
    keys = list(dict.fromkeys(k for run in runs for k in run.config))
    changed = {k for run in runs for k in changed_keys(run.config, defaults)}
    if len(runs) == 1:
        config = runs[0].config
        first = [k for k in keys if k in changed]
        rest = [k for k in keys if k not in changed]
        table = _table(["key", "value", "default"],
                       [[k, config[k], _default(k, defaults, required)] for k in first], numbers_right=False)
        more = _table(["key", "value"], [[k, config[k]] for k in rest], numbers_right=False)
        return (f'<h2 id="config">Config</h2>{notes}<h3>Changed from the defaults ({len(first)} keys)</h3>{table}'
                f"<details><summary>The other {len(rest)} keys (defaults)</summary>{more}</details>")
    def effective(run: RunFiles, key: str) -> Any:  # a key a run did not write has its default
        return run.config[key] if key in run.config else defaults.get(key)

    differing = [k for k in keys if len({json.dumps(effective(r, k), sort_keys=True, default=str) for r in runs}) > 1]
    same_changed = [k for k in keys if k not in differing and k in changed]
    rest = [k for k in keys if k not in differing and k not in changed]

    def row(key: str) -> list[Any]:
        return [key, *[r.config[key] if key in r.config else _Html(f'<span class="empty-note">'
                                                                   f'{esc(_value(defaults.get(key)))} (default)</span>')
                       for r in runs]]

    header = ["key", *[r.name for r in runs]]
    parts = [f'<h2 id="config">Config</h2>{notes}<h3>Differences between the runs ({len(differing)} keys)</h3>']
    parts.append(_table(header, [row(k) for k in differing], [True] * len(differing), numbers_right=False)
                 if differing
                 else '<p class="empty-note">The configs are the same.</p>')
    parts.append(f"<h3>Changed from the defaults, the same in every run ({len(same_changed)} keys)</h3>")
    parts.append(_table(header, [row(k) for k in same_changed], numbers_right=False))
    parts.append(f"<details><summary>The other {len(rest)} keys (defaults)</summary>"
                 f"{_table(header, [row(k) for k in rest], numbers_right=False)}</details>")
    return "".join(parts)


def _default(key: str, defaults: dict[str, Any], required: set[str]) -> Any:
    if key in required:
        return "(required)"
    if key not in defaults:
        return _Html('<span class="empty-note">not a key of this gym\'s schema</span>')
    return _Html('<span class="empty-note">unset</span>') if defaults[key] is None else defaults[key]


def _environment_section(runs: list[RunFiles]) -> str:
    records = [run.results or {} for run in runs]
    if not any(records):
        return ""
    several = len(runs) > 1
    header = ["", *([r.name for r in runs] if several else ["value"])]
    versions = list(dict.fromkeys(k for rec in records for k in rec.get("versions") or {}))
    version_rows = [[name, *[(rec.get("versions") or {}).get(name) for rec in records]] for name in versions]
    hardware_rows = []
    for key, label in (("platform", "platform"), ("python", "python"), ("cpus", "CPUs"),
                       ("accelerators", "accelerators")):
        values = []
        for rec in records:
            value = (rec.get("hardware") or {}).get(key)
            values.append(", ".join(value) or "none (CPU)" if isinstance(value, list) else value)
        hardware_rows.append([label, *values])
    hardware_rows.append(["run time", *[_duration(r["seconds"]) if r.get("seconds") is not None else None
                                        for r in records]])
    hardware_rows.append(["resumed from", *[r.get("resumed_from") for r in records]])
    return (f'<h2 id="environment">Versions and hardware</h2><div class="twocol"><div>{_table(header, version_rows)}'
            f"</div><div>{_table(header, hardware_rows)}</div></div>")


def _notes_section(runs: list[RunFiles]) -> str:
    from gym.plugins.report_html import esc

    items = []
    for run in runs:
        for note in (run.results or {}).get("notes") or ():
            items.append(f"<li>{esc(run.name) + ': ' if len(runs) > 1 else ''}{esc(note)}</li>")
    return f'<h2 id="notes">Notes</h2><ul class="notes">{"".join(items)}</ul>' if items else ""
