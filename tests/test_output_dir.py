"""output_dir never costs the user their files: checked and claimed before any work."""

from __future__ import annotations

import pytest

from gym.errors import ConfigError


def cfg_for(tmp_path, output_dir, base="builtin:tiny-llama-micro", **extra):
    from gym import testing

    config = {"base_model": str(base), "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
              "output_dir": str(output_dir), **extra}
    return testing.validate(config)


def test_the_base_models_folder_is_refused(tmp_path):
    from gym.outputs import prepare_output_dir
    from gym.testing import tiny_model

    model = tiny_model(tmp_path / "model")
    for out in (model, model / "sub"):
        with pytest.raises(ConfigError, match="base model's folder"):
            prepare_output_dir(cfg_for(tmp_path, out, base=model))
    assert (model / "config.json").is_file()


def test_a_folder_of_other_files_needs_overwrite_output_dir(tmp_path):
    from gym.outputs import RUN_MARKER, prepare_output_dir

    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("mine")
    with pytest.raises(ConfigError, match=r"already holds files gym did not write \(README.md\).*overwrite_output_dir"):
        prepare_output_dir(cfg_for(tmp_path, project))
    assert prepare_output_dir(cfg_for(tmp_path, project, overwrite_output_dir=True)) == []
    assert (project / RUN_MARKER).exists() and (project / "README.md").read_text() == "mine"
    # now it is a gym run's folder: a second run says it writes over it
    (notes,) = [prepare_output_dir(cfg_for(tmp_path, project))]
    assert notes and "previous gym run" in notes[0]


def test_a_file_or_an_unwritable_path_is_refused_before_any_work(tmp_path):
    from gym.outputs import prepare_output_dir

    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_output_dir(cfg_for(tmp_path, file))
    with pytest.raises(ConfigError, match="cannot write to"):
        prepare_output_dir(cfg_for(tmp_path, file / "below"))


def _checkpoint(folder, step, weights=True, state_ok=True, cut_weights=False):
    import json

    from safetensors.numpy import save_file
    import numpy as np

    folder.mkdir(parents=True)
    state = json.dumps({"global_step": step})
    (folder / "trainer_state.json").write_text(state if state_ok else state[:8])
    if weights:
        save_file({"w": np.zeros((64, 64), dtype=np.float32)}, str(folder / "model.safetensors"))
        if cut_weights:
            data = (folder / "model.safetensors").read_bytes()
            (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def test_auto_resume_takes_the_newest_complete_checkpoint_and_names_those_skipped(tmp_path, capsys):
    from gym.training import resume_checkpoint

    out = tmp_path / "out"
    _checkpoint(out / "checkpoint-2", 2)
    _checkpoint(out / "checkpoint-4", 4, cut_weights=True)  # killed while writing the weights
    _checkpoint(out / "checkpoint-6", 6, state_ok=False)  # killed while writing the state
    cfg = cfg_for(tmp_path, out, auto_resume_from_checkpoints=True)
    assert resume_checkpoint(cfg) == str(out / "checkpoint-2")
    printed = capsys.readouterr().out
    assert "skipping checkpoint-6" in printed and "cut short" in printed and "skipping checkpoint-4" in printed

    explicit = cfg_for(tmp_path, out, resume_from_checkpoint=str(out / "checkpoint-4"))
    with pytest.raises(ConfigError, match="checkpoint-4 cannot be resumed from: model.safetensors is cut short"):
        resume_checkpoint(explicit)


def test_a_push_that_cannot_happen_is_refused_before_any_work(tmp_path, monkeypatch):
    """No network here: offline mode, or no token, must stop the run before the data is even read."""
    from gym.run import run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = cfg_for(tmp_path, tmp_path / "out", hub_model_id="me/my-model")
    cfg.datasets[0].path = str(tmp_path / "never-read.jsonl")  # does not exist: reading it would fail differently
    with pytest.raises(ConfigError, match=r"hub_model_id: the model cannot be pushed to me/my-model: the hub is offline"):
        run(cfg)
    from gym import hub

    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert "no hub token" in hub.push_problem("me/my-model")
