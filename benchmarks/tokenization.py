"""Bytes vs a trained BPE on Chinese poetry, masked diffusion vs autoregressive.

    python benchmarks/tokenization.py                   # 3 minutes of training per model (~8 min wall)
    python benchmarks/tokenization.py --minutes 0.5     # quick end-to-end check
    python benchmarks/tokenization.py --data DIR        # DIR/chinese_poetry/shijing.json

The question: a byte tokenizer cuts each Chinese character into three UTF-8 bytes, and an MDM masks
them independently, so it must learn to predict a byte of a character whose other bytes it may not
see; an AR model always sees the earlier bytes of the character it is finishing. How much does the
MDM lose to this, compared with the AR model, against a BPE whose tokens are mostly whole characters?

Data: the 诗经 (``chinese_poetry/shijing.json`` under the dataset root, ``--data DIR``, else
``$REMASK_DATA``, else ``../shared/data``), one document per poem (title and lines, as in
data_constrained.py), ~10% of the poems held out by the prepare step's hash split. The BPE is
``remask.data.tokenizer.train_bpe`` (what ``remask tokenizer train`` runs) on the training poems only.
Default ``--vocab-size 2048``: the ~35k training characters hold ~2.8k distinct characters; 2048 tokens
make the frequent ones single tokens (~1.06 tokens per character on the held-out poems, vs ~2.9 for
bytes) while few are too rare to train: 9% of the learned tokens occur at most 3 times in the training
poems (median 7). 1024 leaves ~1.2 tokens/char; with 4096, 59% occur at most 3 times (median 3).

Four models, the same backbone (only ``causal`` and the vocabulary differ) and the same wall-clock
training budget (``--minutes``, ``TrainConfig.time_budget``, ``lr_clock=time``): {mdm, ar} x {bytes,
bpe}. The mdm and ar models of one tokenizer train AT THE SAME TIME in two processes with one thread
each (as data_constrained.py), the byte pair first, then the BPE pair. Every model trains for the whole
budget; it validates every ``--eval-interval`` steps and keeps its best in RUN/best (early stopping on,
with a patience it never reaches).

Metric 1, validation loss per character, on RUN/best: the validation windows tile the held-out split
(``ceil(tokens / (seq_len x batch))`` batches), MDM: LLaDA's ELBO bound (eq. 3) with ``--eval-mc`` fixed
mask draws per window (an upper bound on its NLL), AR: exact NLL; nats per token, then

    nats/char = nats/token x tokens/char,  tokens/char = val tokens / val characters

with both counts over the whole held-out split, each poem's EOS counted as one token and one character
(so bytes: (UTF-8 bytes + poems) / (characters + poems)). The standard error over windows scales alike.
A window of ``--seq-len`` tokens spans ~1/3 as many characters with bytes as with BPE (less context).

Metric 2, couplets 上句，下句。 (sentences of the TRAINING poems with exactly one '，' and no other
punctuation; distinct ones, ``--couplets`` sampled with a fixed seed): memorisation and any-order use,
on the final checkpoint (the most trained), greedy, the answer's length given.
* forward (上句， -> 下句): the MDM fills the masks of ``[EOS] 上句，____。`` (as many masks as the true
  clause has tokens, low-confidence remasking, one token per step); the AR model continues
  ``[EOS] 上句，`` and its output is cut to the true clause's character count;
* backward (，下句。 -> 上句): the MDM fills ``[EOS] ____，下句。``; an AR model cannot condition on text
  to the right of what it generates, so it has no such query (n/a, as in reversal.py).
Scores: exact match, and character accuracy (position by position over the true clause). Many 诗经
clauses recur with different partners; the report gives the share of sampled couplets whose prompt
clause has only one partner among the training couplets, a ceiling on exact match.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common import (
    add_data_arg,
    add_model_args,
    add_set_arg,
    add_worker_args,
    barrier,
    optimizer_label,
    progress_line,
    provenance,
    publish,
    run_workers,
    table,
    val_standard_error,
    with_overrides,
    work_dir,
)
from data_constrained import write_corpus
from remask.config import ModelConfig, RunConfig, TrainConfig

TOKENIZERS = ("bytes", "bpe")
VAL_FRACTION = 0.1  # of the poems, by the prepare step's hash split (seed 0)
NEVER = 10**9  # early-stop patience that keeps RUN/best without ever stopping
TASK = "task.json"  # per tokenizer: the couplets the workers complete
SENTENCE = re.compile(r"[^。！？]*[。！？]")
COUPLET = re.compile(r"([^，。！？；：、\s]+)，([^，。！？；：、\s]+)。")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="training time budget of each model")
    add_data_arg(ap, "chinese_poetry/")
    ap.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary (specials included)")
    ap.add_argument("--couplets", type=int, default=200, help="training couplets completed in each direction")
    add_model_args(ap, d_model=128, n_layer=4, n_head=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=TrainConfig().lr, help="peak LR (same for all)")
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--eval-interval", type=int, default=100, help="validate every this many steps")
    ap.add_argument("--eval-mc", type=int, default=4, help="mask draws per window for the MDM's ELBO")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--seed", type=int, default=1337)
    add_set_arg(ap)
    add_worker_args(ap, "tokenization")
    return ap.parse_args(argv)


def run_config(args: argparse.Namespace, objective: str, eval_batches: int) -> RunConfig:
    model = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head, max_seq_len=args.seq_len,
                        causal=objective == "ar")
    train = TrainConfig(objective=objective, seed=args.seed, batch_size=args.batch_size, seq_len=args.seq_len,
                        max_steps=10**6, time_budget=args.minutes * 60.0, lr_clock="time", lr=args.lr,
                        warmup_steps=args.warmup_steps, eval_interval=args.eval_interval, eval_batches=eval_batches,
                        eval_mc=args.eval_mc, early_stop_patience=NEVER, ckpt_interval=0, log_interval=25,
                        progress=False, samples=0, device="cpu", dtype="float32")
    return with_overrides(RunConfig(model=model, train=train), args.overrides)


# ----------------------------------------------------------------------------- couplets

def find_couplets(texts: list[str]) -> list[tuple[str, str]]:
    """The distinct (上句, 下句) of ``texts`` (poems: a title line, then lines of sentences), sorted."""
    found = set()
    for text in texts:
        for line in text.split("\n")[1:]:  # not the title
            for sentence in SENTENCE.findall(line):
                m = COUPLET.fullmatch(sentence)
                if m:
                    found.add((m[1], m[2]))
    return sorted(found)


def sample_couplets(texts: list[str], n: int, seed: int) -> dict[str, Any]:
    """``n`` couplets of ``texts`` (fixed seed), and the share whose prompt clause has one partner only."""
    every = find_couplets(texts)
    picked = random.Random(seed).sample(every, min(n, len(every)))
    firsts: dict[str, set[str]] = {}
    seconds: dict[str, set[str]] = {}
    for a, b in every:
        firsts.setdefault(a, set()).add(b)
        seconds.setdefault(b, set()).add(a)
    return {"couplets": picked, "available": len(every),
            "unique_forward": sum(len(firsts[a]) == 1 for a, _ in picked) / max(len(picked), 1),
            "unique_backward": sum(len(seconds[b]) == 1 for _, b in picked) / max(len(picked), 1)}


def mdm_fill(model: Any, tok: Any, parts: list[tuple[str, str, str]]) -> list[str]:
    """For (before, answer, after): fill as many masks as ``answer`` has tokens in [EOS] before ____ after,
    greedy, low-confidence remasking, one token per step. Rows with the same layout are decoded together."""
    from remask.sampling import SampleConfig, infill

    layouts: dict[tuple[int, int, int], list[tuple[int, list[int]]]] = {}
    for i, (before, answer, after) in enumerate(parts):
        b, n, a = tok.encode(before), len(tok.encode(answer)), tok.encode(after)
        layouts.setdefault((len(b), n, len(a)), []).append((i, [tok.eos_id, *b, *[tok.mask_id] * n, *a]))
    out = [""] * len(parts)
    for (nb, n, _), rows in layouts.items():
        canvas = torch.tensor([ids for _, ids in rows])  # (B, 1 + nb + n + na)
        editable = torch.zeros_like(canvas, dtype=torch.bool)
        editable[:, 1 + nb:1 + nb + n] = True
        filled = infill(model, canvas, editable, SampleConfig(gen_length=n, steps=n), mask_id=tok.mask_id,
                        eos_id=tok.eos_id, eot_id=tok.eot_id).tokens  # (B, L)
        for (i, _), row in zip(rows, filled):
            out[i] = tok.decode(row[1 + nb:1 + nb + n].tolist())
    return out


def ar_continue(model: Any, tok: Any, prompts: list[str], answers: list[str]) -> list[str]:
    """Greedy continuations of [EOS] prompt, each cut to its answer's character count."""
    from remask.sampling.ar import ARSampleConfig, ar_generate

    ids = [[tok.eos_id, *tok.encode(p)] for p in prompts]
    n = max(len(a.encode("utf-8")) for a in answers)  # >= any answer's tokens under a byte-level tokenizer
    rows = ar_generate(model, ids, ARSampleConfig(gen_length=n), eos_id=tok.eos_id, mask_id=tok.mask_id).tokens
    return [tok.decode(r.tolist())[:len(a)] for r, a in zip(rows, answers)]  # rows: (B, n)


