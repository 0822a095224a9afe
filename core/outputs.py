"""What a run leaves in ``output_dir`` besides the weights: the resolved config and a model card.

- ``gym_config.yml``: the validated config, every default filled in, secrets replaced by ``***``;
- ``README.md``: a model card whose YAML front matter carries the hub metadata (``library_name``,
  ``base_model``, ``tags``, ``datasets``), then the data, the results and the config;
- ``gym_results.json``: what the run did, as data (:func:`write_results`); with the logged history in
  ``trainer_state.json`` it is all a report or a tracker needs after the run.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import yaml

from gym.config import redacted, secret_fields
from gym.hub import is_hub_id

CONFIG_FILE = "gym_config.yml"
CARD_FILE = "README.md"
RESULTS_FILE = "gym_results.json"
RUN_MARKER = ".gym-run"  # written into output_dir when a run starts: the folder is gym's from then on


def prepare_output_dir(cfg: Any) -> list[str]:
    """Check ``output_dir`` before any work and claim it; returns notes to show.

    Refused, with a ConfigError: the base model's folder (or a folder inside it), a path that is a file or cannot
    be written, and a non-empty folder that is not a gym run's unless ``overwrite_output_dir: true``.
    """
    from gym.errors import ConfigError

    out = Path(cfg.output_dir).expanduser().resolve()
    base = Path(str(cfg.base_model)).expanduser()
    if base.is_dir() and (out == base.resolve() or base.resolve() in out.parents):
        raise ConfigError(f"output_dir: {out} is the base model's folder (or inside it); the run would write over "
                          "the model it starts from. Choose another output_dir")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is a file, not a folder")
    notes = []
    if out.is_dir():
        present = sorted(p.name for p in out.iterdir())
        ours = (out / RUN_MARKER).exists() or (out / CONFIG_FILE).exists() or any(
            name.startswith("checkpoint-") for name in present)
        if present and not ours and not cfg.overwrite_output_dir:
            shown = ", ".join(present[:5]) + (" ..." if len(present) > 5 else "")
            raise ConfigError(f"output_dir: {out} already holds files gym did not write ({shown}); they could be "
                              "replaced. Choose an empty or new folder, or set overwrite_output_dir: true")
        if present and ours:
            notes.append(f"output_dir {out} holds a previous gym run; its model files will be written over")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_MARKER).write_text("This folder holds the outputs of a gym run.\n")
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot write to {out}: {exc.strerror or exc}") from None
    return notes


def write_config(cfg: Any, output_dir: str | Path) -> Path:
    """Write the resolved, redacted config as ``gym_config.yml``; ``gym run`` can run it again.

    Secret keys are left out rather than written as ``**********`` (which a rerun would send as the secret);
    the header names them, to pass again on the command line or through ``${oc.env:...}``."""
    path = Path(output_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = redacted(cfg)
    left_out = secret_fields(cfg)
    for key in left_out:
        data.pop(key, None)
    header = "# The resolved config of this run (defaults filled in, secrets redacted). Rerun: gym run gym_config.yml\n"
    if left_out:
        header += (f"# Secrets left out: {', '.join(left_out)}. Pass them again: gym run gym_config.yml "
                   + " ".join(f"{key}=..." for key in left_out) + "\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


VERSIONED = ("gym-llm", "torch", "transformers", "datasets", "accelerate", "tokenizers")  # plus plugins' packages


def write_results(output_dir: str | Path, *, method: str, metrics: dict[str, Any], data: Any,
                  planned_steps: int, stop_reason: str | None, notes: list[str], resumed_from: str | None,
                  seconds: float, packages: tuple[str, ...] = ()) -> Path:
    """Write ``gym_results.json``: the method, the final metrics (task evals included), the data report and its
    figures, planned steps and why the run stopped early (``null`` when it did not), notes, versions (the stack's
    and the ``packages`` plugins name in their model card) and hardware.

    The file is the run's record for readers other than a person: the run report, ``gym report``, trackers
    that upload after the run, scripts comparing runs. Keys are only ever added.
    """
    import datetime
    import json
    import os
    import platform

    record = {
        "method": method,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": seconds,
        "planned_steps": planned_steps,
        "stop_reason": stop_reason,
        "resumed_from": resumed_from,
        "metrics": metrics,
        "data": data.to_dict(),
        "data_figures": data.figures(),
        "notes": notes,
        "versions": {name: _version(name) for name in dict.fromkeys((*VERSIONED, *packages)) if _version(name)},
        "hardware": {"platform": platform.platform(), "python": platform.python_version(),
                     "cpus": os.cpu_count(), "accelerators": _accelerators()},
    }
    path = Path(output_dir) / RESULTS_FILE
    path.write_text(json.dumps(record, indent=1, default=str))
    return path


def _accelerators() -> list[str]:
    import torch

    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def card_metadata(cfg: Any, method: str, card: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"library_name": card.get("library_name", "transformers")}
    if is_hub_id(cfg.base_model):
        meta["base_model"] = cfg.base_model
    meta["tags"] = ["gym", method, *[t for t in card.get("tags", ()) if t not in ("gym", method)]]
    hub_datasets = sorted({entry.path for entry in cfg.datasets if is_hub_id(entry.path)})
    if hub_datasets:
        meta["datasets"] = hub_datasets
    meta["pipeline_tag"] = "text-generation"
    return meta


DEFAULT_USAGE = """from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{output_dir}")
tokenizer = AutoTokenizer.from_pretrained("{output_dir}")"""

CORE_PACKAGES = ("gym-llm", "transformers", "torch", "datasets", "accelerate", "tokenizers")


def model_card(cfg: Any, metrics: dict[str, Any], method: str, card: dict[str, Any] | None = None,
               data_summary: str | None = None) -> str:
    """The text of README.md for the trained model; ``card`` is what plugins gave ``gym_model_card``."""
    card = card or {}
    name = Path(cfg.output_dir).name or "model"
    meta = card_metadata(cfg, method, card)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {name}", ""]
    lines.append(card.get("summary") or f"A fine-tuned version of `{cfg.base_model}`, trained with gym ({method}).")
    lines += ["", "## Training data", ""]
    for entry in cfg.datasets:
        kind = entry.type if isinstance(entry.type, str) else "user-defined format"
        lines.append(f"- `{entry.path}` ({kind})")
    for entry in cfg.test_datasets or ():
        lines.append(f"- `{entry.path}` (evaluation)")
    if data_summary:
        lines += ["", "```text", data_summary, "```"]
    lines += ["", "## Results", "", "| metric | value |", "| --- | --- |"]
    for key, value in metrics.items():
        lines.append(f"| {key} | {_format_value(value)} |")
    for section in card.get("sections", ()):
        lines += ["", section.rstrip()]
    usage = card.get("usage") or DEFAULT_USAGE
    lines += ["", "## Use", "", "```python", usage.format(output_dir=cfg.output_dir).rstrip(), "```"]
    lines += ["", "## Training config", "", "```yaml", yaml.safe_dump(redacted(cfg), sort_keys=False).rstrip(), "```"]
    lines += ["", "## Framework versions", ""]
    for distribution in (*CORE_PACKAGES, *[p for p in card.get("packages", ()) if p not in CORE_PACKAGES]):
        version = _version(distribution)
        if version:
            lines.append(f"- {distribution} {version}")
    return "\n".join(lines) + "\n"


def write_model_card(cfg: Any, metrics: dict[str, Any], method: str, card: dict[str, Any] | None = None,
                     data_summary: str | None = None) -> Path:
    path = Path(cfg.output_dir) / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model_card(cfg, metrics, method, card, data_summary))
    return path
