"""`remask eval perplexity|completion|choice`: score a checkpoint (``remask.evaluate``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from remask.commands.flags import (
    add_ckpt_args,
    add_fields,
    add_sampler_args,
    emit,
    field_values,
    load,
    sample_config,
)
from remask.data.corpus import iter_documents
from remask.errors import RemaskError
from remask.evaluate import NORMS, choice_accuracy, completion_accuracy, perplexity, read_jsonl
from remask.fileio import write_text_atomic
from remask.likelihood import LikelihoodConfig
from remask.model import is_causal


def add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_task", required=True, metavar="TASK")
    ppl = sub.add_parser("perplexity", help="nats/token and bits/byte (MDM: ELBO bound; AR: exact)")
    ppl.add_argument("--data", nargs="+", required=True, help="text files, directories or .jsonl (field 'text')")
    ppl.add_argument("--window", type=int, help="tokens per window (default: the checkpoint's training seq_len)")
    ppl.add_argument("--stride", type=int, help="new tokens scored per window (default: window - 1)")
    ppl.add_argument("--limit", type=int, help="score only the first N documents")
    add_ckpt_args(ppl)
    _likelihood_args(ppl)

    comp = sub.add_parser("completion", help="generate for {prompt, completion} records: exact match, contains")
    comp.add_argument("--data", type=Path, required=True, help=".jsonl of {\"prompt\", \"completion\"}")
    comp.add_argument("--chat", action="store_true",
                      help="wrap each prompt in the chat template (the tokenizer's, else the default)")
    comp.add_argument("--out", type=Path, help="write one JSON line per record with its prediction")
    comp.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch")
    comp.add_argument("--limit", type=int, help="evaluate only the first N records")
    add_sampler_args(comp, show_steps=False)

    mc = sub.add_parser("choice", help="multiple choice {prompt, choices, answer} scored by likelihood")
    mc.add_argument("--data", type=Path, required=True, help=".jsonl of {\"prompt\", \"choices\", \"answer\"}")
    mc.add_argument("--norm", choices=NORMS, default="token", help="acc_norm divides by option length in tokens "
                                                                   "(default) or UTF-8 bytes")
    mc.add_argument("--out", type=Path, help="write one JSON line per record with its scores")
    mc.add_argument("--limit", type=int, help="evaluate only the first N records")
    add_ckpt_args(mc)
    _likelihood_args(mc)


def _likelihood_args(p: argparse.ArgumentParser) -> None:
    add_fields(p.add_argument_group("likelihood (masked diffusion only; AR checkpoints are scored exactly)"),
               LikelihoodConfig)


def _limit(items: list[Any], limit: int | None) -> list[Any]:
    if limit is not None and limit <= 0:
        raise RemaskError(f"--limit must be positive, got {limit}")
    return items[:limit] if limit is not None else items


def _lcfg(args: argparse.Namespace) -> LikelihoodConfig:
    return LikelihoodConfig(**field_values(args, LikelihoodConfig.__dataclass_fields__))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _perplexity(args: argparse.Namespace) -> int:
    lcfg = _lcfg(args)
    ck = load(args)
    limit = ck.config.model.max_seq_len
    window = args.window or min(ck.config.train.seq_len, limit)
    if not 2 <= window <= limit:
        raise RemaskError(f"--window {window} must be in 2..{limit} (the model context)")
    texts = (d.text for d in iter_documents(args.data))
    if args.limit is not None:
        texts = iter(_limit(list(texts), args.limit))
    res = perplexity(ck.model, ck.tokenizer, texts, window=window, stride=args.stride, cfg=lcfg,
                     progress=not args.json)
    res = {"ckpt": str(ck.path), **res, **({} if res["bound"] == "exact" else
                                            {"mc_num": lcfg.mc_num, "estimator": lcfg.estimator,
                                             "target_stderr": lcfg.target_stderr})}
    kind = "exact" if res["bound"] == "exact" else f"ELBO bound, ±{res['stderr_nats_per_token']:.4f}"
    emit(args, res, f"{res['nats_per_token']:.4f} nats/token ({kind}), {res['bits_per_byte']:.4f} bits/byte, "
                    f"perplexity {res['perplexity']:.2f} over {res['tokens']:,} tokens in {res['documents']} documents")
    return 0


def _completion(args: argparse.Namespace) -> int:
    records = _limit(read_jsonl(args.data, ("prompt", "completion")), args.limit)
    if args.batch_size <= 0:
        raise RemaskError(f"--batch-size must be positive, got {args.batch_size}")
    ck = load(args)
    sample = sample_config(args, causal=is_causal(ck.model))
    metrics, rows = completion_accuracy(ck.model, ck.tokenizer, records, sample, chat=args.chat,
                                        batch_size=args.batch_size)
    if args.out is not None:
        _write_jsonl(args.out, rows)
    emit(args, {"ckpt": str(ck.path), **metrics, "out": str(args.out) if args.out else None},
         f"exact match {metrics['exact_match']:.3f}, contains {metrics['contains']:.3f} over {metrics['n']} records")
    return 0


def _choice(args: argparse.Namespace) -> int:
    records = _limit(read_jsonl(args.data, ("prompt", "choices", "answer")), args.limit)
    lcfg = _lcfg(args)
    ck = load(args)
    metrics, rows = choice_accuracy(ck.model, ck.tokenizer, records, lcfg, norm=args.norm)
    if args.out is not None:
        _write_jsonl(args.out, rows)
    emit(args, {"ckpt": str(ck.path), **metrics, "out": str(args.out) if args.out else None},
         f"acc_norm {metrics['acc_norm']:.3f} (per {metrics['norm']}), acc {metrics['acc']:.3f} "
         f"over {metrics['n']} records")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"perplexity": _perplexity, "completion": _completion, "choice": _choice}[args.eval_task](args)