def score(preds: list[str], golds: list[str]) -> dict[str, float]:
    """Exact match rate and character accuracy (position by position over the true clause)."""
    chars = sum(sum(p[i:i + 1] == c for i, c in enumerate(g)) for p, g in zip(preds, golds))
    return {"exact": sum(p == g for p, g in zip(preds, golds)) / len(golds),
            "chars": chars / sum(len(g) for g in golds)}


def complete_couplets(model: Any, tok: Any, kind: str, couplets: list[tuple[str, str]]) -> dict[str, Any]:
    """Forward (both models) and backward (the MDM only) completion scores, with three examples each."""
    firsts, seconds = [a for a, _ in couplets], [b for _, b in couplets]
    if kind == "mdm":
        fwd = mdm_fill(model, tok, [(f"{a}，", b, "。") for a, b in couplets])
        bwd: list[str] | None = mdm_fill(model, tok, [("", a, f"，{b}。") for a, b in couplets])
    else:
        fwd, bwd = ar_continue(model, tok, [f"{a}，" for a in firsts], seconds), None
    return {"forward": score(fwd, seconds), "backward": None if bwd is None else score(bwd, firsts),
            "examples": {"forward": [f"{a}，{p}" for a, p in zip(firsts[:3], fwd)],
                         "backward": None if bwd is None else [f"{p}，{b}" for p, b in zip(bwd, seconds[:3])]}}


