"""``gym chat`` and ``gym generate``: talk to a run's trained model, or answer a file of prompts with it.

Both load the model the config trained (``output_dir``, or ``--model-dir``) through :mod:`gym.plugins.inference`:
a full model or an adapter on its base, with the tokenizer and chat template saved by the run.

- ``gym chat CONFIG``: an interactive chat on a terminal, streaming the answer as it is generated (``/system TEXT``,
  ``/reset``, ``/exit``); ``--prompt TEXT`` answers once; prompts piped on stdin are answered one a line.
- ``gym generate CONFIG --input prompts.jsonl --output answers.jsonl``: batched, resumable generation; each output
  row is the input row with ``answer`` added.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from gym.api import DataError, GymError, hookimpl

ANSWER_FIELD = "answer"
HELP = "/system TEXT sets the system prompt, /reset forgets the conversation, /exit (or Ctrl-D) quits"


def _stderr(message: str) -> None:
    """gym's notes on stderr: stdout carries only the answers (so that they can be piped)."""
    for line in message.splitlines() or [""]:
        print(f"[gym] {line}", file=sys.stderr, flush=True)


def generation_options(function: Callable) -> Callable:
    """The options every generating command shares."""
    import click

    options = [
        click.option("--model-dir", default=None, help="The trained model's folder (default: the config's output_dir)."),
        click.option("--merge/--no-merge", default=None,
                     help="Fold an adapter into its base before generating (default: yes, unless the base is 4/8-bit)."),
        click.option("--max-new-tokens", type=int, default=256, show_default=True, help="Most tokens in an answer."),
        click.option("--temperature", type=float, default=0.7, show_default=True, help="Sampling temperature (0: greedy)."),
        click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling: keep this much probability."),
        click.option("--greedy", is_flag=True, help="Always take the likeliest token (no sampling; reproducible)."),
        click.option("--seed", type=int, default=None, help="Seed the sampling, for answers that can be reproduced."),
        click.option("--system", default=None, help="A system prompt for chat-template models."),
        click.option("--raw", is_flag=True, help="Complete prompts as plain text even when the model has a chat template."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _settings(max_new_tokens: int, temperature: float, top_p: float, greedy: bool):
    from gym.plugins.inference import Settings

    settings = Settings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy)
    settings.check(lambda key: "--" + key.replace("_", "-"))
    return settings


def _load(config: str, overrides: tuple[str, ...], model_dir: str | None, merge: bool | None, seed: int | None,
          tell: Callable[[str], None]):
    from gym.api import load_config
    from gym.plugins.inference import load_trained

    cfg = load_config(config, overrides)
    trained = load_trained(cfg, model_dir=model_dir, merge=merge, config_path=config, tell=tell)
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    return trained


# ----------------------------------------------------------------------------------------------- chat


class Conversation:
    """The turns so far and the system prompt; renders the next prompt (plain completion without a template)."""

    def __init__(self, trained: Any, system: str | None, raw: bool):
        self.trained, self.system, self.raw = trained, system, raw
        self.turns: list[dict[str, str]] = []

    @property
    def chat(self) -> bool:
        return self.trained.has_chat_template and not self.raw

    def prompt_ids(self, text: str) -> list[int]:
        if not self.chat:
            return self.trained.encode_text(text)
        system = [{"role": "system", "content": self.system}] if self.system else []
        return self.trained.encode_messages(system + self.turns + [{"role": "user", "content": text}])

    def add(self, question: str, answer: str) -> None:
        if self.chat:
            self.turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def answer(trained: Any, conversation: Conversation, text: str, settings: Any, out: Any = None) -> str:
    """Stream the answer to ``text`` onto ``out`` (stdout) as it is generated; returns it."""
    out = out or sys.stdout
    stream = trained.stream(conversation.prompt_ids(text), settings)
    pieces = []
    try:
        for piece in stream:
            pieces.append(piece)
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        stream.cancel()
        out.write("\n")
        _stderr("interrupted; that answer is not kept")
        return ""
    out.write("\n")
    out.flush()
    reply = "".join(pieces)
    conversation.add(text, reply)
    if stream.result is not None and stream.result.finish_reason == "length":
        _stderr(f"(cut at --max-new-tokens {settings.max_new_tokens})")
    return reply


def interactive(trained: Any, conversation: Conversation, settings: Any) -> None:
    """The terminal chat: read a line, answer it, until /exit or Ctrl-D."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # pragma: no cover - not on every platform
        pass
    mode = "messages use the chat template" if conversation.chat else "no chat template: each line is completed as plain text"
    _stderr(f"{mode}; {HELP}")
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                conversation.turns.clear()
                _stderr("conversation reset" + (" (the system prompt is kept)" if conversation.system else ""))
                continue
            if command == "/system":
                conversation.system = rest.strip() or None
                conversation.turns.clear()
                if not conversation.chat:
                    _stderr("this model has no chat template: a system prompt changes nothing")
                else:
                    _stderr(f"system prompt set: {conversation.system}" if conversation.system
                            else "system prompt removed")
                    _stderr("conversation reset")
                continue
            _stderr(f"unknown command {command}; {HELP} (start a message with a space to send a slash)")
            continue
        sys.stdout.write("model> ")
        try:
            answer(trained, conversation, line.strip(), settings)
        except GymError as exc:  # the conversation outgrew the model's context
            print()
            _stderr(f"{exc}; /reset starts over")


def run_chat(config, overrides, prompt, model_dir, merge, max_new_tokens, temperature, top_p, greedy, seed, system, raw):
    settings = _settings(max_new_tokens, temperature, top_p, greedy)
    trained = _load(config, overrides, model_dir, merge, seed, _stderr)
    conversation = Conversation(trained, system, raw)
    if system and not conversation.chat:
        _stderr("this model has no chat template: --system changes nothing")
    if prompt is not None:
        answer(trained, conversation, prompt, settings)
    elif not sys.stdin.isatty():
        answered = 0
        for line in sys.stdin:  # each line is a prompt of its own
            if line.strip():
                answer(trained, Conversation(trained, system, raw), line.rstrip("\r\n"), settings)
                answered += 1
        if not answered:
            _stderr("stdin is not a terminal and held no prompts: pipe prompts one a line, or use --prompt TEXT")
    else:
        interactive(trained, conversation, settings)


# ------------------------------------------------------------------------------------------- generate


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL prompts file; a line that is not a JSON object with ``prompt`` or ``messages`` is a
    DataError naming the file and line."""
    if not path.is_file():
        raise DataError(f"--input: no such file: {path}")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: a row must be a JSON object with `prompt` or `messages`")
            problem = _row_problem(row)
            if problem:
                raise DataError(f"{path}:{number}: {problem}")
            rows.append(row)
    return rows


def _row_problem(row: dict[str, Any]) -> str | None:
    if ("prompt" in row) == ("messages" in row):
        return "a row needs exactly one of `prompt` (a string) and `messages` (a list of {role, content})"
    if "prompt" in row and not isinstance(row["prompt"], str):
        return f"`prompt` must be a string, not {type(row['prompt']).__name__}"
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            return "`messages` must be a non-empty list of {\"role\": ..., \"content\": ...} with string values"
    if ANSWER_FIELD in row:
        return f"the row already has an `{ANSWER_FIELD}` field, which the output would replace"
    return None


def answered_rows(path: Path, rows: list[dict[str, Any]]) -> int:
    """How many rows of ``rows`` the output file answers already (in order); a half-written last line, left by
    a run that was stopped, is cut off. Rows that do not match the input are an error."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, kept_bytes = 0, 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            kept_bytes += len(line) + 1
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) or all(not rest.strip() for rest in lines[number:]):
                break  # the last line, half written: generate it again
            raise DataError(f"--output {path}:{number}: not valid JSON; it is not an output of `gym generate` "
                            "(choose another --output or remove the file)") from None
        if complete >= len(rows):
            raise DataError(f"--output {path} holds more rows than --input has; it answers another input file")
        expected = rows[complete]
        if not isinstance(row, dict) or ANSWER_FIELD not in row or any(row.get(k) != v for k, v in expected.items()):
            raise DataError(f"--output {path}:{number} does not answer input row {complete + 1}; it belongs to another "
                            "input (choose another --output, or remove the file to start over)")
        complete += 1
        kept_bytes += len(line) + 1
    if kept_bytes < len(data):
        with path.open("r+b") as handle:
            handle.truncate(min(kept_bytes, len(data)))
        if data[:kept_bytes] and not data[:kept_bytes].endswith(b"\n"):
            with path.open("ab") as handle:
                handle.write(b"\n")
    return complete


class Progress:
    """A progress bar on a terminal; plain lines (about every 10%, at most every 5 s) otherwise."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.start, self.last = total, done, time.perf_counter(), 0.0
        self.first = done
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="row", desc="generating", file=sys.stderr)

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.perf_counter()
        elapsed = now - self.start
        step = max(self.total // 10, 1)
        if self.done < self.total and now - self.last < 5 and (self.done - self.first) % step >= count:
            return
        self.last = now
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        _stderr(f"generated {self.done}/{self.total} rows, {rate:.1f} rows/s, elapsed {elapsed:.0f}s, ETA {eta:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def prompt_ids_of(trained: Any, row: dict[str, Any], system: str | None, raw: bool, where: str) -> list[int]:
    """The prompt of an input row, rendered as ``gym chat`` renders it."""
    if "messages" in row:
        if not trained.has_chat_template or raw:
            raise DataError(f"{where}: `messages` needs a chat template, and "
                            + ("--raw asks for none" if raw else "this model has none; give a `prompt` instead"))
        messages = row["messages"]
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}] + messages
        try:
            return trained.encode_messages(messages)
        except Exception as exc:  # the template refused the turns (roles, order)
            raise DataError(f"{where}: the chat template cannot render these messages: {exc}") from None
    return trained.encode_prompt(row["prompt"], system=system, raw=raw)


