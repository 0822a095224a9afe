"""The tracker extras give a working set: every extra's requirements hold for what is installed, the trackers'
own requirements agree with the training stack's (MLflow's pyarrow pin against datasets'), and datasets still
builds and reads data with MLflow imported."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
TRACKER_EXTRAS = ("wandb", "mlflow", "tensorboard", "comet", "swanlab", "trackio")
DISTRIBUTIONS = ("wandb", "mlflow", "tensorboard", "comet_ml", "swanlab", "trackio")
STACK = ("datasets", "transformers", "accelerate", "peft", "torch")


def extras() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet(distribution: str) -> list[str]:
    """``distribution``'s own requirements (no extras) that the installed versions do not meet."""
    problems = []
    for text in importlib.metadata.requires(distribution) or ():
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        version = installed(requirement.name)
        if version is not None and not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{distribution} needs {requirement}, {requirement.name} {version} is installed")
    return problems


@pytest.mark.parametrize("extra", TRACKER_EXTRAS)
def test_each_tracker_extra_is_declared_and_met(extra):
    declared = extras()[extra]
    assert declared, extra
    for text in declared:
        requirement = Requirement(text)
        if requirement.name == "gym-llm":
            continue
        version = installed(requirement.name)
        assert version is not None, f"{requirement.name} (extra {extra}) is not installed"
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement} but {version} installed"


def test_the_combined_trackers_extra_names_the_tracker_extras():
    (combined,) = extras()["trackers"]
    requirement = Requirement(combined)
    assert requirement.name == "gym-llm" and set(TRACKER_EXTRAS) <= requirement.extras


@pytest.mark.parametrize("distribution", [*DISTRIBUTIONS, *STACK])
def test_installed_trackers_and_the_training_stack_agree(distribution):
    assert unmet(distribution) == []


def test_mlflow_and_datasets_agree_on_pyarrow():
    pyarrow = installed("pyarrow")
    for distribution in ("mlflow", "datasets"):
        (pin,) = [Requirement(t) for t in importlib.metadata.requires(distribution)
                  if re.match(r"pyarrow\b", t) and "extra ==" not in t]
        assert pin.specifier.contains(pyarrow), f"{distribution} pins {pin}, pyarrow {pyarrow} is installed"


def test_datasets_builds_and_reads_with_mlflow_imported(tmp_path):
    import datasets
    import mlflow  # noqa: F401 - imported first, as a run with MLflow on does

    rows = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "text": ["a", "b"]})
    rows.save_to_disk(str(tmp_path / "rows"))
    rows.to_parquet(str(tmp_path / "rows.parquet"))
    again = datasets.load_from_disk(str(tmp_path / "rows"))
    parquet = datasets.load_dataset("parquet", data_files=str(tmp_path / "rows.parquet"), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    assert again["input_ids"] == parquet["input_ids"] == [[1, 2, 3], [4, 5]]
