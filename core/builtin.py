"""Built-in models that gym generates on the spot, so that nothing has to be downloaded.

``base_model: builtin:tiny-llama`` is a tiny Llama-style model with a byte-level BPE tokenizer (made by
:mod:`gym.tiny`). It is written once into the gym cache (``$GYM_HOME``, default ``~/.cache/gym``) under a
name that carries a version, so a change to how it is made never reuses an old copy. Writing goes through
a temporary folder renamed into place, so two processes making the same model at once cannot corrupt it.

Built-in *datasets* (``path: builtin:<name>``) come from plugins: see :mod:`gym.builtin_data`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gym.errors import ConfigError
from gym.files import publish

PREFIX = "builtin:"
ENV_HOME = "GYM_HOME"


def gym_home() -> Path:
    """The gym cache folder: ``$GYM_HOME`` or ``~/.cache/gym``."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".cache" / "gym").expanduser()


def is_builtin(path: str | None) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class BuiltinModel:
    """How one built-in model is made. Bump ``version`` whenever anything here or in gym.tiny changes."""

    description: str
    version: int = 1
    vocab_size: int = 512
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 256
    max_positions: int = 2048
    seed: int = 0

    def folder_name(self, name: str) -> str:
        return f"{name}-v{self.version}"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "tiny-llama": BuiltinModel(
        "Llama-style, 4 layers, hidden size 128, 8 heads, 0.7M parameters, random weights; byte-level BPE of "
        "512 tokens with digits split one by one and a chatml template. Learns small tasks in a minute on a CPU.",
        version=5, heads=8, kv_heads=4,
    ),
    "tiny-llama-micro": BuiltinModel(
        "Llama-style, 2 layers, hidden size 32, random weights; the same tokenizer. For tests.",
        version=4, hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64,
    ),
}


def _builtin_name(path: str, kind: str, known: dict[str, Any]) -> str:
    name = path[len(PREFIX):].split("?", 1)[0].strip()
    if name not in known:
        raise ConfigError(
            f"{path!r}: no built-in {kind} named {name!r} (built-in {kind}s: "
            + ", ".join(f"{PREFIX}{n}" for n in sorted(known)) + ")"
        )
    return name


# Words of chat roles and of a common instruction prompt, so that they become whole tokens as in a real tokenizer.
_PROMPT_WORDS = (
    "system\nuser\nassistant\n",
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n### Input:\n### Response:\n",
)


def build_builtin_tokenizer(spec: BuiltinModel):
    """gym.tiny's byte-level BPE, with the chat roles as whole tokens (as real chat tokenizers have them) and
    each digit a token of its own (arithmetic is learnt far faster)."""
    from tokenizers import pre_tokenizers

    from gym.tiny import build_tokenizer, builtin_corpus

    tokenizer = build_tokenizer(spec.vocab_size, corpus=builtin_corpus() + list(_PROMPT_WORDS) * 300)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    return tokenizer


def _plugin_models() -> dict[str, Any]:
    """``{name: materialize}`` of the built-in models plugins register; one of gym's own names is an error."""
    from gym.errors import PluginError
    from gym.plugin_manager import get_plugin_manager

    found: dict[str, Any] = {}
    for result in get_plugin_manager().hook.gym_builtin_models():
        for name, materialize in (result or {}).items():
            if name in BUILTIN_MODELS or name in found:
                raise PluginError(f"the built-in model name {name!r} is registered twice (gym_builtin_models)")
            found[name] = materialize
    return found


def materialize_model(path: str) -> Path:
    """The local folder of ``builtin:<name>``, generated into the gym cache the first time."""
    plugin_models = _plugin_models()  # builtin models that plugins make (gym_builtin_models), e.g. tiny-llava
    name = _builtin_name(path, "model", {**BUILTIN_MODELS, **plugin_models})
    if name in plugin_models:
        from gym.methods import load_object

        return Path(load_object(plugin_models[name])(path))
    spec = BUILTIN_MODELS[name]
    root = gym_home() / "models"
    final = root / spec.folder_name(name)
    if (final / "config.json").is_file():
        return final
    from gym.tiny import build_model

    root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        tokenizer = build_builtin_tokenizer(spec)
        model = build_model(
            tokenizer,
            hidden_size=spec.hidden_size,
            layers=spec.layers,
            heads=spec.heads,
            kv_heads=spec.kv_heads,
            intermediate_size=spec.intermediate_size,
            max_positions=spec.max_positions,
            seed=spec.seed,
        )
        model.save_pretrained(build)
        tokenizer.save_pretrained(build)
        (build / "gym_builtin.json").write_text(json.dumps({"name": name, **asdict(spec)}, indent=1))
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    publish(build, final)
    return final