def run_generate(config, overrides, input_path, output_path, batch_size, model_dir, merge, max_new_tokens,
                 temperature, top_p, greedy, seed, system, raw):
    from gym.api import say

    if batch_size < 1:
        raise GymError(f"--batch-size: must be at least 1 (got {batch_size})")
    settings = _settings(max_new_tokens, temperature, top_p, greedy)
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.resolve() == input_path.resolve():
        raise GymError("--output: is the --input file; write the answers to another file")
    rows = read_prompts(input_path)
    done = answered_rows(output_path, rows)
    if done:
        say(f"{output_path} answers {done} of {len(rows)} rows already; they are skipped")
    if done == len(rows):
        say(f"nothing left to generate: {output_path} is complete")
        return
    trained = _load(config, overrides, model_dir, merge, seed, say)
    todo = list(range(done, len(rows)))
    prompts = {i: prompt_ids_of(trained, rows[i], system, raw, f"{input_path}: row {i + 1}") for i in todo}
    output_path.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(rows), done)
    started, tokens = time.perf_counter(), 0
    try:
        with output_path.open("a", encoding="utf-8") as out:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                answers = trained.generate([prompts[i] for i in chunk], settings)
                for i, generated in zip(chunk, answers):
                    out.write(json.dumps({**rows[i], ANSWER_FIELD: generated.text}, ensure_ascii=False) + "\n")
                    tokens += generated.completion_tokens
                out.flush()
                progress.update(len(chunk))
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    say(f"wrote {len(todo)} answers to {output_path} ({tokens} tokens in {elapsed:.1f}s, "
        f"{tokens / max(elapsed, 1e-9):.1f} tokens/s)")


