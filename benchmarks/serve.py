"""Serving: requests/s, time to first token and tokens/s at 1, 8 and 32 concurrent clients, batched vs one at a time.

    python benchmarks/serve.py                      # trains a small MDM (~60 s), then ~3 min of load (2 cores)
    python benchmarks/serve.py --ckpt runs/mdm      # serve an existing checkpoint instead
    python benchmarks/serve.py --cache none         # only exact decoding (default: none, then dual)

1. A small masked diffusion model (by default d_model 128, 4 layers, byte tokenizer, 128-token
   context) trained for ``--train-seconds`` on remask's built-in corpus with the Python API
   (``remask.train.train``).
2. For each ``--cache`` mode, two ``remask serve`` processes on loopback: one batching
   (``--max-batch-size 32``) and one answering one request at a time (``--max-batch-size 1``);
   same checkpoint, same sampler settings (max_tokens 64, blocks of 32, one token per step,
   temperature 0), ``--threads`` torch threads each (1: a second core is left to the clients).
3. For 1, 8 and 32 concurrent clients, each mode in turn: every client sends streamed
   completions one after another (16 for one client, 4 each of 8, 2 each of 32) over prompts of
   different lengths. Measured at the client: requests/s and answer tokens/s over the wall time
   of the round, time to first token (first non-empty text chunk) per request. The ratio is
   batched / one at a time, both measured in the same run under the same load.
4. Every batched answer is checked against the one-at-a-time answer for the same prompt (temperature
   0 without a cache: token for token; with ``--cache`` equal up to float rounding, so not checked).

The machine may be shared: the load average before and after is reported with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common import RESULTS_DIR, add_model_args, command_line, date, machine, publish, table, work_dir

PROMPTS = ["The", "Once upon a time, there was", "To be, or not to be: that is the question", "In the beginning",
           "It was the best of times, it was the worst of times, it was", "Call me", "The quick brown fox jumps over",
           "All happy families are alike; every"]
PER_CLIENT = {1: 16, 8: 4, 32: 2}  # concurrent clients -> requests each sends, one after another
MODES = {"one at a time": 1, "batched": 32}  # name -> --max-batch-size


def train_model(out: Path, args: argparse.Namespace) -> Path:
    """A small MDM trained for ``--train-seconds`` on the built-in corpus -> its run directory."""
    from remask.config import ModelConfig, RunConfig, TrainConfig
    from remask.train import train

    cfg = RunConfig(model=ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head, max_seq_len=128),
                    train=TrainConfig(batch_size=16, seq_len=96, max_steps=100_000, time_budget=args.train_seconds,
                                      lr_clock="time", lr=3e-3, warmup_steps=20, eval_interval=0, eval_batches=2,
                                      ckpt_interval=0, log_interval=50, samples=0, progress=False, device="cpu"))
    result = train(cfg, out)
    print(f"trained {result.step} steps in {result.elapsed:.0f} s, validation loss {result.val_loss:.3f}", flush=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(ckpt: Path, batch: int, cache: str, args: argparse.Namespace) -> Iterator[str]:
    """``remask serve`` in its own process -> its base URL, once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "remask", "serve", "--ckpt", str(ckpt), "--port", str(port), "--device", "cpu",
           "--gen-length", "64", "--block-length", "32", "--seed", "0", "--cache", cache,
           "--max-batch-size", str(batch), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"error: the server did not start ({' '.join(cmd)})")
            time.sleep(0.2)
        httpx.post(url + "/v1/completions", json={"prompt": "warm", "max_tokens": 64}, timeout=600)  # first-call costs
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@dataclass
class Round:
    cache: str
    clients: int
    mode: str
    wall: float = 0.0
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    texts: dict[str, str] = field(default_factory=dict)  # prompt -> answer (the last one seen)

    @property
    def requests(self) -> int:
        return len(self.ttft)


