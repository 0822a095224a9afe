"""``gym push OUTPUT_DIR``: push a finished run's folder to the Hugging Face hub, later than the run itself.

A run with ``hub_model_id`` pushes at its end (checked before training starts); this command is for a run that
did not, or for pushing again. The repository comes from ``--repo-id`` or the run's own ``hub_model_id`` (in its
``gym_config.yml``). Everything that stops a push (offline mode, no token, no hub reachable) is said before any
upload starts. Checkpoints and gym's own marker files stay local unless ``--with-checkpoints``.
"""

from __future__ import annotations

from pathlib import Path

from gym.api import GymError, hookimpl, push_problem, say

RUN_FILES = ("gym_config.yml", "gym_results.json", ".gym-run")
LOCAL_ONLY = [".gym-run", ".gym-*", "**/.lock*"]


def run_folder(path: str) -> Path:
    """``path`` as a finished gym run's output folder, or a GymError saying what it is instead."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise GymError(f"{folder} is not a folder (gym push takes the output_dir of a gym run)")
    if not any((folder / name).exists() for name in RUN_FILES):
        raise GymError(f"{folder} is not a gym run's output_dir (no gym_config.yml, gym_results.json or .gym-run)")
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise GymError(f"{folder} holds no saved model yet (no config.json or adapter_config.json): the run has not "
                       "finished; push a checkpoint by pointing at its checkpoint-N folder's run instead")
    return folder


def repo_of(folder: Path, repo_id: str | None) -> str:
    if repo_id:
        return repo_id
    import yaml

    config = folder / "gym_config.yml"
    saved = (yaml.safe_load(config.read_text()) or {}) if config.is_file() else {}
    if not saved.get("hub_model_id"):
        raise GymError(f"{folder}: the run set no hub_model_id; name the repository with --repo-id OWNER/NAME")
    return saved["hub_model_id"]


def push(path: str, repo_id: str | None = None, private: bool = False, with_checkpoints: bool = False) -> str:
    """Upload the run in ``path`` to ``repo_id``; returns the repository's URL."""
    folder = run_folder(path)
    repo = repo_of(folder, repo_id)
    problem = push_problem(repo)
    if problem:
        raise GymError(f"cannot push {folder} to {repo}: {problem}")
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo, private=private, exist_ok=True)
    ignore = LOCAL_ONLY + ([] if with_checkpoints else ["checkpoint-*", "checkpoint-*/**"])
    say(f"pushing {folder} to {repo}" + (" (with checkpoints)" if with_checkpoints else ""))
    api.upload_folder(repo_id=repo, folder_path=str(folder), ignore_patterns=ignore,
                      commit_message=f"gym run {folder.name}")
    return str(url)


@hookimpl
def gym_register_commands(cli):
    import click

    @cli.command("push")
    @click.argument("output_dir", type=click.Path())
    @click.option("--repo-id", help="OWNER/NAME on the hub (default: the run's hub_model_id).")
    @click.option("--private", is_flag=True, help="Create the repository as private.")
    @click.option("--with-checkpoints", is_flag=True, help="Also upload the checkpoint-N folders.")
    def push_command(output_dir: str, repo_id: str | None, private: bool, with_checkpoints: bool) -> None:
        """Push a finished run's OUTPUT_DIR (model, tokenizer, card, report) to the Hugging Face hub."""
        url = push(output_dir, repo_id, private, with_checkpoints)  # a GymError is printed by gym as any other
        click.echo(f"pushed to {url}")
