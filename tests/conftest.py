"""Shared fixtures. Tests build everything they need (tiny models, tokenizers, data) in tmp_path."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

# Tiny models on a 2-core machine with two test workers: one thread per worker avoids oversubscription, which
# made tiny-model tests dozens of times slower. Set before anything imports torch; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest
from hypothesis import settings

# Property-based tests: "ci" (the default) runs a few derandomized examples per property, so the suite is fast
# and repeatable; GYM_FUZZ=deep runs thousands with fresh randomness (docs/testing.md has a deep run's counts).
settings.register_profile("ci", max_examples=int(os.environ.get("GYM_FUZZ_EXAMPLES", 40)), derandomize=True,
                          deadline=None, print_blob=True)
settings.register_profile("deep", max_examples=int(os.environ.get("GYM_FUZZ_EXAMPLES", 3000)), deadline=None,
                          print_blob=True)
settings.load_profile(os.environ.get("GYM_FUZZ", "ci"))

REPO = Path(__file__).resolve().parents[1]
QA_PLUGIN_SRC = REPO / "examples" / "plugins" / "gym-plugin-qa"


@pytest.fixture
def write_config(tmp_path):
    """Write YAML text (dedented) to a file and return its path."""

    def write(text: str, name: str = "config.yml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


def make_qa_distribution(root: Path) -> Path:
    """Make the example plugin importable and discoverable as an installed distribution.

    Writes ``gym_plugin_qa-0.1.0.dist-info`` (METADATA + entry_points.txt, what ``pip install`` writes) into
    ``root`` and returns the folder to put on ``sys.path`` / ``PYTHONPATH``: the same entry-point machinery
    an installed package uses, without installing into the shared environment.
    """
    info = root / "gym_plugin_qa-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gym-plugin-qa\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[gym.plugins]\nqa = gym_plugin_qa\n")
    link = root / "gym_plugin_qa"
    if not link.exists():
        link.symlink_to(QA_PLUGIN_SRC / "gym_plugin_qa", target_is_directory=True)
    return root


@pytest.fixture
def qa_plugin(tmp_path, monkeypatch):
    """The example third-party plugin, discoverable in this process and in subprocesses (via ``env``)."""
    import importlib

    from gym.plugin_manager import reset_plugin_manager

    root = make_qa_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    reset_plugin_manager()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    yield env
    sys.modules.pop("gym_plugin_qa", None)
    reset_plugin_manager()


DATA_PLUGINS = "sft,alpaca,chat_template,completion,input_output,pretrain,user_defined"


@pytest.fixture(scope="module")
def manager():
    """A plugin manager with only the built-in dataset strategies (what data tests need)."""
    from gym.plugin_manager import GymPluginManager

    m = GymPluginManager()
    m.load_entry_points(environ={"GYM_PLUGINS": DATA_PLUGINS})
    return m


@pytest.fixture(scope="module")
def tok():
    """The tiny byte-level BPE tokenizer (chatml special tokens and template)."""
    from gym.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_run_inputs(tmp_path_factory):
    """A tiny local model and a small alpaca jsonl whose 8 rows repeat (so a few steps lower the loss)."""
    import json
    import random

    from gym.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("lora-run")
    model = save_tiny_model(root / "tiny")
    rng = random.Random(0)
    rows = []
    for _ in range(8):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"instruction": "Add the numbers.", "input": f"{a} + {b}", "output": f"{a} + {b} = {a + b}"})
    data = root / "alpaca.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows * 4))
    return model, data
