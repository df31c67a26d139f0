"""The HTTP app: OpenAI's routes over the engine and its scheduler, and ``serve`` to run it under uvicorn.

Routes: GET / (the denoising viewer, ``page``), GET /health, GET /v1/models (and /v1/models/{id}),
POST /v1/completions, POST /v1/chat/completions, GET /metrics (Prometheus). A request is read and
checked on the event loop (``Engine.job``), queued (``Scheduler.submit``), and answered when its
batch has produced it; a stream sends each newly final piece of text as it comes. A client that leaves (a stream's
connection closes, or a plain request's) releases its ticket at once.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations (``Request``,
imported inside ``create_app`` since FastAPI is optional) as objects, not as names to look up.
"""

import asyncio
import functools
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from remask.checkpoint import load_model, resolve_checkpoint
from remask.config import check
from remask.devices import pick_device
from remask.errors import RemaskError
from remask.model import is_causal
from remask.sampling.config import DecodeConfig, SampleConfig, sampler_config
from remask.serve.batching import Scheduler, Ticket
from remask.serve.engine import Engine, Result
from remask.serve.errors import ApiError, error_response, http_message, install_error_handlers
from remask.serve.limits import Guard, ServerConfig
from remask.serve.metrics import Metrics, Observe
from remask.serve.page import add_page_routes
from remask.serve.requests import Job, request_schema

log = logging.getLogger("remask.serve")
MISSING_EXTRA = "remask serve needs the serve extra: pip install 'remask[serve]'"


def _need(module: str) -> Any:
    """Import an optional package of the ``serve`` extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RemaskError(MISSING_EXTRA) from None


def _sse(obj: dict[str, Any], event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(obj)}\n\n"


def usage(job: Job, result: Result) -> dict[str, int]:
    prompt, completion = sum(len(p) for p in job.prompts), sum(result.completion_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "forward_passes": result.n_forward, "forward_passes_saved": result.n_forward_saved}


def _body(job: Job, result: Result, chat: bool, head: dict[str, Any]) -> dict[str, Any]:
    """The JSON answer of a request that did not stream."""
    choices = [{"index": r, "message": {"role": "assistant", "content": text}} if chat else
               {"index": r, "text": text, "logprobs": None} for r, text in enumerate(result.texts)]
    for c, finish in zip(choices, result.finish):
        c["finish_reason"] = finish
    return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
            "usage": usage(job, result)}


async def _events(ticket: Ticket, chat: bool, head: dict[str, Any]) -> AsyncIterator[str]:
    """A job as server-sent events: a chunk per text delta (and a ``step`` event per denoising step
    with ``stream_steps``), the finish reasons, usage if asked, [DONE]."""
    job, kind = ticket.job, "chat.completion.chunk" if chat else "text_completion"

    def chunk(r: int, text: str | None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
            choice = {"index": r, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": r, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _sse({**head, "object": kind, "choices": [choice]})

    if chat:
        for r in range(len(job.rows)):
            yield chunk(r, "", role=True)
    while True:
        item = await ticket.next()
        if isinstance(item, tuple):
            yield chunk(*item)
        elif isinstance(item, dict):  # a denoising step, or the pinned words before the first one
            yield _sse(item, "pins" if item.get("object") == "remask.pins" else "step")
        elif isinstance(item, Result):
            for r, finish in enumerate(item.finish):
                yield chunk(r, None, finish)
            if job.include_usage:
                yield _sse({**head, "object": kind, "choices": [], "usage": usage(job, item)})
            break
        else:  # the headers are sent: report the failure in the stream
            user = isinstance(item, RemaskError)
            yield _sse({"error": {"message": http_message(str(item)) if user else "internal server error",
                                  "type": "invalid_request_error" if user else "server_error"}})
            break
    yield "data: [DONE]\n\n"


@functools.cache
def _released_stream() -> type:
    """A StreamingResponse that releases its ticket when it ends, however it ends: a client that
    leaves mid-stream frees its rows before the stream's generator is finalised."""
    from starlette.responses import StreamingResponse

    class ReleasedStream(StreamingResponse):
        def __init__(self, scheduler: Scheduler, ticket: Ticket, content: AsyncIterator[str]) -> None:
            super().__init__(content, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self.scheduler, self.ticket = scheduler, ticket

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.scheduler.release(self.ticket)

    return ReleasedStream


async def _client_left(receive: Any) -> None:
    """Returns when the client disconnects (the body has been read, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # a server that repeats the body: do not spin


async def _answer(ticket: Ticket, receive: Any) -> Result | None:
    """Wait for a plain request's result; None if its client leaves first."""
    left = asyncio.ensure_future(_client_left(receive))
    try:
        while True:
            got = asyncio.ensure_future(ticket.next())
            await asyncio.wait({got, left}, return_when=asyncio.FIRST_COMPLETED)
            if not got.done():
                got.cancel()
                return None
            item = got.result()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, Result):
                return item
    finally:
        left.cancel()


