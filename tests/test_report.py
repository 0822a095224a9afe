"""The run report: written by a real run, rebuilt by ``gym report`` (a killed run too), comparing runs, and read
in a real browser (headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gym import testing

pytestmark = pytest.mark.slow  # the module trains two tiny runs (shared by its tests)

HEAVY = ("torch", "transformers", "datasets", "peft", "trl", "accelerate")
PROBE = (
    "import sys\nfrom gym.cli import main\n"
    "try:\n    main(sys.argv[1:], prog_name='gym')\nexcept SystemExit as exc:\n    code = exc.code\n"
    f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    "sys.exit(code)\n"
)
RUN = {
    "datasets": [{"path": "builtin:addition?rows=120", "type": "alpaca"}],
    "val_set_size": 0.1, "eval_steps": 2, "save_strategy": "steps", "save_steps": 3,
    "eval_task": "addition", "eval_task_samples": 4,
}
STEPS = 6


def gym(*args):
    """``gym ARGS`` in a fresh interpreter: (exit code, stdout, stderr, heavy modules it imported)."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True)
    heavy = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    return proc.returncode, proc.stdout, proc.stderr, heavy[-1].removeprefix("HEAVY=") if heavy else "?"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    result = testing.run_config(RUN, steps=STEPS, tmp_path=tmp_path_factory.mktemp("run-a"))
    return Path(result.output_dir)


@pytest.fixture(scope="module")
def other_run_dir(tmp_path_factory) -> Path:
    config = {**RUN, "learning_rate": 3e-3, "eval_task": None, "save_strategy": "no", "save_steps": None}
    config = {k: v for k, v in config.items() if v is not None}
    result = testing.run_config(config, steps=4, tmp_path=tmp_path_factory.mktemp("run-b"))
    return Path(result.output_dir)


def paths(page: str) -> dict[tuple[str, str], int]:
    """``(series kind, run) -> points`` of every drawn series, counted from the path's own M/L commands."""
    found = {}
    for match in re.finditer(r'<path class="series" data-series="([^"]*)" data-run="([^"]*)" data-points="\d+" '
                             r'd="([^"]*)"', page):
        found[(match.group(1), match.group(2))] = len(re.findall(r"[ML]-?[\d.]+,-?[\d.]+", match.group(3)))
    return found


def test_a_run_writes_its_report_with_every_section(run_dir):
    page = (run_dir / "report.html").read_text()
    state = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    results = json.loads((run_dir / "gym_results.json").read_text())
    for heading in ("Training", "Final metrics", "Task evaluations", "Data", "Config", "Versions and hardware"):
        assert f">{heading}</h2>" in page, heading
    # one path per series, with a point per logged value
    drawn = paths(page)
    name = run_dir.name
    assert drawn[("loss", name)] == sum("loss" in e for e in state) == STEPS
    assert drawn[("eval_loss", name)] == sum("eval_loss" in e for e in state) == STEPS // 2
    assert drawn[("learning_rate", name)] == STEPS
    assert drawn[("grad_norm", name)] == STEPS
    assert drawn[("throughput", name)] == STEPS
    # the report's callback put the throughput into the logged history: the same tokens as the run's summary
    training = [e for e in state if "loss" in e]
    assert all(e["tokens_per_second"] > 0 for e in training)
    assert training[-1]["trained_tokens"] == results["metrics"]["tokens_trained"] > 0
    # axes carry tick labels and their names
    assert page.count('class="axis-label"') >= 8 and page.count("<text") > 40
    # task evaluations before and after, data figures, versions
    assert "addition exact match" in page and "→" in page
    assert f">{results['data_figures']['data/train/tokens']:,}<" in page
    assert f">{results['versions']['transformers']}<" in page
    # self-contained: no network resource of any kind
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "@import" not in page
    assert "did not finish" not in page and "Stopped early" not in page


def test_changed_keys_come_first_and_defaults_follow(run_dir):
    page = (run_dir / "report.html").read_text()
    changed, _, rest = page.partition("The other")
    assert "Changed from the defaults" in changed
    for key in ("eval_steps", "val_set_size", "eval_task", "base_model"):
        assert f">{key}<" in changed, key
    assert ">num_epochs<" in rest and ">num_epochs<" not in changed  # left at its default
    assert ">128<" in changed and ">2,048<" in changed  # sequence_len: its value, and the default beside it


def test_gym_report_rebuilds_without_torch(run_dir, tmp_path):
    target = tmp_path / "again.html"
    code, out, err, heavy = gym("report", run_dir, "--output", target)
    assert code == 0, err
    assert heavy == ""
    assert target.is_file() and str(target) in out
    assert paths(target.read_text()) == paths((run_dir / "report.html").read_text())


