"""The reversal curse, masked diffusion vs autoregressive, on made-up people.

    python benchmarks/reversal.py                 # about 8 minutes on a 2-core CPU
    python benchmarks/reversal.py --steps 300     # a quicker check

Training data: one sentence per fictitious person, always in one direction, "NAME is
DESCRIPTION." (e.g. "Ravo Tesaluma is the amber scribe."), in the spirit of
Berglund et al. 2023. An MDM (LLaDA objective) and an AR model (same backbone, ``causal=True``)
train on it with the same compute (same model, batch, sequence length and number of steps),
AT THE SAME TIME in two processes with one thread each. Then, greedy, exact match:

* forward, name -> description: the description after "NAME is " (the MDM fills the slot of the
  training sentence "NAME is ____." between its EOS markers; the AR continues the prefix; both
  are told the answer's length);
* reverse, description -> name, as each model can ask it:
  - fill: the MDM fills the name slot of "____ is DESCRIPTION." (an AR model cannot condition
    on text to the right of what it generates, so it has no such query);
  - prompt: both continue "DESCRIPTION is " (a word order never seen in training);
  - rank (AR only, for context): pick the name whose sentence "NAME is DESCRIPTION." the AR
    model finds most likely, a discriminative use of the forward direction, not generation.

Expected: the MDM's reverse (fill) accuracy close to its forward accuracy; the AR model's
reverse generation near zero. Writes benchmarks/results/reversal.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

import numpy as np
import torch

from common import (
    add_model_args,
    add_set_arg,
    add_worker_args,
    barrier,
    provenance,
    publish,
    run_workers,
    table,
    with_overrides,
    work_dir,
)
from remask.config import ModelConfig, RunConfig, TrainConfig
from remask.objectives import Batch
from remask.rng import DATA, keyed_generator

SYLLABLES = ["ka", "lo", "mi", "ra", "ve", "do", "sa", "thi", "be", "nu", "za", "ne", "ro", "fi", "ma", "te", "gu",
             "shi", "bo", "la", "ki", "pe", "su", "vo"]
ADJ = ["silent", "amber", "hollow", "crimson", "gentle", "iron", "velvet", "distant", "golden", "frozen", "hidden",
       "quiet"]
ROLE = ["keeper", "painter", "builder", "healer", "singer", "gardener", "weaver", "pilot", "baker", "scribe", "smith",
        "tailor"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=30, help="fictitious people (facts to learn)")
    ap.add_argument("--steps", type=int, default=2000, help="optimizer steps for each model (equal compute)")
    ap.add_argument("--batch-size", type=int, default=16)
    add_model_args(ap, d_model=96, n_layer=3, n_head=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=None,
                    help="train each model for this many minutes instead of --steps (equal wall-clock; the LR "
                         "schedule follows the budget)")
    add_set_arg(ap)
    add_worker_args(ap, "reversal")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- the data set

def make_people(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (name, description) pairs, all names and all descriptions distinct."""
    rng = random.Random(seed)
    word = lambda k: "".join(rng.choice(SYLLABLES) for _ in range(k)).capitalize()  # noqa: E731
    names: set[str] = set()
    while len(names) < n:
        names.add(f"{word(2)} {word(3)}")
    combos = [f"the {a} {r}" for a in ADJ for r in ROLE]
    if n > len(combos):
        raise SystemExit(f"--persons {n} exceeds the {len(combos)} distinct descriptions")
    return list(zip(sorted(names), rng.sample(combos, n)))


def sentence(name: str, desc: str) -> str:
    return f"{name} is {desc}."


class Facts:
    """BatchSource: each sample is one training sentence, [EOS] sentence [EOS ...] (LLaDA pads
    with EOS and trains on the padding), drawn by a generator keyed by (seed, step, index)."""

    bytes_per_token = None

    def __init__(self, rows: torch.Tensor, seed: int) -> None:
        self.rows, self.seed = rows, seed  # (N, seq_len)

    def train_batch(self, step: int, indices: np.ndarray) -> Batch:
        pick = [int(keyed_generator(self.seed, step, int(i), DATA).integers(len(self.rows))) for i in indices]
        return Batch(self.rows[pick])

    def val_batches(self, micro_batch_size: int, n_batches: int) -> list[tuple[Batch, np.ndarray]]:
        idx = np.arange(micro_batch_size) % len(self.rows)
        return [(Batch(self.rows[idx]), idx)]


