"""What the server allows and whom it answers: ``ServerConfig`` (one field per limit, each a
``remask serve`` flag) and ``Guard``, the ASGI middleware that enforces the body size and the keys
before a request reaches a route.

Limits are checked where the thing they bound is known: the body size here (413), the prompt
length, ``max_tokens`` and ``n`` when a request is read (400, naming the limit), the queue and the
open streams when a request would wait (429 with ``Retry-After``, see ``batching``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from remask.config import check, option
from remask.serve.errors import error_bytes

KEY_ENV = "REMASK_API_KEY"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(kw_only=True)
class ServerConfig:
    """The server's own settings (the sampler's come from ``SampleConfig``); each is a flag of ``remask serve``."""

    served_model_name: str | None = option("the model id requests name and /v1/models lists; a request naming "
                                           "another gets 404 (None: the run directory's name)", None)
    api_key: str | None = option("require 'Authorization: Bearer KEY' on the /v1/ routes (several keys: "
                                 f"comma-separated; None: the {KEY_ENV} environment variable, else no key)", None)
    max_batch_size: int = option("most rows (prompts x n) generated together in one batch; requests waiting "
                                 "with the same sampler settings share one (1: one request at a time)", 32)
    batch_wait: float = option("seconds a free model waits for more requests when its last batch was larger than "
                               "what is waiting (clients answered together come back a little apart; 0: never "
                               "wait; a lone client never waits)", 0.05)
    max_queue: int = option("most requests waiting for the model; one more gets 429 with Retry-After", 256)
    max_streams: int = option("most streamed responses open at once; one more gets 429 with Retry-After", 256)
    max_body_bytes: int = option("largest request body in bytes; a larger one gets 413", 1_000_000)
    max_prompt_tokens: int | None = option("longest prompt in tokens; a longer one gets 400 (None: the model's "
                                           "context bounds prompt + answer)", None)
    max_tokens_limit: int | None = option("largest max_tokens a request may ask; more gets 400 (None: the "
                                          "model's context bounds prompt + answer)", None)
    max_n: int = option("largest n (completions per prompt, generated as rows of one batch) a request may ask", 1)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_streams", "max_body_bytes", "max_n"):
            check(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        check(0 <= self.batch_wait <= 10, f"--batch-wait must be in 0..10 seconds, got {self.batch_wait}")
        for name in ("max_prompt_tokens", "max_tokens_limit"):
            value = getattr(self, name)
            check(value is None or value > 0, f"--{name.replace('_', '-')} must be positive (or none), got {value}")

    def keys(self) -> list[str]:
        """The accepted API keys: ``api_key``, else the environment variable's; none means no key is needed."""
        text = self.api_key if self.api_key is not None else os.environ.get(KEY_ENV, "")
        return [k.strip() for k in text.split(",") if k.strip()]


def _token(scope: Scope) -> bytes | None:
    """The Bearer token of a request's Authorization header, if any."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


async def _refuse(send: Send, status: int, message: str, code: str, headers: Sequence[tuple[bytes, bytes]] = ()
                  ) -> None:
    body = error_bytes(message, code=code)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: API keys on /v1/ routes (401), then the request body read whole, up to
    ``max_body_bytes`` (413), and replayed to the app. /health, /metrics and the schema stay open."""

    def __init__(self, app: Any, *, max_body_bytes: int, keys: Sequence[str]) -> None:
        self.app, self.limit, self.keys = app, max_body_bytes, [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.keys and scope["path"].startswith("/v1/"):
            token = _token(scope)
            if token is None or not any(secrets.compare_digest(token, k) for k in self.keys):
                message = ("no API key given: send the header 'Authorization: Bearer KEY'" if token is None else
                           "incorrect API key provided")
                return await _refuse(send, 401, message, "invalid_api_key", [(b"www-authenticate", b"Bearer")])
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await _refuse(send, 413, self._too_large(int(declared)), "request_too_large")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body arrived: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await _refuse(send, 413, self._too_large(size), "request_too_large")
            if not message.get("more_body", False):
                break
        return await self.app(scope, _replay(b"".join(chunks), receive), send)

    def _too_large(self, size: int) -> str:
        return f"the request body ({size}+ bytes) exceeds this server's limit of {self.limit} bytes"


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then the client's own messages (a disconnect)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
