"""Experiment trackers: one real tiny run logs to W&B (offline), MLflow (a SQLite store), TensorBoard, Comet (an
offline archive), SwanLab (offline files) and trackio (its local database) at once; each is read back through the
tracker's own reader or file format and compared with the run's own records (``trainer_state.json``,
``gym_results.json``)."""

from __future__ import annotations

import glob
import json
import os
import struct
from pathlib import Path

import pytest
from pydantic import SecretStr

from gym import testing
from gym.api import ConfigError, StrictConfig, hookimpl

SECRET = "s3cret-token-value"
STEPS = 4
TRACKERS = ("wandb", "mlflow", "tensorboard", "comet", "swanlab", "trackio")
NAMESPACES = ("train/", "eval/", "data/", "final/")  # gym's names; trackers add their own (_runtime, ...)


class SecretPlugin:
    """A plugin with a secret key, so the run's config holds a secret the trackers must never see in clear."""

    class Schema(StrictConfig):
        tracker_test_token: SecretStr | None = None

    @hookimpl
    def gym_config_schema(self):
        return self.Schema


# ------------------------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step run with evaluation, a task evaluation, and all three trackers."""
    tmp = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # MLflow's default artifact folder and anything else relative lands here
        for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": tmp / "wandb-dir", "WANDB_CONFIG_DIR": tmp / "wcfg",
                            "WANDB_CACHE_DIR": tmp / "wcache", "WANDB_DATA_DIR": tmp / "wdata",
                            "WANDB_SILENT": "true", "COMET_CONFIG": tmp / "no.comet.config",
                            "COMET_DISABLE_AUTO_LOGGING": "1", "SWANLAB_SAVE_DIR": tmp / "swanlab-home",
                            "TRACKIO_DIR": tmp / "trackio"}.items():
            mp.setenv(name, str(value))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        config = {
            "datasets": [{"path": "builtin:addition?rows=60", "type": "alpaca"}],
            "val_set_size": 0.1, "eval_steps": 2, "eval_task": "addition", "eval_task_samples": 4,
            "eval_task_max_new_tokens": 3,
            "tracker_test_token": SECRET,
            "wandb_project": "gym-test", "wandb_mode": "offline", "wandb_name": "tiny",
            "mlflow_tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "mlflow_experiment_name": "gym-test",
            "mlflow_run_name": "tiny",
            "use_tensorboard": True, "save_strategy": "steps", "save_steps": STEPS,
            "wandb_log_model": "checkpoint", "hf_mlflow_log_artifacts": True, "wandb_watch": "all",
            "comet_project_name": "gym-test", "comet_online": False,
            "swanlab_project": "gym-test", "swanlab_mode": "offline", "swanlab_experiment_name": "tiny",
            "trackio_project_name": "gym-test", "trackio_run_name": "tiny",
        }
        result = testing.run_config(config, SecretPlugin(), steps=STEPS, tmp_path=tmp)
        trackio = read_trackio("gym-test", "tiny")
    out = Path(result.output_dir)
    return {
        "trackio": trackio,
        "comet": read_comet(out),
        "swanlab": read_swanlab(out),
        "out": out,
        "tmp": tmp,
        "history": json.loads((out / "trainer_state.json").read_text())["log_history"],
        "results": json.loads((out / "gym_results.json").read_text()),
        "wandb": read_wandb(out),
        "mlflow": read_mlflow(f"sqlite:///{tmp / 'mlflow.db'}", "gym-test"),
        "tensorboard": read_tensorboard(out),
    }


