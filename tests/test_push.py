"""gym push: a finished run goes to the hub later; every reason it cannot is said before any upload starts.

There is no network here: the checks run for real (offline mode, missing token), the upload is recorded by a
stand-in for huggingface_hub's HfApi. An upload to the real hub is untested (docs/tracking.md says so)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gym.cli import main


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "model.safetensors").write_bytes(b"x")
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"weights")
    (out / "gym_config.yml").write_text("base_model: x\nhub_model_id: me/my-run\n")
    (out / "gym_results.json").write_text(json.dumps({"metrics": {}}))
    (out / ".gym-run").write_text("a gym run\n")
    return out


class RecordingApi:
    calls: list = []

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, ignore_patterns, commit_message):
        self.calls.append(("upload_folder", repo_id, folder_path, tuple(ignore_patterns)))


def test_offline_or_no_token_is_refused_before_any_upload(run_dir, monkeypatch):
    import huggingface_hub

    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(main, ["push", str(run_dir)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"cannot push {run_dir} to me/my-run: the hub is offline here" in result.output
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    result = CliRunner().invoke(main, ["push", str(run_dir), "--repo-id", "me/other"])
    assert "cannot push" in result.output and "me/other: no hub token is set" in result.output
    assert RecordingApi.calls == []


def test_a_finished_run_is_uploaded_without_its_checkpoints_and_markers(run_dir, monkeypatch):
    import huggingface_hub

    import gym.plugins.push as push

    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(push, "push_problem", lambda repo: None)
    result = CliRunner().invoke(main, ["push", str(run_dir), "--private"])
    assert result.exit_code == 0, result.output
    assert "pushed to https://huggingface.co/me/my-run" in result.output
    (create, upload) = RecordingApi.calls
    assert create == ("create_repo", "me/my-run", True, True)
    assert upload[1:3] == ("me/my-run", str(run_dir))
    assert "checkpoint-*" in upload[3] and ".gym-run" in upload[3]


@pytest.mark.parametrize("case", ["missing", "not a run", "unfinished", "no repo"])
def test_what_is_not_a_pushable_run_is_named(run_dir, tmp_path, case):
    if case == "missing":
        target, expected = tmp_path / "nope", "is not a folder"
    elif case == "not a run":
        target = tmp_path / "plain"
        target.mkdir()
        expected = "is not a gym run's output_dir"
    elif case == "unfinished":
        (run_dir / "config.json").unlink()
        target, expected = run_dir, "holds no saved model yet"
    else:
        (run_dir / "gym_config.yml").write_text("base_model: x\n")
        target, expected = run_dir, "the run set no hub_model_id; name the repository with --repo-id"
    result = CliRunner().invoke(main, ["push", str(target)])
    assert result.exit_code != 0 and expected in result.output and "Traceback" not in result.output
