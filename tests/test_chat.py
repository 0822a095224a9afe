"""``gym chat`` and the model loading behind chat / generate / serve, on tiny models trained once per session.

The runs memorise two answers ("What is the password?" -> "swordfish", "Who are you?" -> "a tiny gym model"), so
a greedy answer shows that the right model, adapter and chat template were loaded. The terminal chat is driven
through tmux as a person would use it; ``--prompt`` and piped stdin run as real subprocesses.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

GYM = [str(Path(sys.executable).with_name("gym"))]
PASSWORD, IDENTITY = "What is the password?", "Who are you?"
ROWS = [
    {"messages": [{"role": "user", "content": PASSWORD}, {"role": "assistant", "content": "swordfish"}]},
    {"messages": [{"role": "user", "content": IDENTITY}, {"role": "assistant", "content": "a tiny gym model"}]},
]
CONFIG = """\
base_model: {model}
datasets:
  - path: {data}
    type: chat_template
chat_template: tokenizer_default
sequence_len: 64
micro_batch_size: 8
max_steps: 30
learning_rate: 1.0e-2
lr_scheduler: constant
save_strategy: "no"
logging_steps: 10
output_dir: {output}
"""
ADAPTER = "adapter: lora\nlora_target_linear: true\nlora_r: 16\nlora_alpha: 32\n"


@functools.lru_cache(maxsize=None)
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="gym-test-inference-"))
    atexit.register(shutil.rmtree, root, True)
    from gym.testing import tiny_model

    data = root / "memorise.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS * 8))
    tiny_model(root / "tiny")
    return root


def write_config(kind: str, output: Path | None = None, extra: str = "") -> Path:
    """A config for ``kind`` (``full`` or ``lora``) whose output_dir is ``output`` (default: the trained one)."""
    root = _root()
    text = CONFIG.format(model=root / "tiny", data=root / "memorise.jsonl", output=output or root / f"out-{kind}")
    path = root / f"{kind}-{abs(hash((str(output), extra)))}.yml"
    path.write_text(text + (ADAPTER if kind == "lora" else "") + extra)
    return path


@functools.lru_cache(maxsize=None)
def trained(kind: str) -> Path:
    """The config of a finished run of ``kind`` (trained once per test session)."""
    from gym.api import load_config, run

    path = write_config(kind)
    run(load_config(str(path)))
    return path


@functools.lru_cache(maxsize=None)
def without_template() -> Path:
    """A copy of the full run's model whose tokenizer has no chat template."""
    source = Path(json_output(trained("full")))
    target = _root() / "no-template"
    shutil.copytree(source, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((target / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (target / "tokenizer_config.json").write_text(json.dumps(settings))
    return target


def json_output(config: Path) -> str:
    import yaml

    return yaml.safe_load(config.read_text())["output_dir"]


def gym(*args: str, stdin: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*GYM, *args], input=stdin if stdin is not None else "", capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def invoke(*args: str, stdin: str = ""):
    from gym.cli import main

    return CliRunner().invoke(main, list(args), input=stdin)


# ---------------------------------------------------------------------------------------------- loading


def test_a_config_that_has_not_trained_yet_gets_an_error_not_a_traceback(tmp_path):
    config = write_config("full", output=tmp_path / "never-trained")
    result = invoke("chat", str(config), "--prompt", "hi")
    assert result.exit_code == 2
    assert f"run `gym run {config}` first" in result.output
    assert "Traceback" not in result.output

    for step in (3, 12, 20):  # checkpoint-20 holds no model (a save that was cut short): not offered
        (tmp_path / "never-trained" / f"checkpoint-{step}").mkdir(parents=True)
        if step != 20:
            (tmp_path / "never-trained" / f"checkpoint-{step}" / "adapter_config.json").write_text("{}")
    result = invoke("chat", str(config), "--prompt", "hi")
    assert "holds no trained model" in result.output
    assert f"--model-dir {tmp_path / 'never-trained' / 'checkpoint-12'}" in result.output

    result = invoke("chat", str(config), "--model-dir", str(tmp_path / "elsewhere"), "--prompt", "hi")
    assert result.exit_code == 2 and "--model-dir" in result.output and "does not exist" in result.output


def test_bad_generation_options_are_refused_by_name():
    config = write_config("full", output=_root() / "unused")
    for option, value in (("--top-p", "1.5"), ("--temperature", "-1"), ("--max-new-tokens", "0")):
        result = invoke("chat", str(config), option, value, "--prompt", "hi")
        assert result.exit_code == 2 and option in result.output, result.output


@pytest.mark.slow
def test_full_model_and_adapter_load_and_answer_what_they_learned():
    from gym.api import load_config
    from gym.plugins.inference import Settings, load_trained

    greedy = Settings(max_new_tokens=12, greedy=True)
    notes: list[str] = []
    full = load_trained(load_config(str(trained("full"))), tell=notes.append)
    assert full.kind == "model" and full.merged is None and full.has_chat_template
    assert "full model; chat template" in notes[-1]
    prompts = [full.encode_prompt(PASSWORD), full.encode_prompt(IDENTITY)]
    assert [a.text for a in full.generate(prompts, greedy)] == ["swordfish", "a tiny gym model"]

    cfg = load_config(str(trained("lora")))
    answers = {}
    for merge in (True, False):
        adapter = load_trained(cfg, merge=merge, tell=notes.append)
        assert adapter.kind == "adapter" and adapter.merged is merge
        assert ("merged" if merge else "unmerged") in notes[-1]
        assert type(adapter.model).__name__.startswith("Peft") is (not merge)
        answers[merge] = [a.text for a in adapter.generate(prompts, greedy)]
    assert answers[True] == answers[False] == ["swordfish", "a tiny gym model"]

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(_root() / "tiny"))
    import torch

    with torch.no_grad():
        out = base.generate(torch.tensor([prompts[0]]), max_new_tokens=4, do_sample=False)
    assert full.tokenizer.decode(out[0, len(prompts[0]):]) != "swordfish", "the base model knew it: proves nothing"


@pytest.mark.slow
def test_a_qlora_run_says_what_it_loads_on_this_machine():
    """The LoRA adapter is the same files as a QLoRA one: loading it as a 4-bit run shows the QLoRA path."""
    import torch

    from gym.api import load_config
    from gym.plugins.inference import Settings, load_trained

    cfg = load_config(str(trained("lora")), ["adapter=qlora", "load_in_4bit=true"])
    notes: list[str] = []
    adapter = load_trained(cfg, tell=notes.append)
    if torch.cuda.is_available():
        assert "base 4-bit" in notes[-1] and adapter.merged is False
    else:
        assert notes[0].startswith("no GPU: the 4-bit base of this run is loaded in full precision on the CPU")
        assert adapter.merged is True and "float32" in notes[-1]
    answer = adapter.generate([adapter.encode_prompt(PASSWORD)], Settings(max_new_tokens=8, greedy=True))
    assert answer[0].text == "swordfish"


# ------------------------------------------------------------------------------------------------- chat


@pytest.mark.slow
def test_chat_prompt_answers_once_on_stdout_with_notes_on_stderr():
    result = gym("chat", str(trained("full")), "--greedy", "--prompt", PASSWORD)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "swordfish\n"
    assert "[gym] loaded" in result.stderr and "chat template" in result.stderr


@pytest.mark.slow
def test_prompts_piped_on_stdin_are_answered_one_a_line_by_the_unmerged_adapter():
    result = gym("chat", str(trained("lora")), "--greedy", "--no-merge", stdin=f"{PASSWORD}\n\n{IDENTITY}\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["swordfish", "a tiny gym model"]
    assert "unmerged" in result.stderr


@pytest.mark.slow
def test_seeded_sampling_repeats_and_answers_are_cut_at_max_new_tokens():
    config = str(trained("full"))
    sampled = [invoke("chat", config, "--seed", "7", "--temperature", "1.5", "--prompt", "Tell me", "--max-new-tokens",
                      "6") for _ in range(2)]
    assert sampled[0].exit_code == 0, sampled[0].output
    assert sampled[0].stdout.strip() and sampled[0].stdout == sampled[1].stdout
    cut = invoke("chat", config, "--greedy", "--prompt", PASSWORD, "--max-new-tokens", "1")
    assert cut.exit_code == 0, cut.output
    assert "swordfish".startswith(cut.stdout.strip()) and cut.stdout.strip() != "swordfish"
    assert "cut at --max-new-tokens 1" in cut.stderr


@pytest.mark.slow
def test_a_model_without_chat_template_gets_plain_completion():
    from gym.api import load_config
    from gym.plugins.inference import Settings, load_trained

    folder = without_template()
    config = str(trained("full"))
    result = invoke("chat", config, "--model-dir", str(folder), "--greedy", "--max-new-tokens", "16",
                    "--prompt", "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n")
    assert result.exit_code == 0, result.output
    assert "no chat template: plain completion" in result.stderr
    # the prompt typed is completed as it is: here the chat markers by hand, so the model answers as it learned
    assert result.stdout == "a tiny gym model\n"
    model = load_trained(load_config(config), model_dir=str(folder), tell=lambda _: None)
    plain = model.generate([model.encode_text("Who are you?")], Settings(max_new_tokens=16, greedy=True))[0].text
    assert invoke("chat", config, "--model-dir", str(folder), "--greedy", "--max-new-tokens", "16",
                  "--prompt", "Who are you?").stdout == plain + "\n"


# ----------------------------------------------------------------------------------- terminal (tmux)


class Tmux:
    """A terminal running one command: type into it, read its screen."""

    def __init__(self, command: list[str], cwd: Path):
        assert shutil.which("tmux"), "this test drives a terminal through tmux: apt-get install tmux"
        self.socket = f"gym-test-{os.getpid()}-{time.monotonic_ns()}"
        self.run("new-session", "-d", "-s", "chat", "-x", "120", "-y", "40", "-c", str(cwd),
                 " ".join(_quote(part) for part in command) + "; echo CHAT-ENDED-$?; sleep 60")

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True).stdout

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "chat", "-l", text)
        self.run("send-keys", "-t", "chat", "Enter")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "chat", "-S", "-200")

    def wait_for(self, text: str, count: int = 1, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{text!r} (x{count}) never appeared; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


@pytest.mark.slow
def test_interactive_chat_in_a_terminal_streams_answers_and_takes_commands():
    config = trained("full")
    terminal = Tmux([*GYM, "chat", str(config), "--greedy", "--max-new-tokens", "12"], cwd=_root())
    try:
        terminal.wait_for("you>")
        screen = terminal.screen()
        assert "[gym] loaded" in screen and "/system TEXT" in screen and "/exit" in screen
        terminal.type(PASSWORD)
        screen = terminal.wait_for("you>", count=2)
        assert f"you> {PASSWORD}\nmodel> swordfish\n" in screen
        terminal.type(IDENTITY)  # a second turn, rendered after the first one
        screen = terminal.wait_for("you>", count=3)
        assert f"you> {IDENTITY}\nmodel> " in screen
        terminal.type("/system You are terse.")
        screen = terminal.wait_for("conversation reset")
        assert "system prompt set: You are terse." in screen
        terminal.type("/reset")
        terminal.wait_for("conversation reset (the system prompt is kept)")
        terminal.type("/bogus")
        terminal.wait_for("unknown command /bogus")
        terminal.type("/system")
        terminal.wait_for("system prompt removed")
        terminal.type(PASSWORD)
        screen = terminal.wait_for("model> swordfish", count=2)
        terminal.type("/exit")
        screen = terminal.wait_for("CHAT-ENDED-")
        assert "CHAT-ENDED-0" in screen and "Traceback" not in screen
    finally:
        terminal.close()


@pytest.mark.slow
def test_empty_stdin_says_how_to_give_prompts():
    result = invoke("chat", str(trained("full")), stdin="")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "held no prompts" in result.stderr and "--prompt TEXT" in result.stderr


@pytest.mark.slow
def test_answers_stop_where_the_context_is_full():
    from gym.api import GymError, load_config
    from gym.plugins.inference import Settings, load_trained

    model = load_trained(load_config(str(trained("full"))), tell=lambda _: None)
    prompt = model.encode_prompt(PASSWORD)
    model.model.config.max_position_embeddings = len(prompt) + 2
    stream = model.stream(prompt, Settings(max_new_tokens=50, greedy=True))
    text = "".join(stream)
    assert stream.result.completion_tokens == 2 and stream.result.finish_reason == "length"
    assert "swordfish".startswith(text) and text != "swordfish"
    model.model.config.max_position_embeddings = len(prompt)
    with pytest.raises(GymError, match="no room left in the model's context"):
        model.stream(prompt, Settings())
    with pytest.raises(GymError, match="leaves no room"):
        model.generate([prompt], Settings())


@pytest.mark.slow
def test_a_model_that_does_not_generate_text_is_refused():
    result = invoke("chat", str(trained("full")), "model_type=AutoModelForSequenceClassification", "--prompt", "hi")
    assert result.exit_code == 2, result.output
    assert "LlamaForSequenceClassification" in result.output and "does not generate text" in result.output