def encode_rows(tok: Any, texts: list[str], seq_len: int) -> torch.Tensor:
    rows = torch.full((len(texts), seq_len), tok.eos_id, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = tok.encode(t)
        rows[i, 1:1 + len(ids)] = torch.tensor(ids)
    return rows  # (N, seq_len): EOS, the sentence, EOS padding


# ----------------------------------------------------------------------------- queries

def mdm_fill(model: Any, tok: Any, parts: list[tuple[str, str, str]], seq_len: int) -> list[str]:
    """For (before, answer, after): fill len(answer) masks in [EOS] before ____ after [EOS...]."""
    from remask.sampling import SampleConfig
    from remask.sampling.infill import infill

    canvas = torch.full((len(parts), seq_len), tok.eos_id, dtype=torch.long)
    editable = torch.zeros_like(canvas, dtype=torch.bool)
    spans = []
    for i, (before, answer, after) in enumerate(parts):
        b, n, a = tok.encode(before), len(tok.encode(answer)), tok.encode(after)
        ids = [tok.eos_id, *b, *[tok.mask_id] * n, *a]
        canvas[i, :len(ids)] = torch.tensor(ids)
        editable[i, 1 + len(b):1 + len(b) + n] = True
        spans.append((1 + len(b), 1 + len(b) + n))
    steps = int(editable.sum(1).max())
    out = infill(model, canvas, editable, SampleConfig(gen_length=steps, steps=steps), mask_id=tok.mask_id,
                 eos_id=tok.eos_id, eot_id=tok.eot_id)
    return [tok.decode(out.canvas[i, s:e].tolist()) for i, (s, e) in enumerate(spans)]


def continue_prompts(model: Any, tok: Any, prompts: list[str], lengths: list[int]) -> list[str]:
    """Greedy continuations of [EOS] prompt, each cut to its answer's length."""
    ids = [[tok.eos_id, *tok.encode(p)] for p in prompts]
    n = max(lengths)
    if model.cfg.causal:
        from remask.sampling.ar import ARSampleConfig, ar_generate

        rows = ar_generate(model, ids, ARSampleConfig(gen_length=n), eos_id=tok.eos_id, mask_id=tok.mask_id).tokens
    else:
        from remask.sampling import SampleConfig, generate

        rows = generate(model, ids, SampleConfig(gen_length=n, steps=n), mask_id=tok.mask_id, eos_id=tok.eos_id,
                        eot_id=tok.eot_id).tokens
    return [tok.decode(r[:k].tolist()) for r, k in zip(rows, lengths)]


def ar_rank(model: Any, tok: Any, people: list[tuple[str, str]]) -> float:
    """Fraction of descriptions whose most likely "NAME is DESCRIPTION." has the right name."""
    from remask.likelihood import ar_logliks

    names = [n for n, _ in people]
    hits = 0
    for j, (_, desc) in enumerate(people):
        pairs = [([tok.eos_id], tok.encode(sentence(n, desc))) for n in names]
        scores = [v for v, _ in ar_logliks(model, pairs, batch_size=64)]
        hits += int(np.argmax(scores)) == j
    return hits / len(people)


def accuracy(preds: list[str], golds: list[str]) -> float:
    return sum(p == g for p, g in zip(preds, golds)) / len(golds)


# ----------------------------------------------------------------------------- one model

def worker(args: argparse.Namespace) -> None:
    from remask.checkpoint import load_model
    from remask.data.tokenizer import ByteTokenizer
    from remask.train.loop import train

    torch.set_num_threads(1)
    kind, work = args.worker, args.work_dir
    tok = ByteTokenizer()
    people = make_people(args.persons, args.seed)
    texts = [sentence(n, d) for n, d in people]
    seq_len = -(-(max(len(t) for t in texts) + 2) // 8) * 8
    model_cfg = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head, max_seq_len=seq_len,
                            causal=kind == "ar")
    budget = None if args.minutes is None else args.minutes * 60.0
    train_cfg = TrainConfig(objective=kind, seed=args.seed, batch_size=args.batch_size, seq_len=seq_len,
                            max_steps=args.steps if budget is None else 10**6, time_budget=budget,
                            lr_clock="steps" if budget is None else "time", lr=args.lr, warmup_steps=50,
                            eval_interval=0, eval_batches=1, eval_mc=2, ckpt_interval=0, log_interval=50,
                            progress=False, samples=0, device="cpu", dtype="float32")
    cfg = with_overrides(RunConfig(model=model_cfg, train=train_cfg), args.overrides)
    barrier(work, "start", kind)  # both start together, so both see the same machine load
    t0 = time.perf_counter()
    res = train(cfg, work / kind, tokenizer=tok,
                source=Facts(encode_rows(tok, texts, seq_len), args.seed))
    wall = time.perf_counter() - t0
    model, tok = load_model(res.checkpoint)

    names, descs = [n for n, _ in people], [d + "." for _, d in people]
    record: dict[str, Any] = {"kind": kind, "steps": res.step, "train_s": res.elapsed, "wall_s": wall,
                              "final_loss": res.val_loss, "params": model.num_params(), "seq_len": seq_len}
    if kind == "mdm":
        fwd = mdm_fill(model, tok, [(f"{n} is ", d, "") for n, d in zip(names, descs)], seq_len)
        rev = mdm_fill(model, tok, [("", n, f" is {d}") for n, d in zip(names, descs)], seq_len)
        record["reverse_fill"] = accuracy(rev, names)
        record["examples"] = {"forward": fwd[:3], "reverse_fill": rev[:3]}
    else:
        fwd = continue_prompts(model, tok, [f"{n} is " for n in names], [len(d) for d in descs])
        record["reverse_rank"] = ar_rank(model, tok, people)
        record["examples"] = {"forward": fwd[:3]}
    record["forward"] = accuracy(fwd, descs)
    rev_prompt = continue_prompts(model, tok, [f"{d[:-1]} is " for d in descs], [len(n) for n in names])
    record["reverse_prompt"] = accuracy(rev_prompt, names)
    record["examples"]["reverse_prompt"] = rev_prompt[:3]
    (work / f"{kind}.json").write_text(json.dumps(record, indent=2))


# ----------------------------------------------------------------------------- both, and the report

def report(args: argparse.Namespace, res: dict[str, dict[str, Any]], people: list[tuple[str, str]],
           total_s: float) -> str:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    mdm, ar = res["mdm"], res["ar"]
    rows = [
        ["MDM (LLaDA)", mdm["steps"], f"{mdm['train_s']:.0f}", f"{mdm['final_loss']:.3f}", pct(mdm["forward"]),
         pct(mdm["reverse_fill"]), pct(mdm["reverse_prompt"]), "n/a",
         f"{mdm['reverse_fill'] / max(mdm['forward'], 1e-9):.2f}"],
        ["AR (causal)", ar["steps"], f"{ar['train_s']:.0f}", f"{ar['final_loss']:.3f}", pct(ar["forward"]),
         "n/a", pct(ar["reverse_prompt"]), pct(ar["reverse_rank"]),
         f"{ar['reverse_prompt'] / max(ar['forward'], 1e-9):.2f}"],
    ]
    headers = ["model", "steps", "train s", "final train-set loss", "forward: name -> description",
               "reverse: fill \"____ is DESC.\"", "reverse: prompt \"DESC is\"", "reverse: rank names (AR)",
               "best reverse generation / forward"]
    ex = "\n".join(f"- {sentence(n, d)}" for n, d in people[:3])
    return f"""# Reversal curse: MDM vs AR on fictitious people

{table(headers, rows)}

{len(people)} people, one training sentence each ("NAME is DESCRIPTION."), e.g.

{ex}

Both models: the same Transformer ({mdm['params']:,} parameters, {args.n_layer} layers, width {args.d_model}),
byte tokenizer, sequences of {mdm['seq_len']} tokens ([EOS] sentence [EOS padding]), batch {args.batch_size},
{budget_text(args, mdm, ar)}, peak LR {args.lr}, cosine schedule, seed {args.seed}, recipe overrides (`--set`):
{", ".join(args.overrides) or "none"}; trained at the same time in two processes with one thread each. Greedy decoding, exact match, the answer length given to both
models. "final train-set loss" is the loop's last evaluation on the training sentences (MDM: ELBO bound,
AR: exact NLL, nats per token, not comparable across the two). The last column divides the best reverse
generation (MDM: fill; AR: prompt) by the forward accuracy of the same model.

Examples (first three people): MDM forward {mdm['examples']['forward']}, reverse fill
{mdm['examples']['reverse_fill']}, reverse prompt {mdm['examples']['reverse_prompt']}; AR forward
{ar['examples']['forward']}, reverse prompt {ar['examples']['reverse_prompt']}.

{provenance(total_s)}"""


def budget_text(args: argparse.Namespace, mdm: dict[str, Any], ar: dict[str, Any]) -> str:
    if args.minutes is None:
        return f"{args.steps} steps (equal compute)"
    return f"{args.minutes:g} minutes of training each (equal wall-clock: MDM {mdm['steps']}, AR {ar['steps']} steps)"


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    t0 = time.perf_counter()
    with work_dir(args.work_dir, "remask-reversal-") as work:
        res = run_workers(__file__, work, [*sys.argv[1:], "--work-dir", str(work)])
    publish(report(args, res, make_people(args.persons, args.seed), time.perf_counter() - t0), args.results)


if __name__ == "__main__":
    main()