def test_a_killed_run_is_rebuilt_from_its_newest_checkpoint(run_dir, tmp_path):
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / ".gym-run").write_text("")
    for step in (3, 6):  # only checkpoints: killed before the end; the newest one is read
        shutil.copytree(run_dir / f"checkpoint-{step}", killed / f"checkpoint-{step}")
    (killed / "checkpoint-6" / "trainer_state.json").write_text('{"log_history": [{"loss"')  # cut short
    code, out, err, _ = gym("report", killed)
    assert code == 0, err
    assert "did not finish" in out and "checkpoint-3" in out
    page = (killed / "report.html").read_text()
    assert "The run did not finish." in page and "checkpoint-3/trainer_state.json" in page
    assert "step 3 of 6 planned" in page
    assert paths(page)[("loss", "killed")] == 3
    assert ">learning_rate<" in page  # the config recorded in the checkpoint (gym_run.json)


def test_several_runs_on_the_same_axes_with_their_config_differences(run_dir, other_run_dir, tmp_path):
    target = tmp_path / "compare.html"
    code, out, err, heavy = gym("report", run_dir, other_run_dir, "-o", target)
    assert code == 0, err
    assert heavy == "" and str(target) in out
    page = target.read_text()
    drawn = paths(page)
    a, b = "run-a0/output", "run-b0/output"
    assert a in page and b in page  # both folders are called "output": named by their parents
    assert drawn[("loss", a)] == STEPS and drawn[("loss", b)] == 4
    colors = re.findall(r'data-series="loss" data-run="[^"]*" data-points="\d+" d="[^"]*" stroke="(#\w+)"', page)
    assert len(set(colors)) == 2  # one colour per run
    differences = page.split("Differences between the runs")[1].split("</table>")[0]
    for key in ("learning_rate", "max_steps", "eval_task", "output_dir"):
        assert f">{key}<" in differences, key
    assert ">val_set_size<" not in differences  # the same in both


def test_a_folder_that_is_not_a_run_is_named_in_the_error(run_dir, tmp_path):
    stray = tmp_path / "photos"
    stray.mkdir()
    (stray / "cat.jpg").write_text("")
    code, _, err, heavy = gym("report", run_dir, stray)
    assert code != 0 and heavy == ""
    assert f"{stray} is not a gym run" in err and "Traceback" not in err
    code, _, err, _ = gym("report", tmp_path / "missing")
    assert code != 0 and "missing is not a folder" in err


def test_secret_keys_are_never_shown(run_dir, tmp_path):
    from gym.api import StrictConfig, hookimpl
    from gym.plugin_manager import using_plugin_manager
    from gym.plugins import report
    from pydantic import SecretStr

    class Secret(StrictConfig):
        tracker_api_key: SecretStr | None = None

    class Plugin:
        @hookimpl
        def gym_config_schema(self):
            return Secret

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoint-*", "*.safetensors"))
    with open(copy / "gym_config.yml", "a") as handle:
        handle.write("tracker_api_key: hunter2-plain\n")  # as an older gym might have written it
    with using_plugin_manager(testing.plugin_manager(("secret", Plugin()))):
        report.write_report([copy], copy / "report.html")
    page = (copy / "report.html").read_text()
    assert "hunter2" not in page and "**********" in page


def test_the_report_renders_in_headless_chromium(run_dir, tmp_path):
    import numpy as np
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the report test needs Chromium (Debian package: chromium)"
    url = (run_dir / "report.html").resolve().as_uri()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    dom = subprocess.run([*flags, "--virtual-time-budget=3000", "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-charts-ready="4"' in dom  # the page's script ran and found the four charts
    assert dom.count('class="series"') >= 5
    # hovering a chart shows the values logged at the nearest step
    probe = tmp_path / "hover.html"
    probe.write_text((run_dir / "report.html").read_text().replace("</body>", (
        '<script>var r=document.querySelector("#chart-0 rect.hover"),b=r.getBoundingClientRect();'
        'r.dispatchEvent(new MouseEvent("mousemove",{clientX:b.left+b.width/2,clientY:b.top+9,bubbles:true}));'
        "</script></body>")))
    dom = subprocess.run([*flags, "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    tip = re.search(r'<div class="tip"[^>]*>(.*?)</div></div>', dom)
    assert tip and "hidden" not in tip.group(0).split(">")[0], dom[-2000:]
    assert re.search(r"step <b>\d+</b>.*train loss: <b>[\d.]+</b>", tip.group(1))
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,1400", url], capture_output=True,
                   timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1400)
    pixels = np.asarray(image).astype(int)

    def count(color: str, tolerance: int = 12) -> int:
        rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb) <= tolerance).all(axis=-1).sum())

    # each series' line is drawn (a legend swatch alone is ~60 pixels)
    for color in ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9"):
        assert count(color) > 250, color
