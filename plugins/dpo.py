"""The dpo plugin: ``rl: dpo``, ``rl: ipo`` and ``rl: simpo`` on TRL's trainers, and
``builtin:addition-preferences``.

- ``rl: dpo`` / ``rl: ipo``: ``trl.DPOTrainer`` with ``trl.DPOConfig`` (IPO is DPO with ``loss_type: ipo``).
  With an adapter the reference is the base model (TRL keeps a frozen copy of the untrained adapter, which
  starts at zero: no second copy of the model in memory); with full fine-tuning a frozen copy of the base
  (``TrainerParts.reference_model``), or none with ``precompute_ref_log_probs``.
- ``rl: simpo``: ``trl.experimental.cpo.CPOTrainer`` with ``loss_type: simpo`` (TRL's ``DPOTrainer`` has no
  SimPO loss); no reference model.

Rows are text prompt / chosen / rejected pairs (:class:`gym.plugins.preference.PreferenceRows`), made by the
strategies in :mod:`gym.prompt_strategies.preference`. Every hook returns ``None`` unless ``rl`` is one of
these methods.
"""

from __future__ import annotations

import random
import zlib
from typing import Any, Optional, Union

from pydantic import Field

from gym.api import (
    BuiltinDataset,
    ConfigProblem,
    StrictConfig,
    TrainingMethod,
    hookimpl,
    parse_options,
    write_rows_once,
)

METHODS = ("dpo", "ipo", "simpo")
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # trl.DPOConfig.loss_type in TRL 1.x
DPO_ONLY = ("dpo_loss_type", "dpo_loss_weights", "dpo_use_weighting", "precompute_ref_log_probs", "dpo_norm_loss",
            "rpo_alpha")
SIMPO_ONLY = ("simpo_gamma", "cpo_alpha")


class DpoSettings(StrictConfig):
    """Keys of the dpo plugin (used with rl: dpo, ipo or simpo)."""

    dpo_loss_type: Optional[Union[str, list[str]]] = Field(
        None,
        description="DPO loss (TRL's loss_type): sigmoid (default), hinge, ipo, robust, exo_pair, nca_pair, "
        "bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm; a list "
        "combines several, weighted by dpo_loss_weights.",
    )
    dpo_loss_weights: Optional[list[float]] = Field(
        None, description="Weights of the losses listed in dpo_loss_type (default: 1 each)."
    )
    dpo_use_weighting: Optional[bool] = Field(
        None, description="WPO weighting of each pair by the policy's length-normalised probability."
    )
    dpo_label_smoothing: Optional[float] = Field(
        None, ge=0, lt=0.5, description="Probability that a preference label is flipped (robust DPO, EXO, cDPO)."
    )
    precompute_ref_log_probs: Optional[bool] = Field(
        None, description="Compute the reference model's log-probabilities once before training instead of "
        "keeping the reference model (dpo, ipo)."
    )
    dpo_norm_loss: Optional[bool] = Field(
        None, description="Length-normalise the DPO log-ratios (TRL's sigmoid_norm loss)."
    )
    rpo_alpha: Optional[float] = Field(
        None, ge=0, description="RPO: add this weight times the chosen responses' NLL loss to the DPO loss "
        "(TRL's sft loss combined with the DPO loss)."
    )
    dpo_padding_free: Optional[bool] = Field(
        None, description="Not available: TRL 1.x's DPO trainer has no padding-free path (it falls back to padding)."
    )
    simpo_gamma: Optional[float] = Field(None, description="SimPO target reward margin (rl: simpo; TRL default 0.5).")
    cpo_alpha: Optional[float] = Field(
        None, ge=0, description="Weight of the chosen responses' NLL term in CPO/SimPO (rl: simpo; TRL default 1.0; "
        "0 gives pure SimPO)."
    )


@hookimpl
def gym_config_schema():
    return DpoSettings


def _set(cfg: Any, key: str) -> bool:
    return getattr(cfg, key, None) not in (None, False)


def loss_types(cfg: Any) -> list[str]:
    """TRL's ``loss_type`` list for rl: dpo / ipo."""
    if cfg.rl == "ipo":
        return ["ipo"]
    given = cfg.dpo_loss_type
    types = [given] if isinstance(given, str) else list(given or ["sigmoid"])
    if cfg.dpo_norm_loss:
        types = ["sigmoid_norm" if t == "sigmoid" else t for t in types]
    if cfg.rpo_alpha and "sft" not in types:
        types.append("sft")
    return types


def loss_weights(cfg: Any) -> list[float] | None:
    if cfg.dpo_loss_weights is not None:
        return list(cfg.dpo_loss_weights)
    if cfg.rpo_alpha and cfg.rl != "ipo" and "sft" not in ([cfg.dpo_loss_type] if isinstance(cfg.dpo_loss_type, str)
                                                            else list(cfg.dpo_loss_type or [])):
        return [1.0] * (len(loss_types(cfg)) - 1) + [float(cfg.rpo_alpha)]
    return None


