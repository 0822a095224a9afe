"""``gym serve CONFIG``: an OpenAI-compatible HTTP server for the model a config trained.

Endpoints: ``POST /v1/chat/completions`` (``stream: true`` sends server-sent events), ``POST /v1/completions``,
``GET /v1/models`` and ``GET /health``. Any OpenAI client can talk to it (``base_url="http://HOST:PORT/v1"``, any
API key). It is the standard library's ``ThreadingHTTPServer``: each request has a thread, and one model lock lets
one request generate at a time, so concurrent requests wait their turn instead of being refused. A request the
server cannot take gets a 4xx and OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gym.api import GymError, hookimpl, say

logger = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
CHAT_KEYS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream",
             "stream_options", "n", "stop", "seed", "user", "presence_penalty", "frequency_penalty", "logprobs"}
COMPLETION_KEYS = (CHAT_KEYS - {"messages", "max_completion_tokens", "logprobs"}) | {"prompt", "echo"}
ROLES = ("system", "user", "assistant")


class RequestError(Exception):
    """A request the server cannot take: sent back as OpenAI's error body with ``status``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------------------- requests


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(f"{key} must be a number from {low:g} to {high:g}, got {value!r}", key)
    return float(value)


def _check_keys(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise RequestError(f"{key} is not supported by this server (only 0)", key)
    if body.get("logprobs") or body.get("echo"):
        key = "logprobs" if body.get("logprobs") else "echo"
        raise RequestError(f"{key} is not supported by this server", key)
    if body.get("n") not in (None, 1):
        raise RequestError("n must be 1: this server answers with one choice", "n")
    if body.get("stream") not in (None, True, False):
        raise RequestError("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")


def sampling(body: dict[str, Any], default_max: int):
    """The generation settings a request asks for (OpenAI's defaults: temperature 1, top_p 1)."""
    from gym.plugins.inference import Settings

    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if limit is None:
        limit = default_max
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise RequestError(f"{key} must be a whole number of at least 1, got {limit!r}", key)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        top_p, temperature = 1.0, 0.0  # nothing but the likeliest token: greedy
    return Settings(max_new_tokens=limit, temperature=temperature, top_p=top_p, greedy=temperature == 0)


def stop_strings(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        return stop
    raise RequestError("stop must be a string or a list of up to 4 strings", "stop")


def chat_prompt(trained: Any, body: dict[str, Any]) -> list[int]:
    if not trained.has_chat_template:
        raise RequestError("this model has no chat template; use /v1/completions with a prompt instead", "messages")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {role, content}", "messages")
    plain = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES + ("developer",):
            raise RequestError(f"messages[{index}].role must be one of {', '.join(ROLES)}", f"messages[{index}].role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise RequestError("only text content parts are supported", f"messages[{index}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f"messages[{index}].content must be a string", f"messages[{index}].content")
        role = "system" if message["role"] == "developer" else message["role"]
        plain.append({"role": role, "content": content})
    try:
        return trained.encode_messages(plain)
    except Exception as exc:  # the template refuses these turns (order, roles)
        raise RequestError(f"the chat template cannot render these messages: {exc}", "messages") from None


def completion_prompt(trained: Any, body: dict[str, Any]) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("prompt must be a string (one prompt a request)", "prompt")
    return trained.encode_text(prompt)


# --------------------------------------------------------------------------------------------- server


class Handler(BaseHTTPRequestHandler):
    """One request. ``server.trained`` is the model; generation takes its lock (one at a time)."""

    server_version = "gym-serve"
    protocol_version = "HTTP/1.1"

    # --- plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.server.access_log:
            say(f"{self.address_string()} {format % args}")

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, error: RequestError) -> None:
        self.close_connection = True  # an unread request body must not be taken for the next request
        self._send_json(error.status, error.body())

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError("Content-Length is not a number") from None
        if length > MAX_BODY:
            raise RequestError(f"the request body is over {MAX_BODY} bytes", status=413)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def _guarded(self, action) -> None:
        try:
            action()
        except RequestError as error:
            self._fail(error)
        except GymError as error:
            self._fail(RequestError(str(error)))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        except Exception as exc:  # a bug or a failure in the model: a 500 without internals
            logger.exception("request failed")
            self._fail(RequestError(f"the server failed to answer: {type(exc).__name__}", status=500,
                                    kind="server_error"))

    # --- routes

    def do_GET(self) -> None:
        def route():
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/v1/models":
                self._send_json(200, {"object": "list", "data": [self.server.model_card()]})
            elif path == f"/v1/models/{self.server.model_id}":
                self._send_json(200, self.server.model_card())
            elif path.startswith("/v1/models/"):
                raise RequestError(f"The model '{path[len('/v1/models/'):]}' does not exist", "model", 404,
                                   "model_not_found")
            elif path in ("/health", ""):
                self._send_json(200, {"status": "ok", "model": self.server.model_id})
            else:
                raise RequestError(f"no route GET {path}; the routes are GET /v1/models, POST /v1/chat/completions, "
                                   "POST /v1/completions", status=404, code="not_found")

        self._guarded(route)

    def do_POST(self) -> None:
        def route():
            path = self.path.split("?", 1)[0].rstrip("/")
            if path not in ("/v1/chat/completions", "/v1/completions"):
                raise RequestError(f"no route POST {path}; the routes are POST /v1/chat/completions and POST "
                                   "/v1/completions", status=404, code="not_found")
            body = self._body()
            self._complete(body, chat=path.endswith("chat/completions"))

        self._guarded(route)

    def _other(self) -> None:
        self._guarded(lambda: (_ for _ in ()).throw(
            RequestError(f"method {self.command} is not allowed here; use GET or POST", status=405,
                         code="method_not_allowed")))

    do_PUT = do_DELETE = do_PATCH = _other

    # --- generation

    def _complete(self, body: dict[str, Any], chat: bool) -> None:
        _check_keys(body, CHAT_KEYS if chat else COMPLETION_KEYS)
        trained = self.server.trained
        settings = sampling(body, self.server.max_tokens)
        stop = stop_strings(body)
        prompt = chat_prompt(trained, body) if chat else completion_prompt(trained, body)
        limit = trained.context_length
        if limit is not None and len(prompt) >= limit:
            raise RequestError(f"This model's maximum context length is {limit} tokens; the prompt is {len(prompt)} "
                               "tokens", "messages" if chat else "prompt", code="context_length_exceeded")
        if isinstance(body.get("seed"), int) and not isinstance(body.get("seed"), bool):
            seed = body["seed"]
        elif body.get("seed") is not None:
            raise RequestError("seed must be a whole number", "seed")
        else:
            seed = None
        stream = trained.stream(prompt, settings, stop, seed)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(stream, ident, created, chat, usage)
            return
        text = "".join(stream)
        result = stream.result
        choice: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        self._send_json(200, {
            "id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": self.server.model_id, "choices": [choice], "usage": _usage(result),
        })

    def _stream(self, stream: Any, ident: str, created: int, chat: bool, usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> None:
            payload = {"id": ident, "object": kind, "created": created, "model": self.server.model_id,
                       "choices": choices, **extra}
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            self.wfile.flush()

        def choice(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": text} if text is not None else {})
            return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}

        pieces = iter(stream)
        try:
            if chat:
                event([choice(None, None, first=True)])
            for piece in pieces:
                if piece:
                    event([choice(piece, None)])
        except (BrokenPipeError, ConnectionResetError):
            pieces.close()  # ends generation early: the lock is free for the next request
            return
        except Exception as exc:  # the headers are sent: report in the stream, as OpenAI does
            logger.exception("streaming failed")
            error = RequestError(f"the server failed to answer: {type(exc).__name__}", kind="server_error")
            self.wfile.write(f"data: {json.dumps(error.body())}\n\n".encode())
            return
        event([choice(None, stream.result.finish_reason)])
        if usage:
            event([], usage=_usage(stream.result))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _usage(result: Any) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


class GymServer(ThreadingHTTPServer):
    """The HTTP server holding the loaded model."""

    daemon_threads = True
    request_queue_size = 128  # concurrent clients wait in the listen queue rather than being refused

    def __init__(self, address: tuple[str, int], trained: Any, model_id: str, max_tokens: int = 256,
                 access_log: bool = True):
        self.trained, self.model_id, self.max_tokens, self.access_log = trained, model_id, max_tokens, access_log
        self.started = int(time.time())
        super().__init__(address, Handler)

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.started, "owned_by": "gym"}


def make_server(trained: Any, host: str = "127.0.0.1", port: int = 8000, model_id: str | None = None,
                max_tokens: int = 256, access_log: bool = True) -> GymServer:
    try:
        return GymServer((host, port), trained, model_id or trained.name, max_tokens, access_log)
    except OSError as exc:
        raise GymError(f"--host {host} --port {port}: cannot listen there: {exc.strerror or exc}"
                       + (" (another server uses that port? choose another with --port)" if exc.errno == 98 else ""))


@hookimpl
def gym_register_commands(cli):
    import click

    @cli.command(name="serve")
    @click.argument("config", type=click.Path(dir_okay=False))
    @click.argument("overrides", nargs=-1)
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
    @click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on (0: any free one).")
    @click.option("--model-dir", default=None, help="The trained model's folder (default: the config's output_dir).")
    @click.option("--merge/--no-merge", default=None,
                  help="Fold an adapter into its base (default: yes, unless the base is 4/8-bit).")
    @click.option("--model-name", default=None, help="The model id clients see (default: the model folder's name).")
    @click.option("--max-tokens", type=int, default=256, show_default=True,
                  help="Most new tokens when a request sets no max_tokens.")
    @click.option("--quiet", is_flag=True, help="No line per request.")
    def serve(config, overrides, host, port, model_dir, merge, model_name, max_tokens, quiet):
        """Serve the model CONFIG trained over an OpenAI-compatible API.

        \b
        Routes: POST /v1/chat/completions (stream: true too), POST /v1/completions, GET /v1/models.
        Clients: base_url="http://HOST:PORT/v1", any API key.
        """
        from gym.api import load_config
        from gym.plugins.inference import load_trained

        if max_tokens < 1:
            raise GymError(f"--max-tokens: must be at least 1 (got {max_tokens})")
        cfg = load_config(config, overrides)
        trained = load_trained(cfg, model_dir=model_dir, merge=merge, config_path=config)
        server = make_server(trained, host, port, model_name, max_tokens, access_log=not quiet)
        bound_host, bound_port = server.server_address[:2]
        say(f"serving {server.model_id} at http://{bound_host}:{bound_port}/v1 (Ctrl-C stops)")
        sys.stdout.flush()  # a supervisor reading a pipe sees the address at once
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            say("stopped")
        finally:
            server.server_close()
