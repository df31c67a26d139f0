"""Fast sampling: speed, forward passes and sample quality of every remasking rule, parallel rule and cache.

    python benchmarks/sampling.py                          # tinyshakespeare bytes: trains both models, samples
    python benchmarks/sampling.py --corpus tinystories --d-model 192 --n-head 6 --train-seconds 720 \
        --batches 1 8 --figure results/sampling-tinystories.png --results results/sampling-tinystories.md
    python benchmarks/sampling.py --ckpt runs/mdm --judge runs/ar/best   # reuse trained checkpoints
    python benchmarks/sampling.py --device cuda --dtype bfloat16    # GPU (see gpu_sampling.sh)
    python benchmarks/sampling.py ... --sudoku DIR/mdm-sudoku   # + task accuracy (planning.py --work-dir DIR)
    python benchmarks/sampling.py --gen-lengths 256 --json a.json ... & \
    python benchmarks/sampling.py --gen-lengths 1024 --json b.json ...   # two cores, then:
    python benchmarks/sampling.py --from-json a.json b.json --figure F.png   # one report, one figure

1. Data (``--corpus``), from the dataset root (``--data DIR``, else ``$REMASK_DATA``, else
   ``../shared/data`` when present): ``shakespeare``, char-level tinyshakespeare with the byte
   tokenizer (remask's built-in corpus when there is no dataset root); or ``tinystories``, the
   TinyStories train head, one story per document, with a byte-level BPE (``--vocab-size``)
   trained on the training stories (tinystories.py). 10% held out by prepare's split.
   ``--sudoku`` also reads the Sudoku test set, sudoku_countdown/, from that root.
2. Two models trained AT THE SAME TIME in two processes (one thread each, ``--train-seconds`` of
   wall clock with the learning rate on the clock, bf16 where the CPU has it, compiled blocks):
   the masked diffusion model and an AR judge (same data, causal) that scores samples, from its
   best validation (RUN/best). Both train on 256-token windows (a CPU cannot train 1088-token
   windows in minutes); the MDM's max_seq_len is prompt + 1024, so at gen_length 1024 it runs
   past its trained length (rotary positions extrapolate, and every setting, the reference
   included, sees the same canvas). ``--train-only`` trains and keeps the checkpoints in
   ``--work-dir`` for a later ``--ckpt/--judge`` run.
3. For each gen length and batch size (``--batches``: 1 = one prompt at a time, what one chat
   user feels; B = one batch of B prompts), temperature 0, early exit off (but in "+ early exit" settings): the LLaDA reference
   (low_confidence, steps = gen_length, block 32, no cache) against every other setting of
   ``CONFIGS`` (sampling_settings.py). CPU time per configuration gives tokens/s; speedups are ratios to the reference
   measured in the same run.
4. Quality (sample_quality.py): perplexity of each continuation under the AR judge, distinct word
   bigrams (repetition), whole-sentence endings of the story, and how often neighbours were
   committed by one pass and what that costs in judge NLL. The real continuation of each prompt is
   scored too, for scale. The report and figure come from sampling_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import sampling_report
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
    work_dir,
    write_atomic,
)
from remask.config import ModelConfig, RunConfig, TrainConfig
from sample_quality import Quality, commit_steps, judge_nll, story_of, unpadded
from sampling_settings import CONFIGS, RULE_ONLY, TASK_CONFIGS

BLOCK = 32
CORPORA = ("shakespeare", "tinystories")
VAL_FRACTION = 0.1  # held out by prepare's hash split (per story for tinystories)
CENSUS = (0.9, 0.7, 0.5)  # confidence levels of the "how sure is the model" census
EVAL_INTERVAL = 250  # training steps between validations (the judge is the AR's best, RUN/best)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, help="a trained MDM checkpoint (skip training; needs max_seq_len >= prompt + gen)")
    ap.add_argument("--judge", type=Path, help="a trained AR checkpoint on the same data (skip training)")
    add_data_arg(ap, "tinyshakespeare/ or tinystories/ and, for --sudoku, sudoku_countdown/",
                 fallback="the built-in corpus (shakespeare only)")
    ap.add_argument("--corpus", choices=CORPORA, default="shakespeare",
                    help="shakespeare: bytes of tinyshakespeare; tinystories: a BPE on TinyStories, one story per "
                         "document (see tinystories.py)")
    ap.add_argument("--vocab-size", type=int, default=2048, help="tinystories: the BPE's vocabulary")
    ap.add_argument("--train-seconds", type=float, default=150.0, help="training budget of each model")
    add_model_args(ap, d_model=128, n_layer=4, n_head=4)
    ap.add_argument("--batch-size", type=int, default=8, help="training batch of each model")
    ap.add_argument("--seq-len", type=int, default=256, help="training window of each model")
    ap.add_argument("--train-only", action="store_true", help="train, keep the checkpoints in --work-dir, stop")
    ap.add_argument("--gen-lengths", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--prompt-length", type=int, default=None,
                    help="prompt tokens (default: 64 bytes for shakespeare, 32 BPE tokens for tinystories)")
    ap.add_argument("--prompts", type=int, nargs="+", default=[3, 1], help="prompts per gen length (batch 1 each)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1],
                    help="batch sizes: 1 = --prompts prompts one at a time; B > 1 = one batch of B prompts")
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
    ap.add_argument("--json", type=Path, help="also save the measurements here (for --from-json)")
    ap.add_argument("--from-json", type=Path, nargs="+", help="no sampling: report (and --figure) the runs saved "
                                                               "by earlier --json runs, merged in the order given")
    ap.add_argument("--figure", type=Path, help="draw speedup against quality for every setting (matplotlib) here")
    add_worker_args(ap, "sampling")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- training (two processes)

def run_config(args: argparse.Namespace, objective: str) -> RunConfig:
    """Trains for ``--train-seconds`` with the learning-rate schedule on the wall clock (``lr_clock=time``)."""
    limit = args.prompt_length + max(args.gen_lengths) if objective == "mdm" else args.seq_len
    model = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head, max_seq_len=limit,
                        causal=objective == "ar")
    train = TrainConfig(objective=objective, seed=args.seed, batch_size=args.batch_size, seq_len=args.seq_len,
                        max_steps=10**7, time_budget=args.train_seconds, lr_clock="time", lr=3e-3, warmup_steps=30,
                        eval_interval=EVAL_INTERVAL, eval_batches=8, eval_mc=1,
                        early_stop_patience=10**6,  # never stops; keeps the best validation in RUN/best
                        ckpt_interval=0, log_interval=5, progress=False, samples=0, device=args.device,
                        dtype="auto", compile=True, t_sampling="stratified" if objective == "mdm" else "iid")
    return RunConfig(model=model, train=train)


def worker(args: argparse.Namespace) -> None:
    """Train one model for the budget (the recipe of BENCHMARKS.md's "Training recipe": bf16 where the CPU has
    it, compiled blocks, stratified t for the MDM)."""
    from remask.train.loop import train

    torch.set_num_threads(args.threads)
    res = train(run_config(args, args.worker), args.work_dir / args.worker / "run", data=args.work_dir / "data")
    (args.work_dir / args.worker / "result.json").write_text(json.dumps(
        {**res.to_json(), "seq_len": args.seq_len, "batch_size": args.batch_size}))


# ----------------------------------------------------------------------------- sampling

def prompts_from(val: Any, n: int, prompt_len: int, gen: int, story_eos: int | None = None
                 ) -> list[tuple[list[int], list[int]]]:
    """(prompt, real continuation) pairs from the validation tokens: at evenly spaced offsets, or with
    ``story_eos``, at the starts of evenly spaced held-out stories (the token after an EOS)."""
    span = prompt_len + gen
    if story_eos is None:
        starts = [int(i * (len(val) - span) / max(n, 1)) for i in range(n)]
    else:
        ids = val.get(0, len(val) - span)
        heads = [0, *((ids == story_eos).nonzero()[0] + 1).tolist()]  # story starts that leave a whole span
        starts = [heads[int(i * len(heads) / n)] for i in range(n)]
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
                overrides: dict[str, Any], args: argparse.Namespace, *, batch: bool) -> dict[str, Any]:
    """Generate after every prompt (one at a time, or all as one batch) -> speed and quality figures."""
    from remask.sampling import SampleConfig, generate

    cfg = SampleConfig(**{"gen_length": gen, "steps": gen, "block_length": BLOCK, "temperature": 0.0,
                          "early_stop": False, "dtype": args.dtype, "compile": args.compile, **overrides})
    device = next(model.parameters()).device
    groups = [pairs] if batch else [[p] for p in pairs]
    if args.compile:  # compile (and warm up every shape) outside the timed region
        generate(model, [p for p, _ in groups[0]], cfg, mask_id=tok.mask_id, eos_id=tok.eos_id)
    clock, forwards, quality, samples, sure = Clock(device), 0, Quality(), [], []
    for group in groups:
        events: list[Any] = []
        with clock():
            out = generate(model, [p for p, _ in group], cfg, mask_id=tok.mask_id, eos_id=tok.eos_id,
                           callback=events.append)
        forwards += out.n_forward
        sure += [e.confidence for e in events]  # (B, L) each: the block's masked candidates, -inf elsewhere
        for r, (prompt, _) in enumerate(group):
            sample = out.tokens[r].tolist()
            scored = unpadded(sample, tok.eos_id)  # a story that ended: its text and EOS, not the padding
            quality.add(judge_nll(judge, prompt + scored, len(prompt)),
                        commit_steps(events, out.canvas.shape[1] - gen, gen, r)[:len(scored)], sample,
                        tok.decode(story_of(sample, tok.eos_id)), tok.eos_id)
            samples.append(tok.decode(sample, skip_special_tokens=True))
    return {"tok_s": len(pairs) * gen / clock.seconds, "wall_tok_s": len(pairs) * gen / clock.wall,
            "seconds": clock.wall, "forwards": forwards / len(groups),
            "tokens_per_pass": gen * len(groups) / forwards, **quality.figures(), **census(sure),
            "sample": samples[0]}


def census(scores: list[torch.Tensor]) -> dict[str, float]:
    """How sure the model is, step by step: the mean top confidence among the candidates, and the share of
    (step, row) pairs with at least two candidates at or above each threshold (what a threshold rule needs
    to commit more than one token)."""
    top, rows = [], {tau: 0 for tau in CENSUS}
    n = 0
    for c in scores:  # (B, L)
        live = (c > float("-inf")).any(-1)  # (B,) rows with candidates at this step
        top += c.amax(-1)[live].tolist()
        n += int(live.sum())
        for tau in CENSUS:
            rows[tau] += int(((c >= tau).sum(-1) >= 2)[live].sum())
    return {"top_confidence": sum(top) / max(len(top), 1), **{f"two_at_{tau}": rows[tau] / max(n, 1) for tau in CENSUS}}


def warm_up(model: Any, tok: Any, prompts: list[list[int]], gen: int, args: argparse.Namespace) -> None:
    """One pass per block with and without the dual cache, untimed: the first timed setting (the reference)
    would otherwise pay for allocating its buffers and the CPU kernels' first calls at these shapes."""
    from remask.sampling import SampleConfig, generate

    for cache in ("none", "dual"):
        cfg = SampleConfig(gen_length=gen, steps=gen // BLOCK, block_length=BLOCK, early_stop=False, cache=cache,
                           dtype=args.dtype)
        generate(model, prompts, cfg, mask_id=tok.mask_id, eos_id=tok.eos_id)


