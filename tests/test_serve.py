"""``gym serve``: the real ``openai`` client against the server, on the tiny models of test_chat (trained once)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_chat import GYM, IDENTITY, PASSWORD, trained

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    """A server for the full run's model on a free local port, in a thread; yields its base URL."""
    from gym.api import load_config
    from gym.plugins.inference import load_trained
    from gym.plugins.serve import make_server

    model = load_trained(load_config(str(trained("full"))), tell=lambda _: None)
    httpd = make_server(model, "127.0.0.1", 0, model_id="memoriser", max_tokens=16, access_log=False)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=120)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["memoriser"]
    assert client.models.retrieve("memoriser").owned_by == "gym"


def test_chat_completion_answers_with_usage(client):
    reply = client.chat.completions.create(model="memoriser", messages=ask(PASSWORD), temperature=0)
    assert reply.choices[0].message.content == "swordfish"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 5 and reply.usage.completion_tokens >= 2
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.id.startswith("chatcmpl-") and reply.model == "memoriser"


def test_chat_completion_streams_server_sent_events(client):
    chunks = list(client.chat.completions.create(model="memoriser", messages=ask(IDENTITY), temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "a tiny gym model"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2, "sent as one piece"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 2


def test_stop_strings_and_max_tokens_end_the_answer(client):
    stopped = client.chat.completions.create(model="m", messages=ask(PASSWORD), temperature=0, stop=["fish"])
    assert stopped.choices[0].message.content == "sword"
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="m", messages=ask(IDENTITY), temperature=0, stop="gym", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == "a tiny "
    short = client.chat.completions.create(model="m", messages=ask(IDENTITY), temperature=0, max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    assert "a tiny gym model".startswith(short.choices[0].message.content)


def test_completions_complete_the_raw_prompt(client):
    prompt = f"<|im_start|>user\n{PASSWORD}<|im_end|>\n<|im_start|>assistant\n"
    reply = client.completions.create(model="m", prompt=prompt, temperature=0, max_tokens=8)
    assert reply.choices[0].text == "swordfish" and reply.object == "text_completion"
    streamed = client.completions.create(model="m", prompt=prompt, temperature=0, max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "swordfish"


def test_seeded_sampling_repeats(client):
    replies = [client.chat.completions.create(model="m", messages=ask("Hello"), temperature=1.5, seed=3, max_tokens=8)
               .choices[0].message.content for _ in range(2)]
    assert replies[0] == replies[1]


def test_bad_requests_get_openai_errors_with_a_4xx(client, server):
    import openai

    cases = [
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
        (dict(messages=ask("hi"), temperature=5), "temperature"),
        (dict(messages=ask("hi"), n=2), "n"),
        (dict(messages=ask("hi"), max_tokens=0), "max_tokens"),
        (dict(messages=ask("hi"), extra_body={"best_of": 3}), "best_of"),
        (dict(messages=ask("hi"), stop=["a", "b", "c", "d", "e"]), "stop"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="m", **kwargs)
        assert caught.value.status_code == 400
        error = caught.value.body
        assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"], error
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=ask("hi " * 3000))
    assert caught.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("another-model")

    def raw(path: str, data: bytes | None, method: str = "POST") -> tuple[int, dict]:
        request = urllib.request.Request(server + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode()
            assert "Traceback" not in text
            return error.code, json.loads(text)

    for path, data, method, status in [("/chat/completions", b"{not json", "POST", 400),
                                       ("/chat/completions", b"[1, 2]", "POST", 400),
                                       ("/embeddings", b"{}", "POST", 404),
                                       ("/chat/completions", b"{}", "DELETE", 405)]:
        code, body = raw(path, data, method)
        assert code == status, (path, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
    # after all that, the server still answers
    assert client.chat.completions.create(model="m", messages=ask(PASSWORD), temperature=0).choices[0].message.content \
        == "swordfish"


def test_eight_concurrent_requests_are_queued_and_all_answered(client):
    def one(i: int) -> str:
        question = PASSWORD if i % 2 else IDENTITY
        if i % 3 == 0:
            stream = client.chat.completions.create(model="m", messages=ask(question), temperature=0, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream)
        return client.chat.completions.create(model="m", messages=ask(question), temperature=0).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    assert answers == ["swordfish" if i % 2 else "a tiny gym model" for i in range(8)]


def test_a_client_that_leaves_mid_stream_frees_the_model(client, server):
    import httpx

    body = {"model": "m", "messages": ask("Hello"), "temperature": 1.0, "max_tokens": 16, "stream": True}
    with httpx.stream("POST", server + "/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                break  # leave after the first piece
    started = time.perf_counter()
    reply = client.chat.completions.create(model="m", messages=ask(PASSWORD), temperature=0)
    assert reply.choices[0].message.content == "swordfish"
    assert time.perf_counter() - started < 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gym_serve_command_serves_the_adapter_run():
    from openai import OpenAI

    port = _free_port()
    process = subprocess.Popen([*GYM, "serve", str(trained("lora")), "--port", str(port), "--no-merge"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "serving" in line:
                break
        assert any(f"at http://127.0.0.1:{port}/v1" in line for line in lines), "".join(lines)
        assert any("unmerged" in line for line in lines), "".join(lines)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["out-lora"]
        reply = client.chat.completions.create(model="out-lora", messages=ask(PASSWORD), temperature=0)
        assert reply.choices[0].message.content == "swordfish"
    finally:
        process.terminate()
        process.wait(timeout=30)
