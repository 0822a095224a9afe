"""What the preference methods (dpo, ipo, simpo, orpo; the reward model) share: their rows, their figures and
the TRL trainers they build.

Rows are text: ``prompt`` (rendered with its chat template up to the assistant's turn), ``chosen`` and
``rejected`` (the two completions). The dataset strategies render conversations to text, so every source has
the same columns and :class:`PreferenceRows` can measure each pair with the tokenizer as TRL will tokenize it
(``tokenizer(prompt + completion)``, plus the EOS token TRL appends). This module is not a plugin itself; the
method plugins import it. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from gym.api import DataShape, SourceCounts, TrainerParts

COLUMNS = ("prompt", "chosen", "rejected")
_FATE = "_fate"

# fate code -> the reason a pair is dropped (0 keeps it)
DROP_REASONS = {
    1: "with no chosen response",
    2: "with no rejected response",
    3: "with an empty prompt",
    4: "with chosen identical to rejected",
    5: "longer than sequence_len",
    6: "with a prompt as long as sequence_len",
}
_TRUNCATED = 10  # added to the fate of a kept pair that TRL will cut to sequence_len


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


class PairRules:
    """The ``Dataset.map`` function deciding each pair's fate from its text and its token lengths."""

    def __init__(self, tokenizer: Any, sequence_len: int, truncate: bool):
        self.tokenizer = tokenizer
        self.sequence_len = sequence_len
        self.truncate = truncate
        eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
        self.eos = eos or ""

    def _length(self, text: str) -> int:
        extra = 1 if self.eos and not text.endswith(self.eos) else 0  # TRL appends the EOS token
        return len(self.tokenizer(text)["input_ids"]) + extra

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        fates = []
        for prompt, chosen, rejected in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
            if _blank(chosen):
                fate = 1
            elif _blank(rejected):
                fate = 2
            elif _blank(prompt):
                fate = 3
            elif chosen.strip() == rejected.strip():
                fate = 4
            elif self.tokenizer is None:
                fate = 0
            else:
                longest = max(self._length(prompt + chosen), self._length(prompt + rejected))
                fate = 0
                if longest > self.sequence_len:
                    if not self.truncate:
                        fate = 5
                    elif len(self.tokenizer(prompt)["input_ids"]) >= self.sequence_len:
                        fate = 6  # TRL would keep no completion token of it
                    else:
                        fate = _TRUNCATED
            fates.append(fate)
        return {_FATE: fates}


class CheckedTextRows(DataShape):
    """Text rows checked by a ``rules`` class (one fate code a row, ``drop_reasons[code]`` for a drop); long rows
    are dropped, or kept for TRL to cut to ``sequence_len`` with ``excess_length_strategy: truncate``."""

    rules: Any = None  # called as rules(tokenizer, sequence_len, truncate) -> a Dataset.map function giving _fate
    drop_reasons: dict[int, str] = {}
    checking = "Checking rows"

    def __init__(self, cfg: Any):
        self.sequence_len = cfg.sequence_len
        self.truncate = cfg.excess_length_strategy == "truncate"

    def features(self, columns: tuple[str, ...]) -> Any:
        import datasets

        return datasets.Features({name: datasets.Value("bool" if name == "label" else "string") for name in columns})

    def samples(self, dataset: Any, counts: SourceCounts, work: Path, tokenizer: Any = None) -> Any:
        import numpy as np

        checked = dataset.map(
            self.rules(tokenizer, self.sequence_len, self.truncate),
            batched=True,
            batch_size=1000,
            cache_file_name=str(work / f"checked-{uuid.uuid4().hex}.arrow"),
            desc=self.checking,
        )
        fate = np.asarray(checked[_FATE], dtype=np.int64)
        for code, reason in self.drop_reasons.items():
            counts.drop(reason, int((fate == code).sum()))
        counts.change(f"to be cut to sequence_len {self.sequence_len} by the trainer", int((fate == _TRUNCATED).sum()))
        keep = np.flatnonzero((fate == 0) | (fate == _TRUNCATED))
        counts.kept = int(len(keep))
        return checked.select(keep).select_columns(list(self.columns))


class PreferenceRows(CheckedTextRows):
    """:class:`gym.api.DataShape` of the pairwise preference methods: text ``prompt`` / ``chosen`` /
    ``rejected``; unusable pairs are dropped and counted, long ones dropped or left to TRL to cut to
    ``sequence_len`` (``excess_length_strategy: truncate``)."""

    columns = COLUMNS
    rules = PairRules
    drop_reasons = DROP_REASONS
    checking = "Checking preference pairs"

    def rows(self, dataset: Any, split: str, work: Path, tokenizer: Any = None) -> tuple[Any, dict[str, Any]]:
        return dataset.select_columns(list(COLUMNS)), {"pairs": len(dataset)}

    def describe(self, split: str, samples: int, rows: int, figures: dict[str, Any]) -> str:
        return f"{split}: {figures.get('pairs', rows):,} preference pairs (prompt, chosen, rejected)"

    def preview(self, dataset: Any, tokenizer: Any, count: int = 3) -> list[str]:
        return [
            f"pair {i}: prompt {row['prompt']!r} chosen {row['chosen']!r} rejected {row['rejected']!r}"
            for i, row in enumerate(dataset.select(range(min(count, len(dataset)))))
        ]


# ------------------------------------------------------------------------------------------ figures