def real_quality(judge: Any, tok: Any, pairs: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
    """The same quality figures for the real text after each prompt (the judge's scale)."""
    quality = Quality()
    for prompt, real in pairs:
        quality.add(judge_nll(judge, prompt + real, len(prompt)), list(range(len(real))), real,
                    tok.decode(story_of(real, tok.eos_id)), tok.eos_id)
    return quality.figures()


def benchmark(args: argparse.Namespace, model: Any, judge: Any, tok: Any, val: Any) -> list[dict[str, Any]]:
    """Every configuration at every gen length and ``--batches`` size (1: one prompt at a time; B: one batch)."""
    runs: list[dict[str, Any]] = []
    counts = (args.prompts + [args.prompts[-1]] * len(args.gen_lengths))[:len(args.gen_lengths)]
    story_eos = tok.eos_id if args.corpus == "tinystories" else None
    for gen, n in zip(args.gen_lengths, counts):
        for batch in args.batches:
            pairs = prompts_from(val, n if batch == 1 else batch, args.prompt_length, gen, story_eos)
            warm_up(model, tok, [p for p, _ in pairs[:batch]], gen, args)
            rows = []
            for name, overrides in CONFIGS:
                if args.configs and name not in args.configs and name != CONFIGS[0][0]:
                    continue
                if name in RULE_ONLY and (gen > 256 or batch > 1) and not args.rules_at_1024:
                    continue
                r = run_setting(model, judge, tok, pairs, gen, overrides, args, batch=batch > 1)
                rows.append({"name": name, "overrides": overrides, **r})
                print(f"gen {gen} batch {batch} {name:40s} {r['tok_s']:8.1f} tok/s  {r['tokens_per_pass']:5.2f} "
                      f"tok/pass  ppl {r['ppl']:6.2f}  bigrams {r['bigrams']:.3f}  endings {r['endings']:.2f}  "
                      f"same-pass {r['same_pass']:.2f}", flush=True)
            # The reference again, last: its two timings bracket the run, and their mean is the baseline
            # (on this shared 2-core machine one timing of the same work can differ by 20%).
            again = run_setting(model, judge, tok, pairs, gen, CONFIGS[0][1], args, batch=batch > 1)
            rows[0]["tok_s_runs"] = [rows[0]["tok_s"], again["tok_s"]]
            rows[0]["tok_s"] = (rows[0]["tok_s"] + again["tok_s"]) / 2
            print(f"gen {gen} batch {batch} reference again {again['tok_s']:8.1f} tok/s", flush=True)
            runs.append({"gen": gen, "batch": batch, "prompts": len(pairs), "rows": rows,
                         "real": real_quality(judge, tok, pairs)})
    return runs


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


def prepare_corpus(args: argparse.Namespace, work: Path) -> str:
    """Tokenise ``--corpus`` into ``work/data`` (once: a kept --work-dir reuses it) -> the report's data line."""
    from remask.data.prepare import prepare
    from remask.data.tokenizer import ByteTokenizer

    described = work / "data.txt"
    if (work / "data" / "meta.json").is_file() and described.is_file():  # a kept --work-dir
        return described.read_text()
    if args.corpus == "tinystories":
        from tinystories import TINYSTORIES, prepare_stories

        tok, meta = prepare_stories(dataset(args.data, TINYSTORIES), work, args.vocab_size, VAL_FRACTION)
        what = f"TinyStories train head, one story per document, byte-level BPE of {tok.vocab_size} tokens"
    else:
        text_file = dataset(args.data, SHAKESPEARE, optional=True)  # None: the built-in corpus
        meta = prepare([text_file] if text_file else None, work / "data", ByteTokenizer(), val_fraction=VAL_FRACTION)
        what = f"{text_file.name if text_file else 'built-in corpus'}, byte tokens"
    splits = meta["splits"]
    described.write_text(f"{what}; {splits['train']['tokens']:,} train / {splits['val']['tokens']:,} val tokens")
    return described.read_text()


def best_or_final(run: Path) -> Path:
    """RUN/best (the best validation) when the run kept one, else RUN's final checkpoint."""
    return run / "best" if (run / "best").is_dir() else run


def describe(m: Any, r: dict[str, Any] | None) -> str:
    c = m.cfg
    s = (f"d_model {c.d_model}, {c.n_layer} layers, {c.n_head} heads, max_seq_len {c.max_seq_len}, "
         f"{m.num_params():,} parameters")
    return s + (f"; trained {r['step']} steps in {r['elapsed_s']:.0f}s on {r.get('seq_len', '?')}-token "
                f"windows, final val loss {r['val_loss']:.3f} nats/token" if r else "; given checkpoint")


def best_line(ckpt: Path) -> str:
    """For a RUN/best checkpoint, the step and validation loss it was kept at (from its train_state.json)."""
    state = ckpt / "train_state.json"
    if ckpt.name != "best" or not state.is_file():
        return ""
    saved = json.loads(state.read_text())
    return (f"; the judge is RUN/best, kept at step {saved.get('best_step')} with val loss "
            f"{saved.get('best_val', float('nan')):.3f} nats/token")


def result_of(ckpt: Path) -> dict[str, Any] | None:
    """The result.json sampling.py's training wrote beside a run (RUN/.. or, for RUN/best, RUN/../..)."""
    for where in (ckpt.parent, ckpt.parent.parent):
        if (where / "result.json").is_file():
            return json.loads((where / "result.json").read_text())
    return None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Train (unless --ckpt and --judge are given), then sample -> the results sampling_report reads."""
    from remask.checkpoint import load_model
    from remask.data.shards import TokenData

    with work_dir(args.work_dir, "remask-sampling-") as work:
        data_line = prepare_corpus(args, work)
        trained: dict[str, dict[str, Any]] = {}
        if args.ckpt is None or args.judge is None:
            t0 = time.perf_counter()
            trained = run_workers(__file__, work, [*sys.argv[1:], "--work-dir", str(work)], threads=args.threads,
                                  result="{kind}/result.json")
            print(f"trained both models in {time.perf_counter() - t0:.0f}s: " + ", ".join(
                f"{o} {r['step']} steps val {r['val_loss']:.3f}" for o, r in trained.items()), flush=True)
            if args.train_only:
                print(f"checkpoints: {work / 'mdm' / 'run'} and {work / 'ar' / 'run'}")
                return {}
        mdm_path, judge_path = args.ckpt or work / "mdm" / "run", args.judge or best_or_final(work / "ar" / "run")
        model, tok = load_model(mdm_path, args.device)
        judge, _ = load_model(judge_path, args.device)
        need = args.prompt_length + max(args.gen_lengths)
        if model.cfg.max_seq_len < need:
            raise SystemExit(f"--ckpt has max_seq_len {model.cfg.max_seq_len} < prompt + gen = {need}")
        meta = {"commands": [command_line()], "date": date(), "note": args.note, "block": BLOCK,
                "machine": f"{machine()}, {args.threads} thread(s); device {args.device}, dtype {args.dtype}, "
                           f"compile {args.compile}",
                "mdm": describe(model, trained.get("mdm") or result_of(mdm_path)),
                "judge": describe(judge, trained.get("ar") or result_of(judge_path))
                + best_line(judge_path),
                "data": data_line, "prompt_length": args.prompt_length,
                "prompt_source": "the starts of held-out stories" if args.corpus == "tinystories"
                else "evenly spaced offsets"}
        return {"meta": meta, "runs": benchmark(args, model, judge, tok, TokenData(work / "data", "val"))}


def merged(paths: list[Path]) -> dict[str, Any]:
    """The runs of several --json files, in order, under the first one's description (commands: all)."""
    parts = [json.loads(p.read_text()) for p in paths]
    meta = {**parts[0]["meta"], "commands": [c for p in parts for c in p["meta"]["commands"]] + [command_line()]}
    for p in parts:  # each run keeps its own setup (threads, dtype, compile) and date
        for r in p["runs"]:
            note = f"; {p['meta']['note']}" if p["meta"].get("note") else ""
            r.setdefault("setup", f"{p['meta']['machine']}; {p['meta']['date']}{note}")
    return {"meta": meta, "runs": [r for p in parts for r in p["runs"]]}


def main() -> None:
    args = parse_args()
    if args.prompt_length is None:
        args.prompt_length = 32 if args.corpus == "tinystories" else 64
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(args.threads)
    if args.train_only and args.work_dir is None:
        raise SystemExit("--train-only needs --work-dir (where the checkpoints stay)")
    if args.sudoku is not None:
        dataset(args.data, SUDOKU_COUNTDOWN)  # a missing test set ends here, before any training
    results = merged(args.from_json) if args.from_json else measure(args)
    if not results:
        return
    if args.json:
        write_atomic(args.json, json.dumps(results, indent=1))
    text = sampling_report.report(results)
    if args.sudoku is not None:
        text += "\n" + sampling_report.task_report(task_benchmark(args), str(args.sudoku))
    if args.figure:
        text += f"\n![speedup against quality]({args.figure.name})\n"
        print(f"wrote {sampling_report.figure(results, args.figure)}")
    publish(text, args.results)


if __name__ == "__main__":
    main()
