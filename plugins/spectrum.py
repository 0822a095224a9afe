"""Spectrum: train only the parameters whose names match ``unfrozen_parameters``; everything else is frozen.

::

    unfrozen_parameters:
      - ^model\\.layers\\.(1|5)\\.mlp\\.down_proj\\.weight$
      - ^lm_head\\.
      - embed_tokens          # searched anywhere in the name (re.search), so anchors are up to you

Each entry is a Python regular expression searched (``re.search``) in every parameter name of the loaded
model, as ``model.named_parameters()`` writes them (tied weights under each of their names). A parameter
trains when any entry matches it. A regex that does not compile is a validate-time error naming its
position; one that matches no parameter of the loaded model is an error naming it.

With an adapter (``adapter: lora`` / ``qlora``) the base weights are frozen by the adapter already; the list
then chooses which of the adapter's trainable parameters (LoRA matrices, ``lora_modules_to_save``) keep
training. Names are matched as in the base model (PEFT's ``base_model.model.`` prefix removed), so the same
list works with and without an adapter; an entry that matches only frozen base weights is said in a note.

``gym spectrum CONFIG --top-percent 25`` chooses the list: it loads the base model, estimates every weight
matrix's signal-to-noise ratio (see :func:`snr`) and prints the ``unfrozen_parameters`` of the top-scoring
matrices of each kind (or writes them to a YAML snippet with ``--write``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import Field, field_validator

from gym.api import ConfigProblem, ModelError, StrictConfig, hookimpl

PEFT_PREFIX = "base_model.model."


class SpectrumConfig(StrictConfig):
    """Keys of the spectrum plugin."""

    unfrozen_parameters: list[str] | None = Field(
        None,
        description="Train only parameters whose names match one of these regular expressions (re.search over "
        "model.named_parameters() names); freeze the rest. `gym spectrum CONFIG --top-percent 25` writes the list.",
    )

    @field_validator("unfrozen_parameters", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return value or None


@hookimpl
def gym_config_schema():
    return SpectrumConfig


@hookimpl
def gym_validate_config(cfg):
    problems = []
    for i, pattern in enumerate(cfg.unfrozen_parameters or ()):
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(
                ConfigProblem(f"unfrozen_parameters.{i}", f"unfrozen_parameters[{i}] {pattern!r} is not a valid "
                              f"regular expression: {exc}")
            )
    return problems or None


# --------------------------------------------------------------------------------------------- freezing


def freeze_except(model: Any, patterns: list[str], adapter: bool) -> dict[str, Any]:
    """Set ``requires_grad`` so that only parameters matching ``patterns`` train (with an adapter: only those of
    the already trainable ones). Returns ``{"trainable": n, "total": n, "frozen_only": [...]}``; raises
    :class:`ModelError` naming each pattern that matches no parameter at all."""
    compiled = [(p, re.compile(p)) for p in patterns]
    matched_any = {p: False for p in patterns}
    matched_trainable = {p: False for p in patterns}
    trainable_ids: set[int] = set()
    params = list(model.named_parameters(remove_duplicate=False))
    was_trainable = {id(t): t.requires_grad for _, t in params}
    for name, tensor in params:
        plain = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
        hits = [p for p, rx in compiled if rx.search(plain)]
        for p in hits:
            matched_any[p] = True
        if not hits or (adapter and not was_trainable[id(tensor)]):
            continue
        for p in hits:
            matched_trainable[p] = True
        trainable_ids.add(id(tensor))
    missing = [p for p in patterns if not matched_any[p]]
    if missing:
        sample = ", ".join(n.removeprefix(PEFT_PREFIX) for n, _ in params[:4])
        raise ModelError(
            "unfrozen_parameters: " + "; ".join(f"{p!r} matches no parameter of the model" for p in missing)
            + f" (parameter names look like: {sample}, ...; `gym spectrum CONFIG` lists good candidates)"
        )
    for _, tensor in params:
        tensor.requires_grad_(id(tensor) in trainable_ids)
    unique = {id(t): t for _, t in params}
    return {
        "trainable": sum(t.numel() for i, t in unique.items() if i in trainable_ids),
        "total": sum(t.numel() for t in unique.values()),
        "frozen_only": [p for p in patterns if not matched_trainable[p]],
    }


@hookimpl
def gym_after_wrap_model(cfg, model):
    if not cfg.unfrozen_parameters:
        return
    from gym.api import say

    adapter = getattr(cfg, "adapter", None) is not None
    counts = freeze_except(model, list(cfg.unfrozen_parameters), adapter)
    share = counts["trainable"] / max(counts["total"], 1)
    say(f"spectrum: training {counts['trainable']:,} of {counts['total']:,} parameters ({share:.2%}) matching "
        f"unfrozen_parameters; the rest are frozen")
    if adapter and counts["frozen_only"]:
        say("note: unfrozen_parameters " + ", ".join(repr(p) for p in counts["frozen_only"]) + " match only base "
            f"weights, which stay frozen with adapter: {cfg.adapter} (name those modules in lora_modules_to_save "
            "to train them in full)")
    if counts["trainable"] == 0:
        raise ModelError("unfrozen_parameters: no trainable parameter is left (with an adapter the list must match "
                         "some of the adapter's own parameters, such as .*lora_.*)")


# ------------------------------------------------------------------------------------------ choosing


def snr(weight: Any, noise_cache: dict | None = None) -> float:
    """gym's signal-to-noise estimate of one weight matrix ``W`` (m x n).

    A matrix of pure noise with entries of standard deviation sigma has singular values spread like those of a
    Gaussian matrix ``G`` of the same shape scaled by sigma (Marchenko-Pastur). Low-rank structure learned in
    training lifts only a few of the largest singular values, so the *median* singular value still measures the
    noise: ``sigma = median(s(W)) / median(s(G))``. The SNR is then the matrix's energy beyond what that noise
    explains, over the noise's energy::

        SNR(W) = sum(s(W)^2) / (sigma^2 * sum(s(G)^2)) - 1        (sum(s^2) is the squared Frobenius norm)

    About 0 for a random matrix, large for one with strong structure. ``G`` is drawn once per shape (seed 0).
    """
    import torch

    w = weight.detach().float()
    if w.shape[0] > w.shape[1]:
        w = w.T
    s = torch.linalg.svdvals(w)
    key = tuple(w.shape)
    cache = noise_cache if noise_cache is not None else {}
    if key not in cache:
        generator = torch.Generator().manual_seed(0)
        g = torch.linalg.svdvals(torch.randn(*key, generator=generator))
        cache[key] = (g.median().item(), (g**2).sum().item())
    g_median, g_energy = cache[key]
    sigma = s.median().item() / g_median
    if sigma <= 0:
        return math.inf
    return float((s**2).sum().item() / (sigma**2 * g_energy) - 1.0)


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def kind_of(name: str) -> str | None:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``model.layers.*.self_attn.q_proj.weight``; ``None`` for
    matrices outside numbered layers (embeddings, output head), which Spectrum does not rank."""
    if not _LAYER_INDEX.search(name):
        return None
    return _LAYER_INDEX.sub(".*.", name, count=1)


