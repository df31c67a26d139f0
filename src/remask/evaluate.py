"""Evaluation: perplexity (a bound for MDMs, exact for AR), completion accuracy, multiple choice.

    remask eval perplexity --ckpt runs/x --data valid.txt            # nats/token and bits/byte
    remask eval completion --ckpt runs/x --data qa.jsonl --gen-length 32 --out preds.jsonl
    remask eval choice     --ckpt runs/x --data mc.jsonl

Every command prints one JSON object with ``--json``. The same functions are importable:
``perplexity``, ``completion_accuracy`` and ``choice_accuracy`` take a model and a tokenizer, so
a Python user (or the lm-eval adapter) scores without the command line. An AR checkpoint
(``causal=True``) is scored exactly and decoded left to right; an MDM gets the Monte Carlo ELBO
(``remask.likelihood``) and LLaDA's sampler.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from remask.errors import RemaskError
from remask.likelihood import (
    LikelihoodConfig,
    ar_logliks,
    elbo,
    rolling_windows,
    windows_loglik,
)
from remask.model import is_causal
from remask.sampling.config import DecodeConfig
from remask.sampling.decode import decode
from remask.sampling.stream import trim_eos

NORMS = ("token", "byte", "none")


# ----------------------------------------------------------------------------- inputs

def read_jsonl(path: str | Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """Records of a .jsonl file, each checked to hold ``fields``; a bad line names itself."""
    path = Path(path)
    if not path.is_file():
        raise RemaskError(f"--data file '{path}' does not exist; pass a .jsonl file with fields {', '.join(fields)}")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise RemaskError(f"{path}:{n} is not valid JSON ({e.msg}); write one JSON object per line") from None
        missing = [f for f in fields if not isinstance(rec, dict) or f not in rec]
        if missing:
            raise RemaskError(f"{path}:{n} lacks field(s) {', '.join(missing)}; each line needs {', '.join(fields)}")
        records.append(rec)
    if not records:
        raise RemaskError(f"--data file '{path}' holds no records")
    return records


def encode_pair(tok: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) cut from the encoding of the joined text.

    Trailing whitespace of the context moves to the continuation, and the continuation is what
    follows the context's own encoding inside ``encode(context + continuation)``, so a BPE
    tokenizer scores the tokens it would really produce.
    """
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    ctx = tok.encode(context) if context else []
    whole = tok.encode(context + continuation)
    if whole[:len(ctx)] != ctx:  # the tokenizer merged across the boundary: encode separately
        return ctx, tok.encode(continuation)
    return ctx, whole[len(ctx):]


def render_chat(tok: Any, prompt: str) -> str:
    """The prompt as one user turn of the chat template (the tokenizer's, else LLaDA's layout),
    ending with the assistant header."""
    from remask.data.template import render

    return render([{"role": "user", "content": prompt}], tok, add_generation_prompt=True)


# ----------------------------------------------------------------------------- perplexity

def perplexity(model: Any, tok: Any, texts: Iterable[str], *, window: int, stride: int | None = None,
               cfg: LikelihoodConfig | None = None, batch_size: int = 16, progress: bool = False) -> dict[str, Any]:
    """Negative log-likelihood per token and per byte of ``texts`` (each a separate document).

    Each document is scored after an EOS (a document start in training), in windows of at most
    ``window`` tokens that each predict ``stride`` new tokens (default ``window - 1``: disjoint
    windows). AR: exact. MDM: the sum of per-window ELBOs, so nats/token is an upper bound on the
    true value (up to Monte Carlo error, reported as ``stderr_nats_per_token``). With
    ``cfg.target_stderr`` (nats/token) an MDM's samples per window are chosen to reach that error
    of the corpus figure (``likelihood.elbo_sum``) instead of ``cfg.mc_num`` for every window.
    ``progress`` shows a bar with the forward passes done and an ETA.
    """
    cfg = cfg or LikelihoodConfig()
    stride = window - 1 if stride is None else stride
    streams, n_bytes = [], 0
    for text in texts:
        ids = tok.encode_array(text).tolist()  # as `remask prepare` tokenises training text
        if ids:
            streams.append([tok.eos_id, *ids])
            n_bytes += len(text.encode("utf-8"))
    tokens = sum(len(s) - 1 for s in streams)
    if tokens == 0:
        raise RemaskError("--data holds no text to score")
    total = windows_loglik(model, streams, window=window, stride=stride, cfg=cfg, mask_id=tok.mask_id,
                           batch_size=batch_size, progress=progress,
                           target_stderr=None if cfg.target_stderr is None else cfg.target_stderr * tokens)
    nll = -total.value / tokens
    n_windows = sum(len(rolling_windows(len(s), window, stride)) for s in streams)
    return {"bound": "exact" if is_causal(model) else "elbo", "nats_per_token": nll,
            "bits_per_byte": -total.value / math.log(2) / n_bytes, "perplexity": math.exp(min(nll, 700.0)),
            "stderr_nats_per_token": total.stderr / tokens, "tokens": tokens, "bytes": n_bytes,
            "documents": len(streams), "windows": n_windows, "window": window, "stride": stride,
            "mc_samples": total.n}