@hookimpl
def gym_validate_config(cfg):
    rl = getattr(cfg, "rl", None)
    problems = []
    if _set(cfg, "dpo_padding_free"):
        problems.append(ConfigProblem("dpo_padding_free", "TRL 1.x no longer honours padding-free DPO (its DPO trainer "
                                      "warns and pads); remove it"))
    if rl not in METHODS:
        return problems or None
    if getattr(cfg, "sample_packing", False):
        problems.append(ConfigProblem(
            "sample_packing", f"rl: {rl} trains on prompt / chosen / rejected pairs that TRL batches itself; packing "
            "them is not supported (TRL 1.x has no padding-free preference path), set sample_packing: false"))
    if rl == "simpo":
        for key in DPO_ONLY:
            if _set(cfg, key):
                problems.append(ConfigProblem(key, f"not used by rl: simpo (TRL's CPO trainer has no such option); "
                                              "remove it or use rl: dpo"))
    else:
        for key in SIMPO_ONLY:
            if _set(cfg, key):
                problems.append(ConfigProblem(key, f"used only with rl: simpo, not rl: {rl}"))
        given = cfg.dpo_loss_type
        types = [given] if isinstance(given, str) else list(given or [])
        unknown = [t for t in types if t not in DPO_LOSS_TYPES]
        if unknown:
            problems.append(ConfigProblem("dpo_loss_type", f"unknown loss {', '.join(map(repr, unknown))}; TRL's DPO "
                                          f"losses are {', '.join(DPO_LOSS_TYPES)}"))
        if rl == "ipo" and types and types != ["ipo"]:
            problems.append(ConfigProblem("dpo_loss_type", "rl: ipo is DPO with the ipo loss; remove dpo_loss_type "
                                          "or use rl: dpo"))
        if cfg.dpo_norm_loss and types and "sigmoid" not in types:
            problems.append(ConfigProblem("dpo_norm_loss", "normalises the sigmoid loss only; dpo_loss_type has none"))
        if cfg.dpo_loss_weights is not None and len(cfg.dpo_loss_weights) != len(loss_types(cfg)):
            problems.append(ConfigProblem("dpo_loss_weights", f"gives {len(cfg.dpo_loss_weights)} weights for "
                                          f"{len(loss_types(cfg))} losses ({', '.join(loss_types(cfg))})"))
        if cfg.rpo_alpha and rl == "ipo":
            problems.append(ConfigProblem("rpo_alpha", "RPO adds an NLL term to the DPO loss; use it with rl: dpo"))
    return problems or None


@hookimpl
def gym_training_method(cfg):
    rl = getattr(cfg, "rl", None)
    if rl not in METHODS:
        return None
    from gym.plugins.preference import PreferenceRows

    arguments: dict[str, Any] = {"max_length": cfg.sequence_len}
    if cfg.rl_beta is not None:
        arguments["beta"] = cfg.rl_beta
    if cfg.dpo_label_smoothing is not None:
        arguments["label_smoothing"] = cfg.dpo_label_smoothing
    if rl == "simpo":
        arguments["loss_type"] = "simpo"
        if cfg.simpo_gamma is not None:
            arguments["simpo_gamma"] = cfg.simpo_gamma
        if cfg.cpo_alpha is not None:
            arguments["cpo_alpha"] = cfg.cpo_alpha
        return TrainingMethod(
            name=rl,
            build_trainer="gym.plugins.preference:build_reference_free_trainer",
            arguments_class="trl.experimental.cpo:CPOConfig",
            arguments=arguments,
            data_shape=PreferenceRows(cfg),
            description="SimPO (TRL's CPO trainer, loss_type simpo) on prompt / chosen / rejected pairs",
        )
    arguments["loss_type"] = loss_types(cfg)
    weights = loss_weights(cfg)
    if weights is not None:
        arguments["loss_weights"] = weights
    if cfg.dpo_use_weighting is not None:
        arguments["use_weighting"] = cfg.dpo_use_weighting
    if cfg.precompute_ref_log_probs is not None:
        arguments["precompute_ref_log_probs"] = cfg.precompute_ref_log_probs
    return TrainingMethod(
        name=rl,
        build_trainer="gym.plugins.preference:build_dpo_trainer",
        arguments_class="trl:DPOConfig",
        arguments=arguments,
        data_shape=PreferenceRows(cfg),
        description=f"{rl.upper()} (TRL's DPO trainer) on prompt / chosen / rejected pairs",
    )