def choose(model: Any, top_percent: float) -> tuple[list[str], dict[str, float]]:
    """The names of the top ``top_percent`` % (rounded up, at least one) of each kind of weight matrix by SNR,
    and every ranked matrix's SNR."""
    scores: dict[str, float] = {}
    kinds: dict[str, list[str]] = {}
    cache: dict = {}
    for name, tensor in model.named_parameters():
        kind = kind_of(name)
        if tensor.ndim != 2 or kind is None:
            continue
        scores[name] = snr(tensor, cache)
        kinds.setdefault(kind, []).append(name)
    chosen: list[str] = []
    for kind, names in kinds.items():
        keep = max(1, math.ceil(len(names) * top_percent / 100))
        chosen.extend(sorted(names, key=lambda n: scores[n], reverse=True)[:keep])
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    return sorted(chosen, key=order.__getitem__), scores


def as_patterns(names: list[str]) -> list[str]:
    return [f"^{re.escape(name)}$" for name in names]


def snippet(patterns: list[str], top_percent: float, base_model: str) -> str:
    import yaml

    head = (f"# gym spectrum: the top {top_percent:g}% of each kind of weight matrix of {base_model} by "
            "signal-to-noise ratio\n")
    return head + yaml.safe_dump({"unfrozen_parameters": patterns}, sort_keys=False, width=1000)


@hookimpl
def gym_register_commands(cli):
    import click

    @cli.command(name="spectrum")
    @click.argument("config", type=click.Path(dir_okay=False))
    @click.argument("overrides", nargs=-1)
    @click.option("--top-percent", type=click.FloatRange(0, 100, min_open=True), default=25.0, show_default=True,
                  help="Share of each kind of weight matrix (q_proj, down_proj, ...) to train.")
    @click.option("--write", "write", type=click.Path(dir_okay=False), default=None,
                  help="Write the YAML snippet to this file instead of printing it.")
    def spectrum(config, overrides, top_percent, write):
        """Rank CONFIG's base model's weight matrices by signal-to-noise ratio; print `unfrozen_parameters`."""
        from pathlib import Path

        from gym.api import load_config, load_model, load_tokenizer

        cfg = load_config(config, overrides)
        tokenizer = load_tokenizer(cfg)
        model = load_model(cfg, tokenizer, mixed_bf16=False)
        count = sum(1 for name, t in model.named_parameters() if t.ndim == 2 and kind_of(name))
        click.echo(f"scoring {count} weight matrices of {cfg.base_model} (one SVD each)...", err=True)
        names, scores = choose(model, top_percent)
        text = snippet(as_patterns(names), top_percent, cfg.base_model)
        if write:
            Path(write).write_text(text)
            click.echo(f"{len(names)} of {len(scores)} weight matrices chosen; written to {write}", err=True)
        else:
            click.echo(text, nl=False)
