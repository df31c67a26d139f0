"""remask serve: an OpenAI-compatible HTTP server for one checkpoint, diffusion (LLaDA) or AR.

    remask serve --ckpt runs/chat --gen-length 64 --block-length 32     # http://127.0.0.1:8000
    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 64}'

GET /health, GET /v1/models, GET /metrics (Prometheus), POST /v1/completions (``prompt``: a
string, a list of strings or token ids) and POST /v1/chat/completions (``messages`` rendered with
the checkpoint's chat template, as ``generate --chat`` does). Requests take OpenAI's fields
(max_tokens, n, temperature, seed, stop, stream, stream_options.include_usage; top_k / top_p for
AR checkpoints) and remask's sampler settings under their ``SampleConfig`` names (steps,
block_length, remasking, threshold, cache, cfg_scale, remask_committed, ...); the server's flags
are the defaults. A diffusion model denoises whole blocks, so ``max_tokens`` is rounded up to a
whole number of blocks and the answer cut at ``max_tokens``; without ``steps`` a request keeps the
server's steps per token. ``usage`` also counts the forward passes (``forward_passes``, those of
the batch the request ran in). ``stream_steps`` streams every denoising step too (a viewer's feed);
``pins`` fixes words at answer positions and lets a diffusion model write around them (infilling).
GET / is the denoising viewer: a page that draws those steps, offline (its files ship in the package).

The modules, one concern each:

    requests    typed request fields, the request schema, ``Job``
    engine      ``Engine``: prompts and settings -> jobs; a batch of jobs -> text (``StopCut``)
    batching    the queue and the worker thread that generates compatible requests as one batch
    limits      ``ServerConfig`` (limits, keys, served name) and the body-size / API-key middleware
    metrics     GET /metrics: per-app Prometheus registry and the request-counting middleware
    errors      OpenAI-shaped error bodies for every route
    pins        words pinned at answer positions: parsing, and the reverse process around them
    page        GET / and /static: the denoising viewer (``static/``: plain HTML, CSS, JavaScript)
    app         ``create_app`` (the FastAPI app) and ``serve`` (uvicorn)

FastAPI, uvicorn and prometheus-client (the ``serve`` extra) are imported only when an app is built.
"""

from remask.serve.app import MISSING_EXTRA, create_app, serve, usage
from remask.serve.batching import Busy, Scheduler, Ticket, batch_key
from remask.serve.engine import Engine, Result, StopCut
from remask.serve.errors import ApiError, http_message
from remask.serve.limits import KEY_ENV, ServerConfig
from remask.serve.requests import REQUEST_FIELDS, SERVER_ONLY, Job, json_kind, request_schema

__all__ = [
    "KEY_ENV",
    "MISSING_EXTRA",
    "REQUEST_FIELDS",
    "SERVER_ONLY",
    "ApiError",
    "Busy",
    "Engine",
    "Job",
    "Result",
    "Scheduler",
    "ServerConfig",
    "StopCut",
    "Ticket",
    "batch_key",
    "create_app",
    "http_message",
    "json_kind",
    "request_schema",
    "serve",
    "usage",
]
