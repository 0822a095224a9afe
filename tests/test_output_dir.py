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