@hookimpl
def gym_model_card(cfg, model):
    rl = getattr(cfg, "rl", None)
    if rl not in METHODS:
        return None
    from gym.plugins.preference import model_card_section

    if rl == "simpo":
        settings = {"trainer": "trl.experimental.cpo.CPOTrainer (loss_type simpo)", "beta": cfg.rl_beta,
                    "simpo_gamma": cfg.simpo_gamma, "cpo_alpha": cfg.cpo_alpha}
        note = "Trained with SimPO (no reference model)."
    else:
        settings = {"trainer": "trl.DPOTrainer", "beta": cfg.rl_beta if cfg.rl_beta is not None else "0.1 (TRL default)",
                    "loss_type": ", ".join(loss_types(cfg)), "loss_weights": loss_weights(cfg),
                    "label_smoothing": cfg.dpo_label_smoothing, "use_weighting": cfg.dpo_use_weighting,
                    "precompute_ref_log_probs": cfg.precompute_ref_log_probs}
        reference = ("the base model with the adapter's untrained copy (adapter)" if getattr(cfg, "adapter", None)
                     else "a frozen copy of the base model")
        note = f"Trained with {rl.upper()} against {reference}."
    settings["max_length"] = cfg.sequence_len
    return {"tags": [rl, "trl"], "sections": [model_card_section(f"Preference training ({rl})", settings, note)],
            "packages": ["trl"]}


# ---------------------------------------------------------------------------- builtin:addition-preferences

NAME = "addition-preferences"
VERSION = 4  # bump when the rows change
OPTIONS = {"digits": (1, 9), "rows": (1, 10_000_000), "seed": (0, 2**31 - 1), "near": (0, 1)}


@hookimpl
def gym_builtin_datasets():
    return [
        BuiltinDataset(
            name=NAME,
            materialize=materialize,
            check=_check,
            description="addition preference pairs: prompt 'What is 12 + 34?' (chat messages), chosen '46', "
            "rejected a wrong sum ('113', '71', ...; near=1: a near miss such as '45' or '56'), and for rl: kto "
            "one of them as completion with its label; options digits=2, rows=20000, seed=0, near=0; TRL layout "
            "(type: passthrough); the held-out operand pairs of builtin:addition never appear",
        )
    ]


def _task(path: str):
    from gym.plugins.addition import AdditionTask

    options = parse_options(path, OPTIONS)
    near = bool(options.pop("near", 0))
    return AdditionTask(**options), near


def _check(path: str) -> None:
    _task(path)


def near_miss(a: int, b: int, digits: int) -> int:
    """A wrong sum close to the right one: off by one in the last or the tens digit (never negative)."""
    right = a + b
    choices = [d for d in (1, -1, 10, -10) if right + d >= 0 and (digits > 1 or abs(d) == 1)]
    return right + choices[zlib.crc32(f"{a}-{b}".encode()) % len(choices)]


def wrong_sum(a: int, b: int, digits: int) -> int:
    """A wrong sum with as many digits as the right one, drawn evenly from the sums two ``digits``-digit operands
    can make (the same for the same pair).

    The default rejected answer. DPO pushes down every token of the rejected answer: against a near miss (one
    digit off) that also pushes down the digits it shares with the right one, and against an answer of another
    length the end of the turn after as many digits as the right one; measured on the tiny model, both lowered
    held-out exact match where this raised it (docs/preference.md)."""
    right = a + b
    width = len(str(right))
    smallest = 10 ** (digits - 1) if digits > 1 else 0
    low = max(2 * smallest, 10 ** (width - 1) if width > 1 else 0)
    high = min(2 * (10**digits - 1), 10**width - 1)
    pick = random.Random(zlib.crc32(f"wrong-{a}-{b}".encode())).randint(low, high - 1)
    return pick + 1 if pick >= right else pick


def preference_row(a: int, b: int, digits: int, near: bool = False) -> dict[str, Any]:
    """One pair in TRL's conversational layout: prompt, chosen and rejected as chat messages (and, for KTO,
    one of the two as ``completion`` with ``label`` true when it is the right sum)."""
    from gym.plugins.addition import addition_row

    row = addition_row(a, b)
    chosen = [{"role": "assistant", "content": row["output"]}]
    wrong = near_miss(a, b, digits) if near else wrong_sum(a, b, digits)
    rejected = [{"role": "assistant", "content": str(wrong)}]
    desirable = zlib.crc32(f"{b}-{a}".encode()) % 2 == 0
    return {
        "prompt": [{"role": "user", "content": row["instruction"]}],
        "chosen": chosen,
        "rejected": rejected,
        "completion": chosen if desirable else rejected,  # rl: kto reads completion / label
        "label": desirable,
    }


def pair_rows(task: Any, count: int | None = None, held_out: bool = False, seed: int | None = None,
              near: bool = False):
    """The pairs of ``task`` (its training pairs, or ``count`` held-out ones); ``near``: near misses rejected."""
    rng = random.Random(task.seed if seed is None else seed)
    made = 0
    total = task.rows if count is None else count
    while made < total:
        a, b = rng.randint(task.smallest, task.largest), rng.randint(task.smallest, task.largest)
        if task.held_out(a, b) != held_out:
            continue
        made += 1
        yield preference_row(a, b, task.digits, near)


def materialize(path: str) -> str:
    task, near = _task(path)
    name = f"{NAME}-v{VERSION}-d{task.digits}-n{task.rows}-s{task.seed}{'-near' if near else ''}.jsonl"
    return write_rows_once(name, pair_rows(task, near=near))