# ----------------------------------------------------------------------------- completion

def decode_until_end(tok: Any, ids: Sequence[int]) -> str:
    """Text of generated ids up to the first EOS / end-of-turn token."""
    return tok.decode(trim_eos(ids, tok.eos_id, getattr(tok, "eot_id", None)), skip_special_tokens=True)


def generate_texts(model: Any, tok: Any, prompts: Sequence[Sequence[int]], sample: DecodeConfig, *,
                   batch_size: int = 8) -> list[str]:
    """Continuations of tokenised prompts with the model's own decoder: LLaDA's sampler for an MDM,
    left to right for AR (``sample``'s shared settings carry over; see ``sampling.decode``)."""
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) if p else [tok.eos_id] for p in prompts[start:start + batch_size]]
        rows = decode(model, chunk, sample, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id).tokens
        out.extend(decode_until_end(tok, row.tolist()) for row in rows)
    return out


def completion_accuracy(model: Any, tok: Any, records: Sequence[dict[str, Any]], sample: DecodeConfig, *,
                        chat: bool = False, batch_size: int = 8) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate for each {"prompt", "completion"} record; exact-match and contains accuracy.

    Both compare whitespace-stripped text: exact match, and the reference occurring anywhere in
    the prediction. Returns (metrics, one prediction record per input).
    """
    texts = [render_chat(tok, r["prompt"]) if chat else r["prompt"] for r in records]
    preds = generate_texts(model, tok, [tok.encode(t) for t in texts], sample, batch_size=batch_size)
    rows = []
    for rec, pred in zip(records, preds):
        ref = str(rec["completion"]).strip()
        rows.append({"prompt": rec["prompt"], "completion": rec["completion"], "prediction": pred,
                     "exact_match": pred.strip() == ref, "contains": ref in pred})
    n = len(rows)
    metrics = {"exact_match": sum(r["exact_match"] for r in rows) / n, "contains": sum(r["contains"] for r in rows) / n,
               "n": n}
    return metrics, rows


# ----------------------------------------------------------------------------- multiple choice

def _answer_index(rec: dict[str, Any], where: str) -> int:
    choices, answer = rec["choices"], rec["answer"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise RemaskError(f"{where}: 'choices' must be a list of at least two strings")
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return answer
    if isinstance(answer, str) and answer in choices:
        return choices.index(answer)
    raise RemaskError(f"{where}: 'answer' must be an index into 'choices' (0..{len(choices) - 1}) or one of them")


def score_options(model: Any, tok: Any, prompt: str, options: Sequence[str], cfg: LikelihoodConfig | None = None,
                  *, key: int = 0) -> list[tuple[float, int]]:
    """(log-likelihood, token count) of each option after ``prompt``.

    An MDM scores every option with the same noise key (common random numbers), so the
    Monte Carlo error partly cancels when options are compared.
    """
    pairs = []
    for opt in options:
        ctx, cont = encode_pair(tok, prompt, opt)
        pairs.append((ctx or [tok.eos_id], cont))  # an empty prompt starts a document
    if is_causal(model):
        values = [v for v, _ in ar_logliks(model, pairs)]
    else:
        values = [elbo(model, c, a, cfg, mask_id=tok.mask_id, key=key).value for c, a in pairs]
    return [(v, len(a)) for v, (_, a) in zip(values, pairs)]


def choice_accuracy(model: Any, tok: Any, records: Sequence[dict[str, Any]], cfg: LikelihoodConfig | None = None,
                    *, norm: str = "token") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Multiple choice by likelihood: ``acc`` picks the highest log-likelihood, ``acc_norm`` the
    highest per token (``norm="token"``) or per UTF-8 byte (``"byte"``) of the option."""
    if norm not in NORMS:
        raise RemaskError(f"--norm {norm!r} is not known; choose one of {', '.join(NORMS)}")
    rows = []
    for i, rec in enumerate(records):
        gold = _answer_index(rec, f"record {i + 1}")
        scores = score_options(model, tok, rec["prompt"], rec["choices"], cfg, key=i)
        lengths = {"token": [max(1, n) for _, n in scores],
                   "byte": [max(1, len(c.encode("utf-8"))) for c in rec["choices"]],
                   "none": [1] * len(scores)}[norm]
        raw = [v for v, _ in scores]
        normed = [v / n for v, n in zip(raw, lengths)]
        pick, pick_norm = max(range(len(raw)), key=raw.__getitem__), max(range(len(raw)), key=normed.__getitem__)
        rows.append({"prompt": rec["prompt"], "answer": gold, "loglik": raw, "pred": pick, "pred_norm": pick_norm,
                     "correct": pick == gold, "correct_norm": pick_norm == gold})
    n = len(rows)
    return {"acc": sum(r["correct"] for r in rows) / n, "acc_norm": sum(r["correct_norm"] for r in rows) / n,
            "norm": norm, "n": n}, rows
