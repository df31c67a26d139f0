"""`remask serve`: an OpenAI-compatible HTTP server for one checkpoint (``remask.serve``)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from remask.commands.flags import add_fields, add_sampler_args, field_values, sampler_settings
from remask.serve import ServerConfig, serve


def add_args(p: argparse.ArgumentParser) -> None:
    add_sampler_args(p, show_steps=False)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; "
                                                       "set --api-key then)")
    p.add_argument("--port", type=int, default=8000)
    add_fields(p.add_argument_group("server (limits, keys, name)"), ServerConfig)
    p.add_argument("--model-name", dest="served_model_name", help=argparse.SUPPRESS)  # the old name of the flag
    p.set_defaults(seed=None)  # without --seed, each request that sends no seed draws a fresh one


def run(args: argparse.Namespace) -> int:
    server = ServerConfig(**field_values(args, [f.name for f in dataclasses.fields(ServerConfig)]))
    if args.json:
        print(json.dumps({"url": f"http://{args.host}:{args.port}", "ckpt": str(args.ckpt)}), flush=True)
    serve(args.ckpt, args.host, args.port, settings=sampler_settings(args), device=args.device,
          random_seed=args.seed is None, log_level="warning" if args.json else "info", server=server)
    return 0