# ----------------------------------------------------------------------------- worker

def worker(args: argparse.Namespace) -> None:
    """One objective on one tokenizer's data: train for the budget, score RUN/best, complete couplets."""
    from remask.checkpoint import load_checkpoint, load_model
    from remask.train.loop import train

    torch.set_num_threads(args.threads)
    obj, work = args.worker, args.work_dir
    data_dir, out = work / "data", work / obj
    task = json.loads((work / TASK).read_text())
    cfg = run_config(args, obj, task["eval_batches"])
    barrier(work, "train", obj)
    res = train(cfg, out / "run", data=data_dir, overwrite=True)
    best = load_checkpoint(out / "run" / "best")
    with torch.no_grad():
        mean, se = val_standard_error(best.model, data_dir, best.config)  # nats per token
    model, tok = load_model(res.checkpoint)
    record: dict[str, Any] = {
        "objective": obj, "params": model.num_params(), "best_step": best.train_state["best_step"],
        "best_val": mean, "best_val_se": se, **res.to_json(),
        **complete_couplets(model, tok, obj, [(a, b) for a, b in task["couplets"]]),
    }
    (out / "result.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    print(f"{obj}: {res.step} steps, best val {mean:.4f} ± {se:.4f} nats/token, forward {record['forward']}",
          flush=True)


