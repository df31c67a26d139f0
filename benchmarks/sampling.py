"""Fast sampling: tokens/s, forward passes and sample quality of every rule, threshold decoding and caches.

    python benchmarks/sampling.py                          # trains both models, then samples (~10 min, 2 cores)
    python benchmarks/sampling.py --ckpt runs/mdm --judge runs/ar   # reuse trained checkpoints
    python benchmarks/sampling.py --device cuda --dtype bfloat16    # GPU (see gpu_sampling.sh)
    python benchmarks/sampling.py ... --sudoku DIR/mdm-sudoku   # + task accuracy (planning.py --work-dir DIR)

1. Data: char-level tinyshakespeare from the dataset root (``--data DIR``, else ``$REMASK_DATA``,
   else ``../shared/data`` when present, else remask's built-in corpus); byte tokenizer; the last
   10% held out. ``--sudoku`` also reads the Sudoku test set, sudoku_countdown/, from that root.
2. Two models trained AT THE SAME TIME in two processes (one thread each): the masked diffusion
   model and an AR judge (same data, causal) that scores samples. Both train on 256-token windows
   (a CPU cannot train 1088-token windows in minutes); the MDM's max_seq_len is prompt + 1024,
   so at gen_length 1024 it runs past its trained length (rotary positions extrapolate, and every
   setting, the reference included, sees the same canvas). ``--train-only`` trains and keeps the
   checkpoints in ``--work-dir`` for a later ``--ckpt/--judge`` run.
3. For gen_length 256 and 1024, one prompt at a time (batch 1), temperature 0, early exit off:
   the LLaDA reference (low_confidence, steps = gen_length, block 32, no cache) against every
   other rule, threshold 0.9 parallel decoding, the prefix and dual caches, and cache + threshold.
   Wall time per configuration gives tokens/s; speedups are ratios to the reference measured
   in the same run.
4. Quality: perplexity of the generated continuation under the AR judge (sliding window over
   prompt + sample, only sample characters scored), and the unigram entropy of the sample's
   characters (repetition lowers it). Both as ratios to the reference; the real continuation
   of each prompt is scored too, for scale.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from common import (
    SHAKESPEARE,
    SUDOKU_COUNTDOWN,
    add_data_arg,
    add_model_args,
    add_worker_args,
    command_line,
    dataset,
    date,
    machine,
    publish,
    run_workers,
    steady_rate,
    table,
    work_dir,
)
from remask.config import ModelConfig, RunConfig, TrainConfig

BLOCK = 32
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("reference (LLaDA)", {}),
    ("margin", {"remasking": "margin"}),
    ("entropy", {"remasking": "entropy"}),
    ("random", {"remasking": "random"}),
    ("threshold 0.9", {"remasking": "threshold", "threshold": 0.9}),
    ("prefix cache", {"cache": "prefix"}),
    ("dual cache", {"cache": "dual"}),
    ("prefix cache + threshold 0.9", {"cache": "prefix", "remasking": "threshold", "threshold": 0.9}),
    ("dual cache + threshold 0.9", {"cache": "dual", "remasking": "threshold", "threshold": 0.9}),
    # A small model is rarely 90% sure: lower thresholds show the speed/quality trade-off.
    ("dual cache + threshold 0.7", {"cache": "dual", "remasking": "threshold", "threshold": 0.7}),
    ("dual cache + threshold 0.5", {"cache": "dual", "remasking": "threshold", "threshold": 0.5}),
    ("dual cache + threshold 0.3", {"cache": "dual", "remasking": "threshold", "threshold": 0.3}),
    ("dual cache, refresh every 8 steps", {"cache": "dual", "cache_refresh": 8}),
    ("ReMDM re-masking (k 1, below 0.5)", {"remask_committed": 1, "remask_below": 0.5}),
]
# The Sudoku task model (planning.py --work-dir DIR keeps it as DIR/mdm-sudoku): the answer is one
# block of 16 digits + end of turn + EOS, so the caches hold the prompt and the threshold rule may
# commit several cells per step. Reference: planning.py's decoding (low_confidence, one cell per step).
TASK_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("reference (LLaDA)", {}),
    ("margin", {"remasking": "margin"}),
    ("entropy", {"remasking": "entropy"}),
    ("random", {"remasking": "random"}),
    *[(f"threshold {tau}", {"remasking": "threshold", "threshold": tau}) for tau in (0.99, 0.95, 0.9, 0.7, 0.5)],
    ("prefix cache", {"cache": "prefix"}),
    ("dual cache + threshold 0.99", {"cache": "dual", "remasking": "threshold", "threshold": 0.99}),
    ("dual cache + threshold 0.9", {"cache": "dual", "remasking": "threshold", "threshold": 0.9}),
    ("prefix cache, refresh every 3 steps", {"cache": "prefix", "cache_refresh": 3}),
    ("dual cache + threshold 0.99, refresh every 2", {"cache": "dual", "cache_refresh": 2, "remasking": "threshold",
                                                      "threshold": 0.99}),
    ("ReMDM re-masking (k 1, below 0.5)", {"remask_committed": 1, "remask_below": 0.5}),
]
# Same cost as the reference: skipped at 1024 unless --rules-at-1024.
RULE_ONLY = {"margin", "entropy", "random", "ReMDM re-masking (k 1, below 0.5)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, help="a trained MDM checkpoint (skip training; needs max_seq_len >= prompt + gen)")
    ap.add_argument("--judge", type=Path, help="a trained AR checkpoint on the same data (skip training)")
    add_data_arg(ap, "tinyshakespeare/ and, for --sudoku, sudoku_countdown/", fallback="the built-in corpus")
    ap.add_argument("--train-seconds", type=float, default=150.0, help="training budget of each model")
    add_model_args(ap, d_model=128, n_layer=4, n_head=4)
    ap.add_argument("--batch-size", type=int, default=8, help="training batch of each model")
    ap.add_argument("--seq-len", type=int, default=256, help="training window of each model")
    ap.add_argument("--train-only", action="store_true", help="train, keep the checkpoints in --work-dir, stop")
    ap.add_argument("--gen-lengths", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--prompt-length", type=int, default=64)
    ap.add_argument("--prompts", type=int, nargs="+", default=[3, 1], help="prompts per gen length (batch 1 each)")
    ap.add_argument("--configs", nargs="+", default=None, help="only these configuration names (default: all)")
    ap.add_argument("--rules-at-1024", action="store_true", help="also time margin/entropy/random at long lengths")
    ap.add_argument("--sudoku", type=Path, help="also score every setting on the 500 4x4 Sudoku test puzzles with "
                                                "this task MDM (planning.py --work-dir DIR: DIR/mdm-sudoku)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward (warm-up run not timed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--note", default="", help="a line added to the results header (e.g. 'GPU run')")
    add_worker_args(ap, "sampling")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- training (two processes)

def run_config(args: argparse.Namespace, objective: str, max_steps: int, budget: float | None) -> RunConfig:
    limit = args.prompt_length + max(args.gen_lengths) if objective == "mdm" else args.seq_len
    model = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head, max_seq_len=limit,
                        causal=objective == "ar")
    train = TrainConfig(objective=objective, seed=args.seed, batch_size=args.batch_size, seq_len=args.seq_len,
                        max_steps=max_steps, time_budget=budget, lr=3e-3, warmup_steps=30, eval_interval=0,
                        eval_batches=4, eval_mc=1, ckpt_interval=0, log_interval=5, progress=False, samples=0,
                        device=args.device, dtype="auto")
    return RunConfig(model=model, train=train)


def worker(args: argparse.Namespace) -> None:
    """Train one model: a short calibration sizes the cosine schedule to the time budget."""
    from remask.train.loop import train

    torch.set_num_threads(args.threads)
    work, obj = args.work_dir, args.worker
    calib = run_config(args, obj, max_steps=10**6, budget=min(15.0, args.train_seconds / 4))
    c = train(calib, work / obj / "calibrate", data=work / "data")
    rate = steady_rate(work / obj / "calibrate" / "metrics.jsonl", c.step, c.elapsed)
    max_steps = max(50, int(rate * args.train_seconds * 0.95))
    shutil.rmtree(work / obj / "calibrate", ignore_errors=True)
    res = train(run_config(args, obj, max_steps=max_steps, budget=args.train_seconds), work / obj / "run",
                data=work / "data")
    (work / obj / "result.json").write_text(json.dumps({**res.to_json(), "max_steps": max_steps,
                                                        "seq_len": args.seq_len, "batch_size": args.batch_size}))


# ----------------------------------------------------------------------------- quality

@torch.inference_mode()
def judge_nll(judge: torch.nn.Module, ids: list[int], first: int) -> tuple[float, int]:
    """Sum of the AR judge's NLL (nats) over ids[first:], each token seeing up to a window of context."""
    window = judge.cfg.max_seq_len
    device = next(judge.parameters()).device
    x = torch.tensor(ids, device=device)
    total, count, pos = 0.0, 0, max(first, 1)
    while pos < len(ids):
        lo = max(0, pos - window // 2)  # at least half a window of context for every scored token
        hi = min(len(ids), lo + window)
        logp = judge(x[None, lo:hi]).float().log_softmax(-1)[0]  # (hi - lo, V)
        tgt = x[pos:hi]
        total -= float(logp[pos - lo - 1:hi - lo - 1].gather(-1, tgt[:, None]).sum())
        count += hi - pos
        pos = hi
    return total, count


def unigram_entropy(ids: list[int]) -> float:
    """Bits per character of the sample's own character distribution."""
    counts = Counter(ids)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


# ----------------------------------------------------------------------------- sampling

def prompts_from(val: Any, n: int, prompt_len: int, gen: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, real continuation) pairs at evenly spaced offsets of the validation tokens."""
    span = prompt_len + gen
    starts = [int(i * (len(val) - span) / max(n, 1)) for i in range(n)]
    return [(val.get(s, prompt_len).tolist(), val.get(s + prompt_len, gen).tolist()) for s in starts]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """The seconds spent inside ``with clock():``, summed: wall time (after synchronising a GPU) and
    this process's CPU time. ``seconds`` is the one speeds are computed from."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.wall, self.cpu = device, 0.0, 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        sync(self.device)
        self.wall += time.perf_counter() - t0
        self.cpu += time.process_time() - c0

    @property
    def seconds(self) -> float:
        # On a shared CPU, wall time swings with other processes' load; with one thread, CPU time of
        # this process does not, so CPU speedups come from it (GPU: wall time after synchronising).
        return self.cpu if self.device.type == "cpu" else self.wall


def run_setting(model: Any, judge: Any, tok: Any, pairs: list[tuple[list[int], list[int]]], gen: int,
                overrides: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from remask.sampling import SampleConfig, generate

    cfg = SampleConfig(gen_length=gen, steps=gen, block_length=BLOCK, temperature=0.0, early_stop=False,
                       dtype=args.dtype, compile=args.compile, **overrides)
    device = next(model.parameters()).device
    if args.compile:  # compile (and warm up every shape) outside the timed region
        generate(model, [pairs[0][0]], cfg, mask_id=tok.mask_id, eos_id=tok.eos_id)
    clock, forwards, nll, count, ent, samples = Clock(device), 0, 0.0, 0, 0.0, []
    for prompt, _ in pairs:
        with clock():
            out = generate(model, [prompt], cfg, mask_id=tok.mask_id, eos_id=tok.eos_id)
        forwards += out.n_forward
        sample = out.tokens[0].tolist()
        s, c = judge_nll(judge, prompt + sample, len(prompt))
        nll, count, ent = nll + s, count + c, ent + unigram_entropy(sample)
        samples.append(tok.decode(sample, skip_special_tokens=True))
    return {"tok_s": len(pairs) * gen / clock.seconds, "wall_tok_s": len(pairs) * gen / clock.wall,
            "seconds": clock.wall,
            "forwards": forwards / len(pairs),
            "ppl": math.exp(nll / count), "entropy": ent / len(pairs), "sample": samples[0]}


def benchmark(args: argparse.Namespace, model: Any, judge: Any, tok: Any, val: Any) -> dict[int, list[dict[str, Any]]]:
    results: dict[int, list[dict[str, Any]]] = {}
    counts = (args.prompts + [args.prompts[-1]] * len(args.gen_lengths))[:len(args.gen_lengths)]
    for gen, n in zip(args.gen_lengths, counts):
        pairs = prompts_from(val, n, args.prompt_length, gen)
        real_nll = [judge_nll(judge, p + c, len(p)) for p, c in pairs]
        real = {"ppl": math.exp(sum(s for s, _ in real_nll) / sum(c for _, c in real_nll)),
                "entropy": sum(unigram_entropy(c) for _, c in pairs) / len(pairs)}
        rows = []
        for name, overrides in CONFIGS:
            if args.configs and name not in args.configs and name != CONFIGS[0][0]:
                continue
            if name in RULE_ONLY and gen > 256 and not args.rules_at_1024:
                continue
            r = run_setting(model, judge, tok, pairs, gen, overrides, args)
            rows.append({"name": name, **r})
            print(f"gen {gen} {name:30s} {r['tok_s']:9.1f} tok/s ({r['wall_tok_s']:.1f} wall)  "
                  f"{r['forwards']:7.1f} passes  "
                  f"ppl {r['ppl']:6.2f}  H {r['entropy']:.3f}  ({r['seconds']:.1f}s)", flush=True)
        results[gen] = [{"name": "real continuation (judge scale)", **real}, *rows]
    return results


def task_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Exact-solution accuracy, forward passes and tokens/s of every TASK_CONFIGS setting on the
    Sudoku test set, one puzzle at a time (so passes are per puzzle, as in the text table)."""
    import planning
    from remask.chat import prompt_ids
    from remask.checkpoint import load_model
    from remask.sampling import SampleConfig, generate

    model, tok = load_model(args.sudoku, args.device)
    items = planning.load_tests(dataset(args.data, SUDOKU_COUNTDOWN))["sudoku"]
    n = planning.TASKS["sudoku"]["answer"]
    prompts = [prompt_ids(tok, it["prompt"]) for it in items]
    device = next(model.parameters()).device
    rows = []
    for name, overrides in TASK_CONFIGS:
        cfg = SampleConfig(gen_length=n + 2, steps=n + 2, temperature=0.0, early_stop=False, dtype=args.dtype,
                           **overrides)
        clock, solved, forwards = Clock(device), 0, 0
        for prompt, item in zip(prompts, items):
            with clock():
                out = generate(model, [prompt], cfg, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id)
            forwards += out.n_forward
            solved += planning.score("sudoku", tok.decode(out.tokens[0, :n].tolist(), skip_special_tokens=True), item)
        rows.append({"name": name, "tok_s": len(items) * (n + 2) / clock.seconds, "forwards": forwards / len(items),
                     "accuracy": solved / len(items), "solved": solved, "n": len(items)})
        print(f"sudoku {name:30s} {rows[-1]['tok_s']:9.1f} tok/s  {rows[-1]['forwards']:5.2f} passes  "
              f"accuracy {rows[-1]['accuracy']:.3f}", flush=True)
    return rows


def task_report(rows: list[dict[str, Any]], ckpt: Path) -> str:
    ref = rows[0]
    body = [[r["name"], f"{r['tok_s']:,.1f}", f"{r['tok_s'] / ref['tok_s']:.2f}x", f"{r['forwards']:.2f}",
             f"{r['accuracy']:.3f} ({r['solved']}/{r['n']})", ratio(r["accuracy"], ref["accuracy"])] for r in rows]
    headers = ["setting", "tokens/s", "speedup", "forward passes / puzzle", "exact accuracy", "accuracy / ref"]
    return (f"## Task accuracy: 4x4 Sudoku\n\nThe Sudoku MDM of `benchmarks/planning.py` (`{ckpt}`), d1's 500 test "
            f"puzzles one at a time, answer = 16 digits + end of turn + EOS in one block, steps = 18, "
            f"temperature 0. Exact = a valid grid that keeps every given.\n\n{table(headers, body)}\n")


# ----------------------------------------------------------------------------- report

def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def report(args: argparse.Namespace, results: dict[int, list[dict[str, Any]]], info: dict[str, Any]) -> str:
    sections = []
    for gen, rows in results.items():
        real, ref = rows[0], rows[1]
        body = []
        for r in rows[1:]:
            body.append([r["name"], f"{r['tok_s']:,.1f}", f"{r['wall_tok_s']:,.1f}", f"{r['tok_s'] / ref['tok_s']:.2f}x",
                         f"{r['forwards']:.0f}",
                         f"{gen / r['forwards']:.2f}", f"{r['ppl']:.2f}", ratio(r["ppl"], ref["ppl"]),
                         f"{r['entropy']:.3f}", ratio(r["entropy"], ref["entropy"])])
        body.append([real["name"], "", "", "", "", "", f"{real['ppl']:.2f}", ratio(real["ppl"], ref["ppl"]),
                     f"{real['entropy']:.3f}", ratio(real["entropy"], ref["entropy"])])
        headers = ["setting", "tokens/s", "wall tokens/s", "speedup", "forward passes", "tokens/pass", "judge ppl", "ppl / ref",
                   "unigram H (bits)", "H / ref"]
        n = len(rows) - 1
        fastest = max(rows[1:], key=lambda r: r["tok_s"])
        within = [r for r in rows[1:] if r["ppl"] <= 1.05 * ref["ppl"]]  # the quality bound
        best = max(within, key=lambda r: r["tok_s"])  # the reference itself is always within
        samples = "\n\n".join(f"**{r['name']}**:\n\n```text\n{r['sample'][:300]}\n```" for r in rows[1:])
        sections.append(f"## gen_length {gen}\n\n{table(headers, body)}\n\n"
                        f"{n} settings; fastest: {fastest['name']}, {fastest['tok_s'] / ref['tok_s']:.2f}x the "
                        f"reference at judge perplexity ratio {ratio(fastest['ppl'], ref['ppl'])}; fastest within "
                        f"5% of the reference's perplexity: {best['name']}, {best['tok_s'] / ref['tok_s']:.2f}x.\n\n"
                        f"<details><summary>first sample of each setting (300 chars)</summary>\n\n{samples}\n\n"
                        f"</details>")
    return f"""# sampling

Fast sampling (issue 5): the LLaDA reference setting (low_confidence, steps = gen_length, block
{BLOCK}, no cache) against the other remasking rules, threshold parallel decoding, Fast-dLLM's
prefix and dual K/V caches, and cache + threshold. {args.note}

- command: `{command_line()}`
- date: {date()}
- machine: {machine()}, {args.threads} thread(s); device {args.device}, dtype {args.dtype}, compile {args.compile}
- MDM: {info['mdm']}
- AR judge: {info['judge']}
- data: {info['data']}
- decoding: one prompt at a time (batch 1) of {args.prompt_length} tokens from the validation split,
  temperature 0, early exit off. tokens/s = generated tokens / seconds of `generate`: on CPU the
  process's CPU seconds (one thread, so this is what an idle core gives; the shared machine's
  load makes wall time swing, shown as "wall tokens/s"), on GPU wall seconds after
  synchronising. speedup = tokens/s / the reference's, same run. Forward passes include the
  cheap cached-window passes (a dual-cache pass runs 32 columns, not the whole canvas).
- quality: judge ppl = exp(mean NLL per generated character) under the AR judge, each character
  seeing at least half the judge's window of context; unigram H = entropy of each sample's
  character histogram (bits), averaged. Ratios to the reference: the issue's goal is within 5%.
  The last row scores the real text that follows each prompt, for scale.

{chr(10).join(sections)}
"""


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(args.threads)
    from remask.checkpoint import load_model
    from remask.data.prepare import prepare
    from remask.data.shards import TokenData
    from remask.data.tokenizer import ByteTokenizer

    if args.train_only and args.work_dir is None:
        raise SystemExit("--train-only needs --work-dir (where the checkpoints stay)")
    text_file = dataset(args.data, SHAKESPEARE, optional=True)  # None: the built-in corpus
    if args.sudoku is not None:
        dataset(args.data, SUDOKU_COUNTDOWN)  # a missing test set ends here, before any training
    with work_dir(args.work_dir, "remask-sampling-") as work:
        inputs = [text_file] if text_file is not None else None  # None: the built-in corpus
        meta = prepare(inputs, work / "data", ByteTokenizer(), val_fraction=0.1)
        data_line = (f"{text_file.name if inputs else 'built-in corpus'}, byte tokens, "
                     f"{meta['splits']['train']['tokens']:,} train / {meta['splits']['val']['tokens']:,} val")
        trained: dict[str, dict[str, Any]] = {}
        if args.ckpt is None or args.judge is None:
            t0 = time.perf_counter()
            trained = run_workers(__file__, work, [*sys.argv[1:], "--work-dir", str(work)], threads=args.threads,
                                  result="{kind}/result.json")
            print(f"trained both models in {time.perf_counter() - t0:.0f}s: " + ", ".join(
                f"{o} {r['step']} steps val {r['val_loss']:.3f}" for o, r in trained.items()), flush=True)
            if args.train_only:
                print(f"checkpoints: {work / 'mdm' / 'run'} and {work / 'ar' / 'run'}")
                return
        model, tok = load_model(args.ckpt or work / "mdm" / "run", args.device)
        judge, _ = load_model(args.judge or work / "ar" / "run", args.device)
        need = args.prompt_length + max(args.gen_lengths)
        trained = trained or {o: json.loads(f.read_text()) for o, f in
                              (("mdm", args.ckpt.parent / "result.json"), ("ar", args.judge.parent / "result.json"))
                              if f.is_file()}
        if model.cfg.max_seq_len < need:
            raise SystemExit(f"--ckpt has max_seq_len {model.cfg.max_seq_len} < prompt + gen = {need}")

        def describe(m: Any, r: dict[str, Any] | None) -> str:
            c = m.cfg
            s = (f"d_model {c.d_model}, {c.n_layer} layers, {c.n_head} heads, max_seq_len {c.max_seq_len}, "
                 f"{m.num_params():,} parameters")
            return s + (f"; trained {r['step']} steps in {r['elapsed_s']:.0f}s on {r.get('seq_len', '?')}-token "
                        f"windows, val loss {r['val_loss']:.3f} nats/char" if r else "; given checkpoint")

        info = {"mdm": describe(model, trained.get("mdm")), "judge": describe(judge, trained.get("ar")),
                "data": data_line}
        results = benchmark(args, model, judge, tok, TokenData(work / "data", "val"))
    text = report(args, results, info)
    if args.sudoku is not None:
        text += "\n" + task_report(task_benchmark(args), args.sudoku)
    publish(text, args.results)


if __name__ == "__main__":
    main()