def create_app(model: Any, tokenizer: Any, *, defaults: DecodeConfig | None = None, model_name: str | None = None,
               random_seed: bool = False, server: ServerConfig | None = None) -> Any:
    """A FastAPI app serving ``model`` (nothing is started; ``serve`` runs it under uvicorn).

    defaults: the sampler settings requests start from (None: the dataclass defaults; a config of
    the other kind gives its shared settings, see ``sampling.decode.for_model``). random_seed: a
    request without ``seed`` draws a fresh one (else ``defaults.seed``, so equal requests get
    equal answers). server: limits, keys and the served name (``ServerConfig``); ``model_name``
    overrides its name (default "remask"). The request schema at /openapi.json is derived from
    the sampler fields. ``app.state`` holds the engine, the scheduler and the metrics.
    """
    _need("fastapi")
    _need("prometheus_client")
    from fastapi import FastAPI

    from remask import __version__

    server = server if server is not None else ServerConfig()
    engine = Engine(model, tokenizer, defaults if defaults is not None else SampleConfig(), random_seed=random_seed,
                    limits=server)
    scheduler = Scheduler(engine)
    metrics = Metrics(queue_length=scheduler.queue_length, open_streams=scheduler.open_streams)
    scheduler.on_batch = functools.partial(_record, metrics)
    app = FastAPI(title="remask", version=__version__, description="OpenAI-compatible completions from a remask checkpoint")
    app.state.engine, app.state.scheduler, app.state.metrics = engine, scheduler, metrics
    install_error_handlers(app)
    _routes(app, model_name or server.served_model_name or "remask")
    add_page_routes(app)
    app.add_middleware(Guard, max_body_bytes=server.max_body_bytes, keys=server.keys())
    app.add_middleware(Observe, metrics=metrics, routes=app.router.routes)
    return app


def _record(metrics: Metrics, tickets: list[Ticket], n_forward: int) -> None:
    """A finished batch, in the metrics: its rows and passes, each answer's time to first text and tokens."""
    metrics.batch(sum(len(t.job.rows) for t in tickets), n_forward)
    for t in tickets:
        if t.result is not None:
            first = t.first if t.first is not None else time.perf_counter()
            metrics.answered(first - t.arrived, sum(t.result.completion_tokens))


def _routes(app: Any, name: str) -> None:
    """The routes of ``app`` over its ``state.engine`` and ``state.scheduler``, serving the model as ``name``."""
    from fastapi import Body, Request
    from fastapi.responses import Response

    engine, scheduler, metrics = app.state.engine, app.state.scheduler, app.state.metrics
    schema = {"requestBody": {"content": {"application/json": {"schema": request_schema(engine.defaults)}}}}
    card = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "remask",
            "max_model_len": engine.context, "sampler": "ar" if engine.causal else "llada"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "busy": scheduler.busy}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str) -> dict[str, Any]:
        _served(model_id)
        return card

    @app.get("/metrics")
    async def prometheus() -> Any:
        text, kind = metrics.render()
        return Response(text, media_type=kind)

    @app.post("/v1/completions", openapi_extra=schema)
    async def completions(request: Request, body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008 (FastAPI's idiom)
        _served(body.get("model"))
        return await respond(engine.job(body, engine.encode_prompts(body.get("prompt"))), False, request)

    @app.post("/v1/chat/completions", openapi_extra=schema)
    async def chat_completions(request: Request, body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        _served(body.get("model"))
        return await respond(engine.job(body, [engine.encode_chat(body.get("messages"))]), True, request)

    def _served(model_id: Any) -> None:
        check(model_id is None or isinstance(model_id, str), f"'model' must be a string, got {json.dumps(model_id)[:40]}")
        if model_id is not None and model_id != name:
            raise ApiError(404, f"the model {json.dumps(model_id)[:80]} does not exist; this server serves "
                                f"{json.dumps(name)} (GET /v1/models)", code="model_not_found")

    async def respond(job: Job, chat: bool, request: Request) -> Any:
        ticket = scheduler.submit(job)
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": name, "seed": job.seed}
        if job.stream:
            return _released_stream()(scheduler, ticket, _events(ticket, chat, head))
        try:
            result = await _answer(ticket, request.receive)
        finally:
            scheduler.release(ticket)
        if result is None:
            return error_response(499, "the client closed the request before its answer was ready")
        return _body(job, result, chat, head)


def serve(ckpt: str | Path, host: str = "127.0.0.1", port: int = 8000, *, defaults: DecodeConfig | None = None,
          settings: dict[str, Any] | None = None, device: str = "auto", model_name: str | None = None,
          random_seed: bool = True, log_level: str = "info", server: ServerConfig | None = None) -> None:
    """Load a checkpoint and serve it with uvicorn until interrupted (``remask serve``).

    settings: named sampler settings (``remask serve``'s flags) applied on ``defaults`` once the
    checkpoint's kind of decoder is known; those only the other kind takes are logged and ignored.
    server: limits and keys (``ServerConfig``; its ``api_key`` None reads ``REMASK_API_KEY``).
    The served name is ``model_name``, else ``server.served_model_name``, else the run's name.
    """
    _need("fastapi")
    uvicorn = _need("uvicorn")
    check(0 < port < 65536, f"--port must be in 1..65535, got {port}")
    server = server if server is not None else ServerConfig()
    path = resolve_checkpoint(ckpt)
    model, tok = load_model(path, pick_device(device))
    if settings is not None:
        defaults, ignored = sampler_config(settings, causal=is_causal(model), base=defaults)
        if ignored:
            log.warning("ignored for this %s checkpoint: %s", "causal" if is_causal(model) else "diffusion",
                        ", ".join(ignored))
    name = model_name or server.served_model_name or (path.parent.name if path.name == "checkpoint" else path.name)
    if not server.keys() and not _loopback(host):
        log.warning("serving on %s without an API key: anyone who can reach it can use it (--api-key)", host)
    app = create_app(model, tok, defaults=defaults, model_name=name, random_seed=random_seed, server=server)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