# ------------------------------------------------------------------------------------------- commands


@hookimpl
def gym_register_commands(cli):
    import click

    @cli.command(name="chat")
    @click.argument("config", type=click.Path(dir_okay=False))
    @click.argument("overrides", nargs=-1)
    @click.option("--prompt", default=None, help="Answer this one prompt and exit.")
    @generation_options
    def chat(config, overrides, prompt, **options):
        """Chat with the model CONFIG trained, streaming its answers.

        \b
        On a terminal: type a message; /system TEXT, /reset, /exit.
        --prompt TEXT answers once; lines piped on stdin are answered one by one.
        """
        run_chat(config, overrides, prompt, **options)

    @cli.command(name="generate")
    @click.argument("config", type=click.Path(dir_okay=False))
    @click.argument("overrides", nargs=-1)
    @click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
                  help="JSONL prompts: each row has `prompt` (text) or `messages` (a chat); other fields are kept.")
    @click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False),
                  help="JSONL answers: each input row with `answer` added. Rows already there are skipped.")
    @click.option("--batch-size", type=int, default=8, show_default=True, help="Prompts generated together.")
    @generation_options
    def generate(config, overrides, input_path, output_path, batch_size, **options):
        """Answer a JSONL file of prompts with the model CONFIG trained.

        Batched and resumable: rows already in --output are skipped.
        """
        run_generate(config, overrides, input_path, output_path, batch_size, **options)