FIGURE_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "margin", "accuracy",
               "mean_reward")
EXTRA_KEYS = ("log_odds_ratio", "nll_loss", "logps/chosen", "logps/rejected", "kl")


def figures_callback(method: str):
    """A ``TrainerCallback`` keeping the last logged reward figures (training and evaluation) and reporting
    them as ``gym_metrics`` and ``gym_summary`` lines."""
    from transformers import TrainerCallback

    class PreferenceFigures(TrainerCallback):
        def __init__(self) -> None:
            self.train: dict[str, float] = {}
            self.first: dict[str, float] = {}
            self.eval: dict[str, float] = {}
            self.gym_metrics: dict[str, Any] = {}
            self.gym_summary: list[str] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key, value in (logs or {}).items():
                if not isinstance(value, (int, float)):
                    continue
                if key.startswith("eval_") and key[5:] in FIGURE_KEYS + EXTRA_KEYS:
                    self.eval[key[5:]] = float(value)
                elif key in FIGURE_KEYS + EXTRA_KEYS:
                    self.first.setdefault(key, float(value))
                    self.train[key] = float(value)

        def on_train_end(self, args, state, control, **kwargs):
            self.gym_metrics = {k.replace("/", "_"): v for k, v in self.train.items()}
            self.gym_metrics.update({"eval_" + k.replace("/", "_"): v for k, v in self.eval.items()})
            for label, values in (("", self.train), ("eval ", self.eval)):
                shown = [key for key in FIGURE_KEYS if key in values]
                if not shown:
                    continue
                parts = []
                for key in shown:
                    name = key.split("/")[-1].replace("_", " ")
                    value = values[key]
                    parts.append(f"{name} {100 * value:.1f}%" if name.startswith("accurac") else f"{name} {value:+.4f}")
                self.gym_summary.append(f"{method} {label}rewards at the last log: " + ", ".join(parts))

    return PreferenceFigures()


def drop_reference_adapter_callback():
    """TRL trains an adapter against a frozen copy of it named ``ref``; drop it before the adapter is saved,
    so the output holds only the trained adapter."""
    from transformers import TrainerCallback

    class DropReferenceAdapter(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            config = getattr(model, "peft_config", None)
            if isinstance(config, dict) and "ref" in config:
                model.delete_adapter("ref")
                model.set_adapter("default")

    return DropReferenceAdapter()


# ------------------------------------------------------------------------------------------ trainers


def use_base_as_reference(trainer: Any, cfg: Any) -> Any:
    """A new adapter starts as the identity, so the base model with the adapter disabled is its reference: drop
    the frozen copy TRL makes of it (``ref``), which would hold the adapter's weights a second time. An adapter
    continued from ``lora_model_dir`` keeps TRL's copy: it is not the identity."""
    model = trainer.model
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict) and "ref" in config and not getattr(cfg, "lora_model_dir", None):
        model.delete_adapter("ref")
        model.set_adapter("default")
    return trainer


def _is_adapter_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def build_with_reference(trainer_class: Any, parts: TrainerParts, method: str) -> Any:
    """A TRL trainer that trains against a reference (DPO, KTO). With an adapter, ``ref_model=None`` and the
    reference is the base model with the adapter disabled (no second copy); full fine-tuning gets a frozen copy of
    the base, unless the reference log-probs are precomputed."""
    adapter = _is_adapter_model(parts.model)
    precompute = getattr(parts.cfg, "precompute_ref_log_probs", None)
    ref_model = None if adapter or precompute else parts.reference_model()
    callbacks = [*parts.callbacks, figures_callback(method)]
    if adapter:
        callbacks.append(drop_reference_adapter_callback())
    trainer = trainer_class(
        model=parts.model,
        ref_model=ref_model,
        args=parts.args,
        data_collator=parts.train_collator,
        train_dataset=parts.train_dataset,
        eval_dataset=parts.eval_dataset,
        processing_class=parts.tokenizer,
        callbacks=callbacks,
    )
    return use_base_as_reference(trainer, parts.cfg)


def build_dpo_trainer(parts: TrainerParts) -> Any:
    """TRL's ``DPOTrainer`` (dpo, ipo), built as :func:`build_with_reference` says."""
    from trl import DPOTrainer

    return build_with_reference(DPOTrainer, parts, parts.cfg.rl)


def build_reference_free_trainer(parts: TrainerParts) -> Any:
    """TRL's ``CPOTrainer`` (simpo) or ``ORPOTrainer`` (orpo): no reference model."""
    import warnings

    cfg = parts.cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "experimental" notices
        if cfg.rl == "orpo":
            from trl.experimental.orpo import ORPOTrainer as trainer_class
        else:
            from trl.experimental.cpo import CPOTrainer as trainer_class
    return trainer_class(
        model=parts.model,
        args=parts.args,
        data_collator=parts.train_collator,
        train_dataset=parts.train_dataset,
        eval_dataset=parts.eval_dataset,
        processing_class=parts.tokenizer,
        callbacks=[*parts.callbacks, figures_callback(cfg.rl)],
    )


def model_card_section(title: str, settings: dict[str, Any], note: str = "") -> str:
    lines = [f"## {title}", ""]
    if note:
        lines += [note, ""]
    lines += [f"- `{key}`: {value}" for key, value in settings.items() if value is not None]
    return "\n".join(lines)
