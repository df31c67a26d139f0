"""remask serve: an OpenAI-compatible HTTP server for one checkpoint, diffusion (LLaDA) or AR.

    remask serve --ckpt runs/chat --gen-length 64 --block-length 32     # http://127.0.0.1:8000
    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 64}'

GET /health, GET /v1/models, POST /v1/completions (``prompt``: a string, a list of strings or
token ids; a list is generated as one batch) and POST /v1/chat/completions (``messages`` rendered
with the checkpoint's chat template, as ``generate --chat`` does). Requests take OpenAI's fields
(max_tokens, temperature, seed, stop, stream, stream_options.include_usage; top_k / top_p for AR
checkpoints) and remask's sampler settings under their ``SampleConfig`` names (steps,
block_length, remasking, threshold, cache, cfg_scale, remask_committed, ...); the server's flags
are the defaults. A diffusion model denoises whole blocks, so ``max_tokens`` is rounded up to a
whole number of blocks and the answer cut at ``max_tokens``; without ``steps`` a request keeps the
server's steps per token. ``usage`` also counts the forward passes (``forward_passes``).

Every answer, streamed or not, is the stable prefix of the canvas (``stream.TextDeltas``): the
text before the first mask, cut at the first EOS/EOT, then at the first ``stop`` string. A stream
sends it as it grows, one SSE ``data:`` chunk per delta; once every row has hit a stop string the
remaining steps are skipped. AR checkpoints decode with ``sampling.ar.ar_stream``, a token per step.

The model runs one thing at a time, in a worker thread, so the event loop keeps answering
(``/health`` reports ``busy``) during a generation: a request holds the lock for its whole
generation, a stream for each step (a client that stops reading never holds the model; streams
interleave step by step).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
import typing
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remask.checkpoint import load_model, resolve_checkpoint
from remask.config import check
from remask.data.template import ROLES, render
from remask.devices import pick_device
from remask.errors import RemaskError
from remask.model import check_context, context_length, is_causal
from remask.sampling.config import SAMPLER_FIELDS, ARSampleConfig, DecodeConfig, SampleConfig, sampler_config
from remask.sampling.decode import decode_stream, for_model
from remask.sampling.stream import TextDeltas, stop_index

log = logging.getLogger("remask.serve")
MISSING_EXTRA = "remask serve needs the serve extra: pip install 'remask[serve]'"
# Sampler settings a request may send under their field names (``sampling.config``); the answer
# length comes as OpenAI's max_tokens, and precision and compilation are the server's own.
SERVER_ONLY = ("gen_length", "dtype", "compile")
REQUEST_FIELDS = tuple(name for name in SAMPLER_FIELDS if name not in SERVER_ONLY)


def _need(module: str) -> Any:
    """Import an optional package of the ``serve`` extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RemaskError(MISSING_EXTRA) from None


# ----------------------------------------------------------------------------- requests

