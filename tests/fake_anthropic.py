"""A loopback server that speaks the Anthropic Messages API, for driving the real `anthropic`
client through ANTHROPIC_BASE_URL. A test gives it a `brain`: a function from the request body
to (status, body, headers); it records every request it received. It also answers
`GET /v1/models/{id}` (the agent's up-front check): 401 for a key not in `keys`, 404 for a model
not in `models`, or `models_reply` when a test wants another answer (an overload)."""
from __future__ import annotations

import http.server
import itertools
import json
import threading
from typing import Callable

Reply = tuple[int, dict, dict]
_ids = itertools.count(1)


def message(content: list[dict], stop_reason: str = "tool_use", input_tokens: int = 1000, output_tokens: int = 200,
            cache_write: int = 0, cache_read: int = 0) -> Reply:
    return 200, {
        "id": f"msg_{next(_ids):04d}", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": content, "stop_reason": stop_reason, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read,
                  "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": 0}},
    }, {}


def tool(name: str, **inputs: object) -> dict:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": inputs}


def text(words: str) -> dict:
    return {"type": "text", "text": words}


def error(status: int, kind: str, words: str, **headers: str) -> Reply:
    return status, {"type": "error", "error": {"type": kind, "message": words}}, headers


KNOWN_MODELS = ("claude-sonnet-5-5", "claude-opus-4-1", "claude-haiku-4-5")


class FakeAnthropic:
    def __init__(self, brain: Callable[[dict], Reply] = lambda body: error(500, "api_error", "no brain"),
                 keys: tuple[str, ...] = ("test-key",), models: tuple[str, ...] = KNOWN_MODELS,
                 models_reply: Reply | None = None) -> None:
        self.brain, self.keys, self.models, self.models_reply = brain, keys, models, models_reply
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                outer.requests.append({"path": self.path, "body": None, "headers": dict(self.headers)})
                key = self.headers.get("x-api-key") or self.headers.get("Authorization", "").removeprefix("Bearer ")
                self.answer(*outer.model_info(self.path, key))

            def answer(self, status: int, reply: dict, headers: dict) -> None:
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                outer.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                status, reply, headers = outer.brain(body) if self.path.startswith("/v1/messages") else error(404, "not_found_error", "no such path")
                self.answer(status, reply, headers)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def model_info(self, path: str, key: str) -> Reply:
        if not path.startswith("/v1/models/"):
            return error(404, "not_found_error", "no such path")
        if self.models_reply is not None:
            return self.models_reply
        if key not in self.keys:
            return error(401, "authentication_error", "invalid x-api-key")
        model = path.split("?")[0].rsplit("/", 1)[1]
        if model not in self.models:
            return error(404, "not_found_error", f"model: {model}")
        return 200, {"type": "model", "id": model, "display_name": model, "created_at": "2026-01-01T00:00:00Z"}, {}

    def __enter__(self) -> FakeAnthropic:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def scripted(replies: list[Reply]) -> Callable[[dict], Reply]:
    """A brain that plays replies in order, one per request."""
    queue = list(replies)
    return lambda body: queue.pop(0)