async def one_request(http: httpx.AsyncClient, url: str, prompt: str, result: Round) -> None:
    body = {"prompt": prompt, "max_tokens": 64, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start, first, text = time.perf_counter(), None, []
    async with http.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"error: {r.status_code} {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                result.tokens += chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice["text"] and first is None:
                    first = time.perf_counter()
                text.append(choice["text"])
    end = time.perf_counter()
    result.ttft.append((first or end) - start)
    result.texts[prompt] = "".join(text)


async def load(url: str, cache: str, clients: int, mode: str) -> Round:
    """``clients`` clients at once, each sending its requests one after another."""
    result, per_client = Round(cache, clients, mode), PER_CLIENT[clients]
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        async def client(c: int) -> None:
            for k in range(per_client):
                await one_request(http, url, PROMPTS[(c + k) % len(PROMPTS)], result)

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        result.wall = time.perf_counter() - start
    return result


def batch_totals(url: str) -> tuple[float, float]:
    """(rows, batches) the server has generated so far, from its /metrics."""
    text = httpx.get(url + "/metrics").text
    value = {m[0]: float(m[1]) for m in re.findall(r"^(remask_batch_size_(?:sum|count)) (\S+)$", text, re.M)}
    return value["remask_batch_size_sum"], value["remask_batch_size_count"]


def report(rounds: list[Round], batches: dict[tuple[str, int, str], float], args: argparse.Namespace,
           loads: list[float], total: float, identical: bool | None) -> str:
    base = {(r.cache, r.clients): r for r in rounds if r.mode == "one at a time"}
    rows = []
    for r in rounds:
        b, ttft = base[r.cache, r.clients], sorted(r.ttft)
        rows.append([r.cache, r.clients, r.mode, r.requests, f"{r.wall:.1f}", f"{r.requests / r.wall:.2f}",
                     f"{1000 * statistics.median(ttft):.0f}", f"{1000 * ttft[int(0.9 * (len(ttft) - 1))]:.0f}",
                     f"{r.tokens / r.wall:.0f}", f"{(r.requests / r.wall) / (b.requests / b.wall):.2f}x",
                     f"{batches[r.cache, r.clients, r.mode]:.1f}"])
    head = ["cache", "clients", "mode", "requests", "wall s", "req/s", "TTFT p50 ms", "TTFT p90 ms", "tok/s",
            "req/s vs one at a time", "mean batch"]
    return (f"# remask serve: batched vs one at a time\n\n{table(head, rows)}\n\n"
            f"Model: d_model {args.d_model}, {args.n_layer} layers, byte tokenizer. Requests: max_tokens 64, blocks "
            f"of 32, 64 steps (one token each), temperature 0; {args.threads} torch thread(s) per server; streamed, "
            "measured at the client.\n"
            "Batched answers equal the one-at-a-time answers without a cache: "
            f"{'not measured' if identical is None else 'yes, token for token' if identical else 'NO'}"
            " (with a cache they may differ by float rounding; not checked).\n"
            f"Load average (1 min) at the start of each cache mode and at the end: "
            f"{' / '.join(f'{x:.2f}' for x in loads)}\n\n"
            f"Command: `{command_line()}`\nDate: {date()}\nMachine: {machine()}\nTotal wall time: {total:.0f} s\n")


def measure(ckpt: Path, cache: str, args: argparse.Namespace, batches: dict) -> list[Round]:
    """Every client count against both servers of one cache mode."""
    rounds = []
    with ExitStack() as stack:
        urls = {mode: stack.enter_context(server(ckpt, batch, cache, args)) for mode, batch in MODES.items()}
        for clients in PER_CLIENT:
            for mode, url in urls.items():
                before = batch_totals(url)
                rounds.append(r := asyncio.run(load(url, cache, clients, mode)))
                rows, count = (a - b for a, b in zip(batch_totals(url), before))
                batches[cache, clients, mode] = rows / max(count, 1)
                print(f"cache {cache}, {clients:>2} clients, {mode}: {r.requests / r.wall:.2f} req/s, mean batch "
                      f"{batches[cache, clients, mode]:.1f}", flush=True)
    return rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, help="serve this checkpoint (default: train one)")
    ap.add_argument("--train-seconds", type=float, default=60.0)
    add_model_args(ap)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    ap.add_argument("--cache", nargs="+", default=["none", "dual"], choices=("none", "prefix", "dual"))
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the trained run here (default: a temp dir)")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR / "serve.md", help="results file ('-': print only)")
    args = ap.parse_args()
    start = time.perf_counter()
    rounds: list[Round] = []
    batches: dict[tuple[str, int, str], float] = {}
    loads = []
    with work_dir(args.work_dir, "remask-serve-bench-") as work:
        ckpt = args.ckpt or train_model(work / "mdm", args)
        for cache in args.cache:
            loads.append(os.getloadavg()[0])
            rounds += measure(ckpt, cache, args, batches)
        loads.append(os.getloadavg()[0])
    alone = {p: t for r in rounds if r.mode == "one at a time" and r.cache == "none" for p, t in r.texts.items()}
    same = all(t == alone[p] for r in rounds if r.mode == "batched" and r.cache == "none" for p, t in r.texts.items())
    publish(report(rounds, batches, args, loads, time.perf_counter() - start, same if alone else None), args.results)


if __name__ == "__main__":
    main()
