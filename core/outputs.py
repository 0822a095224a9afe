"""What a run leaves in ``output_dir`` besides the weights: the resolved config and a model card.

- ``gym_config.yml``: the validated config, every default filled in, secrets replaced by ``***``;
- ``README.md``: a model card whose YAML front matter carries the hub metadata (``library_name``,
  ``base_model``, ``tags``, ``datasets``), then the data, the results and the config.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import yaml

from gym.builtin import is_builtin
from gym.config import redacted

CONFIG_FILE = "gym_config.yml"
CARD_FILE = "README.md"


def write_config(cfg: Any, output_dir: str | Path) -> Path:
    """Write the resolved, redacted config as ``gym_config.yml``; ``gym run`` can run it again."""
    path = Path(output_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# The resolved config of this run (defaults filled in, secrets redacted). Rerun: gym run gym_config.yml\n"
    path.write_text(header + yaml.safe_dump(redacted(cfg), sort_keys=False, allow_unicode=True))
    return path


def _is_hub_id(name: str | None) -> bool:
    if not name or is_builtin(name) or Path(name).expanduser().exists():
        return False
    return not name.startswith(("/", ".", "~")) and name.count("/") <= 1


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


def card_metadata(cfg: Any, adapter: bool, trainer_name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"library_name": "peft" if adapter else "transformers"}
    if _is_hub_id(cfg.base_model):
        meta["base_model"] = cfg.base_model
    tags = ["gym", trainer_name]
    adapter_name = getattr(cfg, "adapter", None)
    if adapter and adapter_name:
        tags.append(str(adapter_name))
    meta["tags"] = tags
    hub_datasets = sorted({entry.path for entry in cfg.datasets if _is_hub_id(entry.path)})
    if hub_datasets:
        meta["datasets"] = hub_datasets
    meta["pipeline_tag"] = "text-generation"
    return meta


def model_card(
    cfg: Any, metrics: dict[str, Any], adapter: bool = False, trainer_name: str = "sft", data_summary: str | None = None
) -> str:
    """The text of README.md for the trained model."""
    name = Path(cfg.output_dir).name or "model"
    meta = card_metadata(cfg, adapter, trainer_name)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {name}", ""]
    what = "A LoRA-style adapter for" if adapter else "A fine-tuned version of"
    lines.append(f"{what} `{cfg.base_model}`, trained with gym ({trainer_name}).")
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
    lines += ["", "## Use", "", "```python"]
    if adapter:
        lines += [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            "",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{cfg.output_dir}")',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{cfg.output_dir}")',
        ]
    lines += [f'tokenizer = AutoTokenizer.from_pretrained("{cfg.output_dir}")', "```"]
    lines += ["", "## Training config", "", "```yaml", yaml.safe_dump(redacted(cfg), sort_keys=False).rstrip(), "```"]
    lines += ["", "## Framework versions", ""]
    for distribution in ("gym-llm", "transformers", "torch", "datasets", "peft", "accelerate", "tokenizers"):
        version = _version(distribution)
        if version and (distribution != "peft" or adapter):
            lines.append(f"- {distribution} {version}")
    return "\n".join(lines) + "\n"


def write_model_card(cfg: Any, metrics: dict[str, Any], adapter: bool = False, trainer_name: str = "sft",
                     data_summary: str | None = None) -> Path:
    path = Path(cfg.output_dir) / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model_card(cfg, metrics, adapter, trainer_name, data_summary))
    return path
