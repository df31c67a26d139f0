"""Errors as OpenAI shapes them: one JSON object ``{"error": {message, type, param, code}}`` for
every failure of every route, whatever raised it (a user's mistake, a limit, a missing key, a bug).

A ``RemaskError`` (the request is wrong) is a 400 whose message names the field to fix; an
``ApiError`` carries its own status (401, 404, 413, 429) and OpenAI's ``code``; anything else is a
500 without a traceback (the server logs it). Bodies are ASCII JSON, so text a client sent that is
not valid Unicode (an unpaired surrogate) is echoed escaped, never crashes the error itself.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from remask.errors import RemaskError

log = logging.getLogger("remask.serve")


class ApiError(RemaskError):
    """A request the server refuses with ``status`` (not 400) and an OpenAI ``code``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.kind, self.headers = status, code, kind, headers or {}


def http_message(message: str) -> str:
    """A config error's CLI flags as request fields: ``--gen-length`` -> max_tokens, ``--block-length`` ->
    block_length."""
    message = message.replace("--gen-length", "max_tokens")
    return re.sub(r"--([a-z]+(?:-[a-z]+)*)", lambda m: m.group(1).replace("-", "_"), message)


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_bytes(message: str, kind: str = "invalid_request_error", code: str | None = None) -> bytes:
    """The body of an error, as ASCII JSON (safe for any text a client sent)."""
    return json.dumps(error_body(message, kind, code)).encode()


def error_response(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                   headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import Response

    return Response(error_bytes(message, kind, code), status, headers=headers, media_type="application/json")


def from_exception(exc: Exception) -> Any:
    """The response for an exception raised while handling a request."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, str(exc), exc.kind, exc.code, exc.headers)
    if isinstance(exc, RemaskError):
        return error_response(400, http_message(str(exc)))
    log.error("request failed", exc_info=exc)
    return error_response(500, "internal server error; see the server log", "server_error")


def install_error_handlers(app: Any) -> None:
    """Every error is one JSON object in OpenAI's shape: a user's mistake a one-line 400, a crash a
    500 without a traceback (the server logs it)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RemaskError)
    async def _remask_error(request: Any, exc: RemaskError) -> Any:
        return from_exception(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            why = first.get("ctx", {}).get("error", "parse error")
            return error_response(400, f"the request body is not valid JSON ({why})")
        return error_response(400, "the request body must be a JSON object")

    @app.exception_handler(HTTPException)
    async def _http(request: Any, exc: HTTPException) -> Any:
        code = "not_found" if exc.status_code == 404 else None
        return error_response(exc.status_code, str(exc.detail), code=code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Any, exc: Exception) -> Any:
        return from_exception(exc)
