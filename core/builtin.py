"""Built-in models and datasets that gym generates on the spot, so that nothing has to be downloaded.

``base_model: builtin:tiny-llama`` is a tiny Llama-style model with a byte-level BPE tokenizer (made by
:mod:`gym.tiny`); ``datasets: [{path: builtin:addition}]`` is a deterministic set of addition problems.
Both are written once into the gym cache (``$GYM_HOME``, default ``~/.cache/gym``) under a name that
carries a version, so a change to how they are made never reuses an old copy. Writing goes through a
temporary folder renamed into place, so two processes making the same thing at once cannot corrupt it.

A built-in dataset path takes options after ``?``: ``builtin:addition?digits=3&rows=5000&seed=1``.
Each row carries every common layout at once (``instruction`` / ``input`` / ``output`` for alpaca,
``messages`` for chat_template, ``text`` for completion), so any of those dataset types can read it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from gym.errors import ConfigError, DataError

PREFIX = "builtin:"
ENV_HOME = "GYM_HOME"


def gym_home() -> Path:
    """The gym cache folder: ``$GYM_HOME`` or ``~/.cache/gym``."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".cache" / "gym").expanduser()


def is_builtin(path: str | None) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def _publish(build: Path, final: Path) -> None:
    """Move a finished ``build`` folder or file to ``final``; if another process won the race, keep theirs."""
    try:
        os.replace(build, final) if build.is_file() else os.rename(build, final)
    except OSError:
        if not final.exists():
            raise
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True) if build.is_dir() else build.unlink(missing_ok=True)


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
        version=4, heads=8, kv_heads=4,
    ),
    "tiny-llama-micro": BuiltinModel(
        "Llama-style, 2 layers, hidden size 32, random weights; the same tokenizer. For tests.",
        version=3, hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64,
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


# Words of chat roles and of the alpaca prompt, so that they become whole tokens as in a real tokenizer.
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


def materialize_model(path: str) -> Path:
    """The local folder of ``builtin:<name>``, generated into the gym cache the first time."""
    name = _builtin_name(path, "model", BUILTIN_MODELS)
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
    _publish(build, final)
    return final


# -------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class AdditionTask:
    """``a + b`` with operands of exactly ``digits`` digits. One pair in ten is held out for evaluation."""

    digits: int = 2
    rows: int = 20000
    seed: int = 0

    VERSION = 2  # bump when the rows change

    @property
    def smallest(self) -> int:
        return 10 ** (self.digits - 1) if self.digits > 1 else 0

    @property
    def largest(self) -> int:
        return 10**self.digits - 1

    @staticmethod
    def held_out(a: int, b: int) -> bool:
        """Whether the pair belongs to the evaluation problems (never in the training rows)."""
        return zlib.crc32(f"{a}+{b}".encode()) % 10 == 0

    def _pairs(self, rng: random.Random, held_out: bool) -> Iterator[tuple[int, int]]:
        while True:
            a, b = rng.randint(self.smallest, self.largest), rng.randint(self.smallest, self.largest)
            if self.held_out(a, b) == held_out:
                yield a, b

    def training_rows(self) -> Iterator[dict[str, Any]]:
        pairs = self._pairs(random.Random(self.seed), held_out=False)
        for _ in range(self.rows):
            yield addition_row(*next(pairs))

    def evaluation_rows(self, count: int, seed: int = 1234) -> list[dict[str, Any]]:
        """``count`` held-out problems (the same ones for the same count and seed)."""
        pairs = self._pairs(random.Random(seed), held_out=True)
        return [addition_row(*next(pairs)) for _ in range(count)]

    def file_name(self) -> str:
        return f"addition-v{self.VERSION}-d{self.digits}-n{self.rows}-s{self.seed}.jsonl"


def addition_row(a: int, b: int) -> dict[str, Any]:
    """One problem in every layout gym's built-in dataset types read."""
    question = f"What is {a} + {b}?"
    answer = str(a + b)
    return {
        "instruction": question,
        "input": "",
        "output": answer,
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "text": f"{question} {answer}",
    }


def _options(path: str, allowed: dict[str, tuple[int, int]]) -> dict[str, int]:
    """``builtin:name?key=value&...`` -> {key: int}; each key in ``allowed`` with its (min, max)."""
    _, _, query = path.partition("?")
    options: dict[str, int] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(
                f"{path!r}: unknown option {item!r}; options are " + ", ".join(f"{k}=<int>" for k in allowed)
            )
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{path!r}: option {key} must be a whole number, not {value!r}") from None
        low, high = allowed[key]
        if not low <= number <= high:
            raise ConfigError(f"{path!r}: option {key} must be between {low} and {high}, not {number}")
        options[key] = number
    return options


ADDITION_OPTIONS = {"digits": (1, 9), "rows": (1, 10_000_000), "seed": (0, 2**31 - 1)}

BUILTIN_DATASETS: dict[str, str] = {
    "addition": "addition problems 'What is 12 + 34?' -> '46', operands of `digits` digits (options: digits=2, "
    "rows=20000, seed=0); columns instruction/input/output, messages and text",
}


def addition_task(path: str) -> AdditionTask:
    """The :class:`AdditionTask` a ``builtin:addition?...`` path describes."""
    _builtin_name(path, "dataset", BUILTIN_DATASETS)
    return AdditionTask(**_options(path, ADDITION_OPTIONS))


def materialize_dataset(path: str) -> str:
    """The local jsonl file of a ``builtin:`` dataset path, generated into the gym cache the first time.

    The data loader calls this for every ``datasets[].path`` that starts with ``builtin:``.
    """
    if not is_builtin(path):
        raise DataError(f"{path!r} is not a built-in dataset (those start with {PREFIX!r})")
    task = addition_task(path)
    root = gym_home() / "datasets"
    final = root / task.file_name()
    if final.is_file():
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".addition-", suffix=".jsonl", dir=root)
    try:
        with os.fdopen(fd, "w") as handle:
            for row in task.training_rows():
                handle.write(json.dumps(row) + "\n")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _publish(Path(tmp), final)
    return str(final)
