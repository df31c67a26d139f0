"""`remask serve`: an OpenAI-compatible HTTP server for one checkpoint (``remask.serve``)."""

from __future__ import annotations

import argparse
import json

from remask.commands.flags import add_sampler_args, field_values
from remask.sampling.config import SAMPLER_FIELDS
from remask.serve import serve


def add_args(p: argparse.ArgumentParser) -> None:
    add_sampler_args(p, show_steps=False)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="the model id in responses (default: the run's name)")
    p.set_defaults(seed=None)  # without --seed, each request that sends no seed draws a fresh one


def run(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({"url": f"http://{args.host}:{args.port}", "ckpt": str(args.ckpt)}), flush=True)
    serve(args.ckpt, args.host, args.port, settings=field_values(args, SAMPLER_FIELDS), device=args.device,
          model_name=args.model_name, random_seed=args.seed is None, log_level="warning" if args.json else "info")
    return 0