# ----------------------------------------------------------------------------- driver and report

def make_tokenizer(name: str, train_texts: list[str], vocab_size: int) -> Any:
    from remask.data.tokenizer import ByteTokenizer, train_bpe

    return ByteTokenizer() if name == "bytes" else train_bpe(train_texts, vocab_size)


def run_tokenizer(args: argparse.Namespace, name: str, files: list[Path], val_texts: list[str],
                  train_texts: list[str], couplets: list[tuple[str, str]], work: Path) -> dict[str, Any]:
    """Tokenise the poems with ``name``, train its mdm and ar models at once; their results and data sizes."""
    from remask.data.prepare import prepare

    tok = make_tokenizer(name, train_texts, args.vocab_size)
    meta = prepare(files, work / "data", tok, val_fraction=VAL_FRACTION)
    val = meta["splits"]["val"]
    if val["documents"] != len(val_texts):  # the BPE and the couplets must see the prepare step's split
        raise SystemExit(f"prepare held out {val['documents']} poems, this script expected {len(val_texts)}")
    val_chars = sum(len(t) + 1 for t in val_texts)  # + 1: each poem's EOS
    eval_batches = math.ceil(val["tokens"] / (args.seq_len * args.batch_size))  # windows tile the val split
    (work / TASK).write_text(json.dumps({"eval_batches": eval_batches, "couplets": couplets}, ensure_ascii=False))
    load0 = os.getloadavg()[0]
    print(f"== {name}: vocabulary {tok.vocab_size}, {meta['splits']['train']['tokens']:,} train / "
          f"{val['tokens']:,} val tokens, {val['tokens'] / val_chars:.3f} tokens/char", flush=True)
    argv = [*sys.argv[1:], "--work-dir", str(work)]
    res = run_workers(__file__, work, argv, threads=args.threads, result="{kind}/result.json",
                      progress=lambda kind: progress_line(work / kind / "run" / "metrics.jsonl", "val_loss"))
    return {**res, "vocab": tok.vocab_size, "train_tokens": meta["splits"]["train"]["tokens"],
            "val_tokens": val["tokens"], "val_chars": val_chars, "tokens_per_char": val["tokens"] / val_chars,
            "eval_windows": eval_batches * args.batch_size, "load": (load0, os.getloadavg()[0])}