def _get(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """``body[key]`` checked against a JSON type; absent or null gives ``default``."""
    value = body.get(key)
    if value is None:
        return default
    ok = (isinstance(value, int | float) and not isinstance(value, bool) if kind is float
          else isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "an object"}
    check(ok, f"'{key}' must be {names[kind]}, got {json.dumps(value)[:40]}")
    return float(value) if kind is float else value


_HINTS = {**typing.get_type_hints(SampleConfig), **typing.get_type_hints(ARSampleConfig)}


def json_kind(name: str) -> type:
    """The JSON type a request sends for sampler setting ``name``: its field's type (null aside)."""
    args = [a for a in typing.get_args(_HINTS[name]) if a is not type(None)]
    return args[0] if args else _HINTS[name]


def request_schema(defaults: DecodeConfig) -> dict[str, Any]:
    """The JSON schema of the sampler settings a request may send: name, type, default (the server's,
    for the checkpoint's kind of decoder) and description, each from its dataclass field."""
    names = {int: "integer", float: "number", bool: "boolean", str: "string"}
    props = {"max_tokens": {"type": "integer", "default": defaults.gen_length,
                            "description": SAMPLER_FIELDS["gen_length"].metadata["help"]}}
    for name in REQUEST_FIELDS:
        f, kind = SAMPLER_FIELDS[name], names[json_kind(name)]
        props[name] = {"type": [kind, "null"] if type(None) in typing.get_args(_HINTS[name]) else kind,
                       "default": getattr(defaults, name, f.default), "description": f.metadata["help"],
                       **({"enum": list(f.metadata["choices"])} if f.metadata.get("choices") else {})}
    return {"type": "object", "properties": props}


def _stops(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    check(isinstance(stops, list) and len(stops) <= 4 and all(isinstance(s, str) and s for s in stops),
          f"'stop' must be a non-empty string or a list of at most 4 of them, got {json.dumps(value)[:60]}")
    return stops


def http_message(message: str) -> str:
    """A config error's CLI flags as request fields: ``--gen-length`` -> max_tokens, ``--block-length`` ->
    block_length."""
    message = message.replace("--gen-length", "max_tokens")
    return re.sub(r"--([a-z]+(?:-[a-z]+)*)", lambda m: m.group(1).replace("-", "_"), message)


@dataclass
class Job:
    """A validated request: prompts (token ids), the sampler config and what to do with the text."""

    prompts: list[list[int]]
    cfg: Any  # SampleConfig (diffusion) or ARSampleConfig (causal)
    max_tokens: int  # the answer is cut here (a diffusion canvas is rounded up to whole blocks)
    stop: list[str]
    stream: bool
    include_usage: bool
    seed: int


@dataclass
class Result:
    """What a job produced, per prompt row, plus the cost of the run."""

    texts: list[str]
    finish: list[str]  # "stop" (EOS/EOT or a stop string) or "length"
    completion_tokens: list[int]  # answer tokens before the first EOS/EOT (or the mask a stop cut at)
    n_forward: int
    n_forward_saved: int


# (the answer columns (B, max_tokens), forward passes so far, passes saved) after each step
Steps = Generator[tuple[Any, int, int], None, None]


class StopCut:
    """Text pieces in, text out, ending before the first stop string; a tail that may begin one is
    held back until the next piece shows whether it does."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.text, self.sent, self.hit = stops, "", 0, False

    def feed(self, piece: str, final: bool = False) -> str:
        self.text += piece
        cut = min((i for s in self.stops if (i := self.text.find(s)) >= 0), default=-1)
        self.hit = cut >= 0
        end = cut if self.hit else len(self.text) if final else len(self.text) - self._held()
        out, self.sent = self.text[self.sent:max(end, self.sent)], max(end, self.sent)
        return out

    def _held(self) -> int:
        longest = max((len(s) for s in self.stops), default=1) - 1
        for k in range(min(longest, len(self.text)), 0, -1):
            if any(s.startswith(self.text[-k:]) for s in self.stops):
                return k
        return 0


class Engine:
    """One model and its tokenizer: requests -> jobs -> text, blocking (the app runs it off the loop)."""

    def __init__(self, model: Any, tokenizer: Any, defaults: DecodeConfig, *, random_seed: bool = False) -> None:
        self.model, self.tok, self.random_seed = model, tokenizer, random_seed
        self.defaults = for_model(defaults, model)
        self.causal = is_causal(model)
        self.context = context_length(model)
        self.vocab = getattr(getattr(model, "cfg", None), "vocab_size", None) or tokenizer.vocab_size
        self.ends = {tokenizer.eos_id} | ({tokenizer.eot_id} if getattr(tokenizer, "eot_id", None) is not None
                                          else set())

    def encode_prompts(self, prompt: Any) -> list[list[int]]:
        """/v1/completions ``prompt``: a string, a list of strings, token ids or a list of those."""
        check(prompt is not None, "'prompt' is required: a string or a list of strings")
        rows = [prompt] if isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                                       and isinstance(prompt[0], int)) else prompt
        check(isinstance(rows, list) and len(rows) > 0,
              "'prompt' must be a string, a list of strings or token ids, and not an empty list")
        out = []
        for i, row in enumerate(rows):
            if isinstance(row, str):
                out.append(self.tok.encode(row))
            else:
                check(isinstance(row, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in row),
                      f"prompt {i} must be a string or a list of token ids")
                bad = [t for t in row if not 0 <= t < self.vocab]
                check(not bad, f"prompt {i} holds token id {bad[0] if bad else 0}, outside the vocabulary "
                               f"(size {self.vocab})")
                out.append(list(row))
            check(len(out[-1]) > 0, f"prompt {i} is empty; send some text (a document start needs one token)")
        return out

    def encode_chat(self, messages: Any) -> list[int]:
        """OpenAI ``messages`` -> the chat template's text up to the assistant header, as ids."""

        check(isinstance(messages, list) and len(messages) > 0,
              "'messages' is required: a non-empty list of {\"role\", \"content\"} objects")
        specials = [s for s in self.tok.special_tokens.values() if s]
        msgs = []
        for k, m in enumerate(messages):
            check(isinstance(m, dict) and m.get("role") in ROLES,
                  f"messages[{k}] must be an object with a 'role' among {', '.join(ROLES)}")
            content = m.get("content")
            if isinstance(content, list):  # OpenAI content parts: only text ones
                check(all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                          for p in content), f"messages[{k}] content parts must all be {{\"type\": \"text\"}}")
                content = "".join(p["text"] for p in content)
            check(isinstance(content, str), f"messages[{k}] 'content' must be a string")
            # the rendered text is encoded with specials on: a special token in content would forge a turn
            found = next((s for s in specials if s in content), None)
            check(found is None, f"messages[{k}] content holds the special token {found!r}; remove it")
            msgs.append({"role": m["role"], "content": content})
        return self.tok.encode(render(msgs, self.tok, add_generation_prompt=True), allow_special=True)

    def job(self, body: dict[str, Any], prompts: list[list[int]]) -> Job:
        """Validate a request's sampling fields against the server's defaults (RemaskError if wrong)."""
        d = self.defaults
        max_tokens = _get(body, "max_completion_tokens", int, None)  # chat's newer name for max_tokens
        max_tokens = _get(body, "max_tokens", int, d.gen_length) if max_tokens is None else max_tokens
        check(max_tokens > 0, f"max_tokens must be positive, got {max_tokens}")
        check(_get(body, "n", int, 1) == 1, "'n' must be 1; send a list of prompts for several completions")
        check(not body.get("logprobs") and not body.get("echo"), "logprobs and echo are not supported")
        stop = _stops(body.get("stop"))
        stream = _get(body, "stream", bool, False)
        include_usage = _get(_get(body, "stream_options", dict, {}), "include_usage", bool, False)
        settings = {k: _get(body, k, json_kind(k), None) for k in REQUEST_FIELDS}
        if settings["top_p"] == 1.0:  # OpenAI clients send it by default: no nucleus cut, for either decoder
            settings["top_p"] = None
        if settings["seed"] is None:
            settings["seed"] = secrets.randbelow(2**31) if self.random_seed else d.seed
        settings["gen_length"] = length = max_tokens if self.causal else self._whole_blocks(max_tokens, settings)
        cfg, foreign = sampler_config(settings, causal=self.causal, base=d)  # validates
        check(not foreign, f"'{foreign[0] if foreign else ''}' is "
                           f"{'a diffusion sampler setting; this checkpoint is autoregressive (causal)' if self.causal else 'an AR sampler setting (top_k, top_p, kv_cache); this checkpoint is a masked diffusion model, which takes temperature and remasking'}")
        rounded = f" (rounded up to whole blocks: {length})" if length != max_tokens else ""
        check_context(self.model, max(len(p) for p in prompts), length,
                      f"prompt ({{used}} tokens) + max_tokens {max_tokens}{rounded} exceeds the model context of "
                      "{limit} tokens; shorten the prompt or lower max_tokens")
        return Job(prompts, cfg, max_tokens, stop, stream, include_usage, cfg.seed)

    def _whole_blocks(self, max_tokens: int, settings: dict[str, Any]) -> int:
        """A diffusion canvas covers whole blocks: max_tokens rounded up. Without ``steps`` the request
        keeps the server's steps per token (a multiple of the blocks), set in ``settings``."""
        d = self.defaults
        block = settings["block_length"] if settings["block_length"] is not None else d.block_length
        length = -(-max_tokens // block) * block if block and block > 0 else max_tokens
        if settings["steps"] is None:
            blocks = length // block if block and block > 0 else 1
            settings["steps"] = max(blocks, -(-round(d.steps * length / d.gen_length) // blocks) * blocks)
        return length

    def steps(self, job: Job) -> Steps:
        """(the answer columns (B, max_tokens), forward passes so far, passes saved) after every step:
        a denoising step, or one token of an AR checkpoint. The prompts are checked now."""
        tok, n = self.tok, job.cfg.gen_length
        events = decode_stream(self.model, job.prompts, job.cfg, mask_id=tok.mask_id, eos_id=tok.eos_id,
                               eot_id=getattr(tok, "eot_id", None))
        return ((e.canvas[:, e.canvas.shape[1] - n:][:, :job.max_tokens], e.n_forward, e.n_forward_saved)
                for e in events)

    def pieces(self, job: Job, steps: Steps) -> Generator[tuple[int, str] | Result, None, None]:
        """Drive ``steps``: yield (row, newly final text) as each row's stable prefix grows, then the Result."""
        B = len(job.prompts)
        deltas, cuts = [TextDeltas(self.tok) for _ in range(B)], [StopCut(job.stop) for _ in range(B)]
        last: tuple[Any, int, int] | None = None
        try:
            for last in steps:
                cols = last[0]  # (B, max_tokens)
                for r in range(B):
                    if not cuts[r].hit and (piece := cuts[r].feed(deltas[r].update(cols[r]))):
                        yield r, piece
                if all(c.hit for c in cuts):
                    break  # every answer reached a stop string: its remaining steps are not needed
        finally:
            steps.close()
        assert last is not None  # gen_length > 0: at least one step
        cols, n_forward, saved = last
        for r in range(B):
            if not cuts[r].hit and (piece := cuts[r].feed(deltas[r].finish(cols[r]), final=True)):
                yield r, piece
        counted = [self._answer(cols[r].tolist()) for r in range(B)]
        yield Result(texts=[c.text[:c.sent] for c in cuts],
                     finish=["stop" if c.hit or ended else "length" for c, (_, ended) in zip(cuts, counted)],
                     completion_tokens=[n for n, _ in counted], n_forward=n_forward, n_forward_saved=saved)

    def _answer(self, ids: list[int]) -> tuple[int, bool]:
        """(tokens before the first EOS/EOT or mask, whether EOS/EOT ended the answer)."""
        cut = stop_index(ids, self.ends | {self.tok.mask_id})
        return cut, cut < len(ids) and ids[cut] in self.ends


def _drain(pieces: Iterator[tuple[int, str] | Result]) -> Result:
    *_, result = pieces
    assert isinstance(result, Result)
    return result


# ----------------------------------------------------------------------------- app

def _error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)


def _install_error_handlers(app: Any) -> None:
    """Every error is one JSON object in OpenAI's shape: a user's mistake a one-line 400, a crash a
    500 without a traceback (the server logs it)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RemaskError)
    async def _remask_error(request: Any, exc: RemaskError) -> Any:
        return _error(400, http_message(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return _error(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})")
        return _error(400, "the request body must be a JSON object")

    @app.exception_handler(HTTPException)
    async def _http(request: Any, exc: HTTPException) -> Any:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Any, exc: Exception) -> Any:
        return _error(500, "internal server error; see the server log", "server_error")


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _stream(engine: Engine, lock: asyncio.Lock, job: Job, steps: Steps, chat: bool,
                  head: dict[str, Any]) -> Any:
    """A job as server-sent events: a chunk per text delta, the finish reasons, usage if asked, [DONE].
    The lock is held per step, never across a yield: a client that stops reading holds nothing."""
    from starlette.concurrency import run_in_threadpool

    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(r: int, text: str | None, finish: str | None = None) -> str:
        if chat:
            delta = {} if text is None else {"content": text} if r >= 0 else {"role": "assistant", "content": ""}
            choice = {"index": max(r, 0), "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": r, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _sse({**head, "object": kind, "choices": [choice]})

    pieces = engine.pieces(job, steps)
    try:
        if chat:
            yield chunk(-1, "")
        while True:
            async with lock:
                item = await run_in_threadpool(next, pieces, None)
            if item is None:
                break
            if not isinstance(item, Result):
                yield chunk(*item)
                continue
            for r, finish in enumerate(item.finish):
                yield chunk(r, None, finish)
            if job.include_usage:
                yield _sse({**head, "object": kind, "choices": [], "usage": usage(job, item)})
    except RemaskError as e:  # the headers are sent: report in the stream
        yield _sse({"error": {"message": http_message(str(e)), "type": "invalid_request_error"}})
    except Exception:
        log.exception("generation failed")
        yield _sse({"error": {"message": "internal server error", "type": "server_error"}})
    finally:
        pieces.close()
    yield "data: [DONE]\n\n"


def create_app(model: Any, tokenizer: Any, *, defaults: DecodeConfig | None = None, model_name: str = "remask",
               random_seed: bool = False) -> Any:
    """A FastAPI app serving ``model`` (nothing is started; ``serve`` runs it under uvicorn).

    defaults: the sampler settings requests start from (None: the dataclass defaults; a config of
    the other kind gives its shared settings, see ``sampling.decode.for_model``). random_seed: a
    request without ``seed`` draws a fresh one (else ``defaults.seed``, so equal requests get
    equal answers). The request schema at /openapi.json is derived from the sampler fields.
    """
    _need("fastapi")
    from fastapi import Body, FastAPI
    from fastapi.responses import StreamingResponse
    from starlette.concurrency import run_in_threadpool

    from remask import __version__

    engine = Engine(model, tokenizer, defaults if defaults is not None else SampleConfig(), random_seed=random_seed)
    lock = asyncio.Lock()  # one model: one generation (or stream step) at a time
    started = int(time.time())
    app = FastAPI(title="remask", version=__version__, description="OpenAI-compatible completions from a remask checkpoint")
    app.state.engine = engine
    _install_error_handlers(app)
    schema = {"requestBody": {"content": {"application/json": {"schema": request_schema(engine.defaults)}}}}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "busy": lock.locked()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started,
                                            "owned_by": "remask", "max_model_len": engine.context,
                                            "sampler": "ar" if engine.causal else "llada"}]}

    @app.post("/v1/completions", openapi_extra=schema)
    async def completions(body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008 (FastAPI's idiom)
        return await respond(engine.job(body, engine.encode_prompts(body.get("prompt"))), chat=False)

    @app.post("/v1/chat/completions", openapi_extra=schema)
    async def chat_completions(body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        return await respond(engine.job(body, [engine.encode_chat(body.get("messages"))]), chat=True)

    async def respond(job: Job, chat: bool) -> Any:
        steps = engine.steps(job)  # checks the prompts before any response starts
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": model_name, "seed": job.seed}
        if job.stream:
            return StreamingResponse(_stream(engine, lock, job, steps, chat, head), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        async with lock:
            result = await run_in_threadpool(_drain, engine.pieces(job, steps))
        choices = [{"index": r, "message": {"role": "assistant", "content": text}} if chat else
                   {"index": r, "text": text, "logprobs": None} for r, text in enumerate(result.texts)]
        for c, finish in zip(choices, result.finish):
            c["finish_reason"] = finish
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                "usage": usage(job, result)}

    return app


def usage(job: Job, result: Result) -> dict[str, int]:
    prompt, completion = sum(len(p) for p in job.prompts), sum(result.completion_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "forward_passes": result.n_forward, "forward_passes_saved": result.n_forward_saved}


def serve(ckpt: str | Path, host: str = "127.0.0.1", port: int = 8000, *, defaults: DecodeConfig | None = None,
          settings: dict[str, Any] | None = None, device: str = "auto", model_name: str | None = None,
          random_seed: bool = True, log_level: str = "info") -> None:
    """Load a checkpoint and serve it with uvicorn until interrupted (``remask serve``).

    settings: named sampler settings (``remask serve``'s flags) applied on ``defaults`` once the
    checkpoint's kind of decoder is known; those only the other kind takes are logged and ignored.
    """

    _need("fastapi")
    uvicorn = _need("uvicorn")
    check(0 < port < 65536, f"--port must be in 1..65535, got {port}")
    path = resolve_checkpoint(ckpt)
    model, tok = load_model(path, pick_device(device))
    if settings is not None:
        defaults, ignored = sampler_config(settings, causal=is_causal(model), base=defaults)
        if ignored:
            log.warning("ignored for this %s checkpoint: %s", "causal" if is_causal(model) else "diffusion",
                        ", ".join(ignored))
    name = model_name or (path.parent.name if path.name == "checkpoint" else path.name)
    app = create_app(model, tok, defaults=defaults, model_name=name, random_seed=random_seed)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