# ------------------------------------------------------------------------- each tracker's own reader


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` transaction log (W&B's own protobuf ``Record``s in LevelDB-log framing: a
    7-byte file header, 32 KiB blocks, chunks of crc32 / length / type)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first start, middle / last continue
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def read_wandb(out: Path) -> dict:
    (path,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    steps: dict[int, dict[str, float]] = {}
    config: dict = {}
    artifacts: list = []
    watched: set[str] = set()
    for record in wandb_records(Path(path)):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            steps.setdefault(int(row["_step"]), {}).update({k: v for k, v in row.items() if not k.startswith("_")})
            watched.update(k.split("/")[0] for k in row if k.startswith(("gradients/", "parameters/")))
        elif kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "artifact":
            artifacts.append((record.artifact.type, record.artifact.aliases,
                              sorted(entry.path for entry in record.artifact.manifest.contents)))
    return {"steps": steps, "config": {k: v for k, v in config.items() if not k.startswith("_")},
            "artifacts": artifacts, "watched": watched}


def read_mlflow(uri: str, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    steps: dict[int, dict[str, float]] = {}
    for key in run.data.metrics:
        for metric in client.get_metric_history(run.info.run_id, key):
            steps.setdefault(metric.step, {})[key] = metric.value
    artifacts = {folder.path: sorted(f.path for f in client.list_artifacts(run.info.run_id, folder.path))
                 for folder in client.list_artifacts(run.info.run_id)}
    return {"steps": steps, "params": run.data.params, "status": run.info.status, "name": run.info.run_name,
            "artifacts": artifacts}


def read_tensorboard(out: Path) -> dict:
    from tensorboard.backend.event_processing import event_accumulator

    (folder,) = glob.glob(str(out / "tensorboard" / "*"))
    acc = event_accumulator.EventAccumulator(folder, size_guidance={event_accumulator.SCALARS: 0,
                                                                    event_accumulator.TENSORS: 0})
    acc.Reload()
    steps: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            steps.setdefault(event.step, {})[tag] = event.value
    (text,) = acc.Tensors("config/text_summary")
    return {"steps": steps, "config_text": text.tensor_proto.string_val[0].decode()}


def read_comet(out: Path) -> dict:
    """Comet's offline archive: ``messages.json`` holds one JSON message a line, as ``comet upload`` sends them."""
    import zipfile

    (path,) = glob.glob(str(out / "comet" / "*.zip"))
    steps: dict[int, dict[str, float]] = {}
    params: dict[str, object] = {}
    for line in zipfile.ZipFile(path).read("messages.json").decode().splitlines():
        message = json.loads(line)
        payload = message["payload"]
        if message["type"] == "metric_msg":
            metric = payload["metric"]
            steps.setdefault(metric["step"], {})[metric["metricName"]] = float(metric["metricValue"])
        elif message["type"] == "parameter_msg" and payload["param"]["source"] == "manual":
            params[payload["param"]["paramName"]] = payload["param"]["paramValue"]
    return {"steps": steps, "params": params}


def read_swanlab(out: Path) -> dict:
    """SwanLab's offline run file, read with SwanLab's own ``DataStoreReader`` and ``Record`` protobuf."""
    import yaml
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    (path,) = glob.glob(str(out / "swanlog" / "run-*" / "run-*.swanlab"))
    reader = DataStoreReader()
    reader.open(path)
    steps: dict[int, dict[str, float]] = {}
    finished = False
    for data in reader:
        record = Record()
        record.ParseFromString(data)
        if record.HasField("scalar"):
            steps.setdefault(record.scalar.step, {})[record.scalar.key] = record.scalar.value.number
        finished = finished or record.HasField("finish")
    reader.close()
    config = yaml.safe_load((Path(path).parent / "files" / "config.yaml").read_text())
    return {"steps": steps, "config": {k: v["value"] for k, v in config.items()}, "finished": finished}


def read_trackio(project: str, run: str) -> dict:
    from trackio.sqlite_storage import SQLiteStorage

    steps: dict[int, dict[str, float]] = {}
    for row in SQLiteStorage.get_logs(project, run):
        steps.setdefault(row["step"], {}).update({k: v for k, v in row.items() if k.startswith(NAMESPACES)})
    return {"steps": steps, "config": SQLiteStorage.get_run_config(project, run)}


def names(steps: dict[int, dict[str, float]]) -> set[str]:
    return {name for row in steps.values() for name in row if name.startswith(NAMESPACES)}


# ------------------------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_every_tracker_gets_the_same_names(run):
    wanted = {"train/loss", "train/learning_rate", "train/grad_norm", "train/epoch", "train/tokens_per_second",
              "eval/loss", "data/rows_read", "data/train/tokens", "data/train/trained_tokens",
              "final/train_loss", "final/eval_loss", "final/tokens_per_second",
              "final/addition_exact_match", "final/addition_exact_match_before"}
    seen = {tracker: names(run[tracker]["steps"]) for tracker in TRACKERS}
    assert wanted <= seen["wandb"], wanted - seen["wandb"]
    for tracker in TRACKERS:
        assert seen[tracker] == seen["wandb"], (tracker, seen[tracker] ^ seen["wandb"])


@pytest.mark.slow
def test_losses_match_the_trainer_state(run):
    logged = {e["step"]: e["loss"] for e in run["history"] if "loss" in e}
    evals = {e["step"]: e["eval_loss"] for e in run["history"] if "eval_loss" in e}
    assert sorted(logged) == list(range(1, STEPS + 1)) and evals
    for tracker in TRACKERS:
        steps = run[tracker]["steps"]
        assert {s: steps[s]["train/loss"] for s in logged} == pytest.approx(logged, rel=1e-6), tracker
        assert {s: steps[s]["eval/loss"] for s in evals} == pytest.approx(evals, rel=1e-6), tracker
        assert all(steps[s]["train/tokens_per_second"] > 0 for s in logged), tracker


@pytest.mark.slow
def test_data_figures_and_final_metrics_arrive(run):
    figures = run["results"]["data_figures"]
    metrics = {f"final/{k}": v for k, v in run["results"]["metrics"].items() if isinstance(v, (int, float))}
    assert figures["data/rows_read"] == 60 and figures["data/train/tokens"] > 0
    for tracker in TRACKERS:
        steps = run[tracker]["steps"]
        start = {k: v for k, v in steps[0].items() if k.startswith(NAMESPACES)}
        assert start == pytest.approx(figures), tracker  # logged once, when training starts
        assert {k: v for k, v in steps[STEPS].items() if k.startswith("final/")} == pytest.approx(metrics), tracker


@pytest.mark.slow
def test_config_is_logged_with_secrets_redacted(run):
    params = run["mlflow"]["params"]
    assert params["learning_rate"] == "0.001" and params["datasets.0.type"] == "alpaca"
    assert params["tracker_test_token"] == "**********"
    assert run["wandb"]["config"]["tracker_test_token"] == "**********"
    assert run["wandb"]["config"]["wandb_name"] == "tiny"
    assert run["comet"]["params"]["tracker_test_token"] == "**********"
    assert run["swanlab"]["config"]["tracker_test_token"] == "**********"
    assert run["trackio"]["config"]["tracker_test_token"] == "**********"
    assert run["comet"]["params"]["learning_rate"] in (0.001, "0.001")
    assert run["swanlab"]["config"]["learning_rate"] == run["trackio"]["config"]["learning_rate"] == 0.001
    assert "learning_rate: 0.001" in run["tensorboard"]["config_text"]
    assert "tracker_test_token: '**********'" in run["tensorboard"]["config_text"]
    stored = b"".join(p.read_bytes() for p in run["tmp"].rglob("*") if p.is_file())  # every tracker's files
    assert b"tracker_test_token" in stored and SECRET.encode() not in stored


@pytest.mark.slow
def test_runs_are_closed_and_named(run):
    assert run["mlflow"]["status"] == "FINISHED" and run["mlflow"]["name"] == "tiny"
    assert run["swanlab"]["finished"]


# ------------------------------------------------------------------------------- validation, cheaply


BASE = {"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "alpaca"}]}
ASKS = {
    "wandb": ({"wandb_project": "p", "wandb_mode": "offline"}, "wandb_project"),
    "comet_ml": ({"comet_project_name": "p", "comet_online": False}, "comet_project_name"),
    "swanlab": ({"swanlab_project": "p", "swanlab_mode": "offline"}, "swanlab_project"),
    "trackio": ({"trackio_project_name": "p"}, "trackio_project_name"),
    "mlflow": ({"mlflow_tracking_uri": "sqlite:///x.db"}, "mlflow_tracking_uri"),
    "tensorboard": ({"use_tensorboard": True}, "use_tensorboard"),
}


@pytest.mark.parametrize("package", sorted(ASKS))
def test_missing_package_is_a_validate_error_naming_key_and_extra(package, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    keys, key = ASKS[package]
    with pytest.raises(ConfigError) as caught:
        testing.validate({**BASE, **keys})
    (problem,) = [p for p in caught.value.problems if str(p).startswith(key)]
    assert f"gym-llm[{package.removesuffix('_ml')}]" in str(problem) and "not installed" in str(problem)
    monkeypatch.undo()
    testing.validate({**BASE, **keys})  # with the package there, the same config validates


def tracker_callbacks(cfg) -> list[str]:
    from gym.plugin_manager import get_plugin_manager

    callbacks = [c for _, r in get_plugin_manager().call_each("gym_callbacks", cfg=cfg) for c in r or ()]
    return [c.tracker.name for c in callbacks if hasattr(c, "tracker")]


def test_empty_keys_ask_for_nothing():
    cfg = testing.validate({**BASE, "wandb_project": None, "wandb_entity": None, "wandb_watch": None,
                            "wandb_name": None, "wandb_log_model": None, "mlflow_tracking_uri": None,
                            "use_tensorboard": None})
    assert tracker_callbacks(cfg) == []


def test_switches_turn_trackers_on_and_off():
    on = testing.validate({**BASE, "wandb_project": "p", "wandb_mode": "offline", "mlflow_experiment_name": "e",
                           "use_tensorboard": True})
    assert sorted(tracker_callbacks(on)) == ["mlflow", "tensorboard", "wandb"]
    off = testing.validate({**BASE, "wandb_project": "p", "use_wandb": False, "mlflow_experiment_name": "e",
                            "use_mlflow": False, "wandb_mode": "offline"})
    assert tracker_callbacks(off) == []
    cfg = testing.validate({**BASE, "wandb_project": "p", "wandb_mode": "offline", "wandb_watch": "false"})
    assert cfg.wandb_watch is None


LOGINS = {  # an online tracker with no login: said at validate, not after the data is prepared
    "wandb": ({"wandb_project": "p"}, "WANDB_API_KEY", "wandb login"),
    "swanlab": ({"swanlab_project": "p"}, "SWANLAB_API_KEY", "swanlab login"),
    "comet": ({"comet_project_name": "p"}, "COMET_API_KEY", "comet login"),
}


@pytest.mark.parametrize("tracker", sorted(LOGINS))
def test_online_without_a_login_is_a_validate_error(tracker, monkeypatch, tmp_path):
    keys, variable, command = LOGINS[tracker]
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, ~/.comet.config, ~/.swanlab
    monkeypatch.chdir(tmp_path)
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "NETRC", "SWANLAB_API_KEY",
                 "SWANLAB_ROOT", "SWANLAB_SAVE_DIR", "COMET_API_KEY", "COMET_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as caught:
        testing.validate({**BASE, **keys})
    assert command in str(caught.value) and "offline" in str(caught.value)
    monkeypatch.setenv(variable, "a-key")
    testing.validate({**BASE, **keys})


def test_tracker_keys_without_their_tracker_are_errors():
    with pytest.raises(ConfigError) as caught:
        testing.validate({**BASE, "wandb_name": "run-1", "mlflow_run_name": "run-1"})
    text = "\n".join(map(str, caught.value.problems))
    assert "wandb_name" in text and "set wandb_project" in text
    assert "mlflow_run_name" in text and "set mlflow_tracking_uri" in text


def test_only_the_main_process_logs(monkeypatch):
    from transformers import TrainerControl, TrainerState

    from gym.plugins import tracking

    class Recorder(tracking.Tracker):
        name = "recorder"
        calls: list = []

        def start(self, cfg, args, model):
            self.calls.append("start")

        def log(self, metrics, step):
            self.calls.append(metrics)

        def close(self, failed):
            self.calls.append("close")

    cfg = testing.validate({**BASE, "output_dir": "out"})
    args = type("Args", (), {"gym_data": {"data/rows_read": 3}, "world_size": 1, "logging_steps": 1})()
    monkeypatch.setenv("RANK", "1")
    worker = tracking.callback(cfg, Recorder())
    worker.on_train_begin(args, TrainerState(), TrainerControl())
    worker.on_log(args, TrainerState(), TrainerControl(), logs={"loss": 1.0})
    assert Recorder.calls == []
    monkeypatch.setenv("RANK", "0")
    main = tracking.callback(cfg, Recorder())
    main.on_train_begin(args, TrainerState(), TrainerControl())
    main.on_log(args, TrainerState(), TrainerControl(), logs={"loss": 1.0, "eval_loss": 2.0, "train_runtime": 3.0})
    assert Recorder.calls == ["start", {"data/rows_read": 3.0}, {"train/loss": 1.0, "eval/loss": 2.0}]
    main._close_unfinished()
    assert Recorder.calls[-1] == "close"
    tracking._OPEN.clear()


def test_plugins_do_not_import_trackers_at_validate():
    import subprocess
    import sys

    code = ("import sys; from gym import testing; "
            "testing.validate({'base_model': 'm', 'datasets': [{'path': 'd.jsonl', 'type': 'alpaca'}], "
            "'wandb_project': 'p', 'wandb_mode': 'offline', 'mlflow_experiment_name': 'e', 'use_tensorboard': True, "
            "'comet_project_name': 'p', 'comet_online': False, 'swanlab_project': 'p', 'swanlab_mode': 'offline', "
            "'trackio_project_name': 'p'}); "
            "print(sorted(m for m in ('wandb', 'mlflow', 'tensorboard', 'comet_ml', 'swanlab', 'trackio', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "GYM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_trainer_logs_become_gym_names():
    from gym.plugins import tracking

    logs = {"loss": 1.5, "grad_norm": 0.3, "learning_rate": 1e-4, "epoch": 0.5, "rewards/chosen": 0.2,
            "eval_loss": 2.0, "eval_rewards/chosen": 0.1, "train_runtime": 9.0, "train_loss": 1.4, "note": "text"}
    assert tracking.step_metrics(logs) == {
        "train/loss": 1.5, "train/grad_norm": 0.3, "train/learning_rate": 1e-4, "train/epoch": 0.5,
        "train/rewards/chosen": 0.2, "eval/loss": 2.0, "eval/rewards/chosen": 0.1}
    assert tracking.final_metrics({"train_loss": 1.4, "addition_exact_match": 0.5, "stopped": True, "why": "x"}) == {
        "final/train_loss": 1.4, "final/addition_exact_match": 0.5}


def test_flat_params_flatten_lists_of_mappings_and_redact():
    from gym.plugins import tracking

    cfg = testing.validate({**BASE, "tracker_test_token": SECRET, "lora_target_modules": ["q_proj", "v_proj"]},
                           SecretPlugin())
    params = tracking.flat_params(cfg)
    assert params["datasets.0.path"] == "d.jsonl" and params["datasets.0.type"] == "alpaca"
    assert params["lora_target_modules"] == '["q_proj", "v_proj"]'
    assert params["tracker_test_token"] == "**********" and SECRET not in json.dumps(params)


@pytest.mark.slow
def test_models_and_checkpoints_are_uploaded_when_asked(run):
    checkpoint = f"checkpoint-{STEPS}"
    assert (run["out"] / checkpoint / "model.safetensors").is_file()
    uploads = {alias: (kind, files) for kind, aliases, files in run["wandb"]["artifacts"] for alias in aliases
               if alias != "latest"}
    assert uploads[f"step-{STEPS}"][0] == "model" and "model.safetensors" in uploads[f"step-{STEPS}"][1]
    final = uploads["final"][1]
    assert "model.safetensors" in final and "gym_results.json" in final
    assert not any(name.startswith(("checkpoint-", "wandb", "tensorboard")) for name in final)
    mlflow = run["mlflow"]["artifacts"]
    assert f"{checkpoint}/model.safetensors" in mlflow[checkpoint] and "model/model.safetensors" in mlflow["model"]


@pytest.mark.slow
def test_wandb_watch_logs_histograms(run):
    assert run["wandb"]["watched"] == {"gradients", "parameters"}  # wandb_watch: all