def per_char(r: dict[str, Any], k: dict[str, Any]) -> tuple[float, float]:
    """(nats/char, SE): nats/token x tokens/char of the held-out split."""
    return k["best_val"] * r["tokens_per_char"], k["best_val_se"] * r["tokens_per_char"]


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]], picked: dict[str, Any],
           total_s: float) -> str:
    pct = lambda s: "n/a" if s is None else f"{100 * s['exact']:.1f}% / {100 * s['chars']:.1f}%"  # noqa: E731
    rows = []
    for name, r in results.items():
        for kind in ("mdm", "ar"):
            k = r[kind]
            nats, se = per_char(r, k)
            epochs = k["step"] * args.batch_size * args.seq_len / r["train_tokens"]
            rows.append([name, r["vocab"], kind, f"{k['params']:,}", k["step"], f"{epochs:.1f}", k["best_step"],
                         f"{k['best_val']:.4f} ± {k['best_val_se']:.4f}", f"{r['tokens_per_char']:.3f}",
                         f"{nats:.4f} ± {se:.4f}", f"{nats / math.log(2):.3f}", pct(k["forward"]),
                         pct(k["backward"])])
    headers = ["tokenizer", "vocab", "model", "params", "steps", "epochs", "best at step", "val nats/token (± SE)",
               "tokens/char", "val nats/char (± SE)", "bits/char", "forward exact / char acc",
               "backward exact / char acc"]
    gap = {kind: per_char(results["bpe"], results["bpe"][kind])[0] - per_char(results["bytes"], results["bytes"][kind])[0]
           for kind in ("mdm", "ar")} if set(results) == set(TOKENIZERS) else None
    gaps = "" if gap is None else (f"**BPE - bytes, val nats/char: MDM {gap['mdm']:+.4f}, AR {gap['ar']:+.4f}** "
                                   "(negative: BPE is better).\n\n")
    r0 = next(iter(results.values()))
    examples = "\n".join(f"- {name} {kind}: forward {r[kind]['examples']['forward']}"
                         + ("" if r[kind]["examples"]["backward"] is None
                            else f", backward {r[kind]['examples']['backward']}")
                         for name, r in results.items() for kind in ("mdm", "ar"))
    loads = "; ".join(f"{n} {r['load'][0]:.1f} -> {r['load'][1]:.1f}" for n, r in results.items())
    return f"""# tokenization

Bytes vs a trained byte-level BPE (`train_bpe`, vocabulary {args.vocab_size}, trained on the training poems)
on the 诗经, MDM (LLaDA's objective, bidirectional) vs AR (next-token, causal), same backbone, same
wall-clock training ({args.minutes:g} min each; the mdm and ar models of a tokenizer trained at the same time
in two processes with {args.threads} thread each, bytes first, then BPE).

- model: d_model {args.d_model}, {args.n_layer} layers, {args.n_head} heads; seq_len {args.seq_len} tokens, batch
  {args.batch_size}, {optimizer_label(args.overrides)} peak LR {args.lr:g}, {args.warmup_steps} warmup steps, cosine decay following the time
  budget (`lr_clock=time`). No early stop; validation every {args.eval_interval} steps keeps the best (RUN/best).
- data: {r0['val_chars']:,} held-out characters (~{VAL_FRACTION:.0%} of the poems, EOS counted as one character).
  Validation on RUN/best, windows tiling the held-out split ({", ".join(f"{n} {r['eval_windows']}" for n, r in results.items())});
  MDM: ELBO bound (eq. 3) with {args.eval_mc} fixed mask draws per window, an upper bound on its NLL; AR: exact NLL.
  nats/char = nats/token x tokens/char (held-out tokens / held-out characters); SE over windows, scaled alike.
- couplets: {len(picked['couplets'])} of the {picked['available']} distinct 上句，下句。 of the training poems, on the
  final checkpoint, greedy, answer length given (MDM: masks = the clause's tokens, low-confidence, one token per
  step; AR: continuation cut to the clause's characters). Forward: 上句， -> 下句 (MDM fills `上句，____。`);
  backward: ，下句。 -> 上句 (MDM fills `____，下句。`; n/a for AR, which cannot condition on text to the right).
  Prompt clause with a single partner among the training couplets (ceiling on exact match): forward
  {picked['unique_forward']:.0%}, backward {picked['unique_backward']:.0%}.
- 1-minute load average at start -> end of each pair: {loads}

{table(headers, rows)}

{gaps}Examples (first three couplets):

{examples}

Recipe overrides (`--set`, every model): {", ".join(args.overrides) or "none"}.

{provenance(total_s)}"""


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    from remask.data.corpus import is_validation, iter_documents

    t0, results = time.perf_counter(), {}
    with work_dir(args.work_dir, "remask-tokenization-") as work:
        files = write_corpus(args, "shijing", work / "text")
        docs = list(iter_documents(files))  # the ids prepare splits by
        val_texts = [d.text for d in docs if is_validation(d.id, VAL_FRACTION)]
        train_texts = [d.text for d in docs if not is_validation(d.id, VAL_FRACTION)]
        picked = sample_couplets(train_texts, args.couplets, args.seed)
        for name in TOKENIZERS:
            results[name] = run_tokenizer(args, name, files, val_texts, train_texts, picked["couplets"], work / name)
    publish(report(args, results, picked, time.perf_counter() - t0), args.results)


if __name__ == "__main__":
    main()
