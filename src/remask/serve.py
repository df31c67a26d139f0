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

import argparse
import asyncio
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from remask.config import check
from remask.errors import RemaskError

log = logging.getLogger("remask.serve")
MISSING_EXTRA = "remask serve needs the serve extra: pip install 'remask[serve]'"
# Request keys that set the SampleConfig field of the same name (diffusion checkpoints).
DIFFUSION_FIELDS: dict[str, type] = {
    "steps": int, "block_length": int, "remasking": str, "confidence": str, "threshold": float, "cache": str, "cache_refresh": int,
    "cfg_scale": float, "logits_eos_inf": bool, "confidence_eos_eot_inf": bool, "early_stop": bool,
    "remask_committed": int, "remask_below": float}
AR_FIELDS: dict[str, type] = {"top_k": int, "top_p": float}
ROLES = ("system", "user", "assistant")


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

    def __init__(self, model: Any, tokenizer: Any, defaults: Any, *, random_seed: bool = False) -> None:
        self.model, self.tok, self.defaults, self.random_seed = model, tokenizer, defaults, random_seed
        self.causal = bool(getattr(getattr(model, "cfg", None), "causal", False))
        self.context = getattr(getattr(model, "cfg", None), "max_seq_len", None)
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
        from remask.data.chat import render

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
        from remask.sampling.ar import ARSampleConfig

        d = self.defaults
        max_tokens = _get(body, "max_completion_tokens", int, None)  # chat's newer name for max_tokens
        max_tokens = _get(body, "max_tokens", int, d.gen_length) if max_tokens is None else max_tokens
        check(max_tokens > 0, f"max_tokens must be positive, got {max_tokens}")
        temperature = _get(body, "temperature", float, d.temperature)
        seed = _get(body, "seed", int, secrets.randbelow(2**31) if self.random_seed else d.seed)
        check(_get(body, "n", int, 1) == 1, "'n' must be 1; send a list of prompts for several completions")
        check(not body.get("logprobs") and not body.get("echo"), "logprobs and echo are not supported")
        stop = _stops(body.get("stop"))
        stream = _get(body, "stream", bool, False)
        include_usage = _get(_get(body, "stream_options", dict, {}), "include_usage", bool, False)
        if self.causal:
            given = [k for k in DIFFUSION_FIELDS if body.get(k) is not None]
            check(not given, f"'{given[0] if given else ''}' is a diffusion sampler setting; this checkpoint "
                             "is autoregressive (causal)")
            cfg: Any = ARSampleConfig(max_new_tokens=max_tokens, temperature=temperature, seed=seed,
                                      **{k: _get(body, k, kind, None) for k, kind in AR_FIELDS.items()})
            length = max_tokens
        else:
            check(body.get("top_k") is None and body.get("top_p") in (None, 1, 1.0),
                  "top_k / top_p apply to AR checkpoints; a diffusion sampler takes temperature and remasking")
            extra = {k: _get(body, k, kind, getattr(d, k)) for k, kind in DIFFUSION_FIELDS.items()}
            block = extra["block_length"]
            length = -(-max_tokens // block) * block if block and block > 0 else max_tokens  # whole blocks
            if body.get("steps") is None:  # keep the server's steps per token, a multiple of the blocks
                blocks = length // block if block and block > 0 else 1
                extra["steps"] = max(blocks, -(-round(d.steps * length / d.gen_length) // blocks) * blocks)
            cfg = replace(d, gen_length=length, temperature=temperature, seed=seed, **extra)  # validates
        longest = max(len(p) for p in prompts)
        check(self.context is None or longest + length <= self.context,
              f"prompt ({longest} tokens) + max_tokens {max_tokens}"
              f"{f' (rounded up to whole blocks: {length})' if length != max_tokens else ''} exceeds the model "
              f"context of {self.context} tokens; shorten the prompt or lower max_tokens")
        return Job(prompts, cfg, max_tokens, stop, stream, include_usage, seed)

    def steps(self, job: Job) -> Steps:
        """(the answer columns (B, max_tokens), forward passes so far, passes saved) after every step.
        The prompts are checked now, not at the first step."""
        if self.causal:
            return self._ar(job)
        from remask.sampling import generate_stream

        tok, n = self.tok, job.cfg.gen_length
        events = generate_stream(self.model, job.prompts, job.cfg, mask_id=tok.mask_id, eos_id=tok.eos_id,
                                 eot_id=getattr(tok, "eot_id", None))
        return ((e.canvas[:, e.canvas.shape[1] - n:][:, :job.max_tokens], e.n_forward, e.n_forward_saved)
                for e in events)

    def _ar(self, job: Job) -> Steps:
        from remask.sampling.ar import ar_stream

        steps = ar_stream(self.model, job.prompts, job.cfg, eos_id=self.tok.eos_id, mask_id=self.tok.mask_id)
        return ((s.tokens, s.n_forward, s.n_forward_saved) for s in steps)  # one step per token

    def pieces(self, job: Job, steps: Steps) -> Generator[tuple[int, str] | Result, None, None]:
        """Drive ``steps``: yield (row, newly final text) as each row's stable prefix grows, then the Result."""
        from remask.sampling import TextDeltas

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
        for i, t in enumerate(ids):
            if t in self.ends or t == self.tok.mask_id:
                return i, t in self.ends
        return len(ids), False


def _drain(pieces: Iterator[tuple[int, str] | Result]) -> Result:
    *_, result = pieces
    assert isinstance(result, Result)
    return result


# ----------------------------------------------------------------------------- app

def create_app(model: Any, tokenizer: Any, *, defaults: Any = None, model_name: str = "remask",
               random_seed: bool = False) -> Any:
    """A FastAPI app serving ``model`` (nothing is started; ``serve`` runs it under uvicorn).

    defaults: the SampleConfig requests start from (None: ``SampleConfig()``; for a causal model its
    gen_length, temperature and seed). random_seed: a request without ``seed`` draws a fresh one
    (else ``defaults.seed``, so equal requests get equal answers).
    """
    _need("fastapi")
    from fastapi import Body, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    from remask import __version__
    from remask.sampling import SampleConfig

    engine = Engine(model, tokenizer, defaults if defaults is not None else SampleConfig(), random_seed=random_seed)
    lock = asyncio.Lock()  # one model: one generation (or stream step) at a time
    started = int(time.time())
    app = FastAPI(title="remask", version=__version__, description="OpenAI-compatible completions from a remask checkpoint")
    app.state.engine = engine

    def error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status)

    @app.exception_handler(RemaskError)
    async def _remask_error(request: Any, exc: RemaskError) -> Any:
        return error(400, http_message(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})")
        return error(400, "the request body must be a JSON object")

    @app.exception_handler(HTTPException)
    async def _http(request: Any, exc: HTTPException) -> Any:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Any, exc: Exception) -> Any:  # logged by the server; no traceback to the client
        return error(500, "internal server error; see the server log", "server_error")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "busy": lock.locked()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started,
                                            "owned_by": "remask", "max_model_len": engine.context,
                                            "sampler": "ar" if engine.causal else "llada"}]}

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008 (FastAPI's idiom)
        return await respond(engine.job(body, engine.encode_prompts(body.get("prompt"))), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        return await respond(engine.job(body, [engine.encode_chat(body.get("messages"))]), chat=True)

    async def respond(job: Job, chat: bool) -> Any:
        steps = engine.steps(job)  # checks the prompts before any response starts
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": model_name, "seed": job.seed}
        if job.stream:
            return StreamingResponse(stream(job, steps, chat, head), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        async with lock:
            result = await run_in_threadpool(_drain, engine.pieces(job, steps))
        choices = [{"index": r, "message": {"role": "assistant", "content": text}} if chat else
                   {"index": r, "text": text, "logprobs": None} for r, text in enumerate(result.texts)]
        for c, finish in zip(choices, result.finish):
            c["finish_reason"] = finish
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                "usage": usage(job, result)}

    async def stream(job: Job, steps: Steps, chat: bool, head: dict[str, Any]) -> Any:
        def chunk(r: int, text: str | None, finish: str | None = None) -> str:
            if chat:
                delta = {} if text is None else {"content": text} if r >= 0 else {"role": "assistant", "content": ""}
                choice = {"index": max(r, 0), "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": r, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = {**head, "object": "chat.completion.chunk" if chat else "text_completion", "choices": [choice]}
            return f"data: {json.dumps(obj)}\n\n"

        pieces = engine.pieces(job, steps)
        try:
            if chat:
                yield chunk(-1, "")
            while True:
                async with lock:  # per step, never across a yield: a client that stops reading holds nothing
                    item = await run_in_threadpool(next, pieces, None)
                if item is None:
                    break
                if isinstance(item, Result):
                    for r, finish in enumerate(item.finish):
                        yield chunk(r, None, finish)
                    if job.include_usage:
                        obj = {**head, "object": "chat.completion.chunk" if chat else "text_completion",
                               "choices": [], "usage": usage(job, item)}
                        yield f"data: {json.dumps(obj)}\n\n"
                else:
                    yield chunk(*item)
        except RemaskError as e:  # the headers are sent: report in the stream
            yield f"data: {json.dumps({'error': {'message': http_message(str(e)), 'type': 'invalid_request_error'}})}\n\n"
        except Exception:
            log.exception("generation failed")
            yield f"data: {json.dumps({'error': {'message': 'internal server error', 'type': 'server_error'}})}\n\n"
        finally:
            pieces.close()
        yield "data: [DONE]\n\n"

    return app


def usage(job: Job, result: Result) -> dict[str, int]:
    prompt, completion = sum(len(p) for p in job.prompts), sum(result.completion_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "forward_passes": result.n_forward, "forward_passes_saved": result.n_forward_saved}


def serve(ckpt: str | Path, host: str = "127.0.0.1", port: int = 8000, *, defaults: Any = None,
          device: str = "auto", model_name: str | None = None, random_seed: bool = True,
          log_level: str = "info") -> None:
    """Load a checkpoint and serve it with uvicorn until interrupted (``remask serve``)."""
    from remask.train.checkpoint import load_model, resolve_checkpoint
    from remask.train.distributed import pick_device

    _need("fastapi")
    uvicorn = _need("uvicorn")
    check(0 < port < 65536, f"--port must be in 1..65535, got {port}")
    path = resolve_checkpoint(ckpt)
    model, tok = load_model(path, pick_device(device))
    name = model_name or (path.parent.name if path.name == "checkpoint" else path.name)
    app = create_app(model, tok, defaults=defaults, model_name=name, random_seed=random_seed)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


# ----------------------------------------------------------------------------- CLI

def add_args(p: argparse.ArgumentParser) -> None:
    from remask.cli import add_sampler_args

    add_sampler_args(p, prompt=False)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="the model id in responses (default: the run's name)")
    p.set_defaults(seed=None)  # without --seed, each request that sends no seed draws a fresh one


def run(args: argparse.Namespace) -> int:
    from remask.cli import sample_config

    check(not args.show_steps, "--show-steps draws in a terminal; remask serve has none, drop it")
    fixed = args.seed is not None
    defaults = sample_config(argparse.Namespace(**{**vars(args), "seed": args.seed if fixed else 0}))
    if args.json:
        print(json.dumps({"url": f"http://{args.host}:{args.port}", "ckpt": str(args.ckpt)}), flush=True)
    serve(args.ckpt, args.host, args.port, defaults=defaults, device=args.device, model_name=args.model_name,
          random_seed=not fixed, log_level="warning" if args.json else "info")
    return 0
