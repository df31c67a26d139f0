"""Supervised fine-tuning (LLaDA SFT) on chat data, with the one training loop.

    remask sft --ckpt runs/base --data chats.jsonl --out runs/chat        # from a pre-trained model
    remask sft --data chats.jsonl --out runs/chat --preset tiny            # or from scratch
    remask sft --data chats.jsonl --out runs/ar --objective ar             # the AR baseline, same data
    remask sft --out runs/chat --resume --max-steps 2000                   # continue exactly

    from remask.sft import sft
    result = sft("chats.jsonl", "runs/chat", init_from="runs/base")

Progress, checkpoints, metrics and resume are those of ``remask train`` (``remask.train.loop``);
only the batches differ (``remask.data.sft.SFTBatches``). The run's data options are saved in
``OUT/sft.json`` so ``--resume`` rebuilds exactly the same batches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from remask.checkpoint import guard_run_dir, read_config, resolve_checkpoint
from remask.config import RunConfig, preset_small
from remask.data.sft import SFTBatches, read_records, split_val, tokenize_records
from remask.data.template import DEFAULT_TEMPLATE
from remask.data.tokenizer import load_tokenizer
from remask.errors import RemaskError
from remask.fileio import write_text_atomic
from remask.train.loop import TrainResult, train

OPTIONS_FILE = "sft.json"
PADDING_STEPS = 256  # steps over which the padding fraction is measured (cheap: index draws only)


@dataclass
class SFTResult:
    train: TrainResult
    examples: int  # training examples (a split multi-turn record counts once per pair)
    val_examples: int
    skipped: int  # bad or too-long records skipped with skip_bad
    padding_fraction: float  # share of training tokens that are EOS padding, with bucketing
    padding_fraction_unbucketed: float  # the same batches drawn without bucketing, for comparison

    def to_json(self) -> dict[str, Any]:
        return {**self.train.to_json(), "examples": self.examples, "val_examples": self.val_examples,
                "skipped": self.skipped, "padding_fraction": round(self.padding_fraction, 4),
                "padding_fraction_unbucketed": round(self.padding_fraction_unbucketed, 4)}


def _digest(examples: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(e.ids.tobytes())
        h.update(e.prompt.tobytes())
    return h.hexdigest()[:16]


def _read_run(out_dir: Path) -> tuple[dict[str, Any], RunConfig, Any]:
    """A run's saved SFT options, its config and its tokenizer (for --resume)."""
    from remask.data.tokenizer import load_tokenizer

    ckpt = resolve_checkpoint(out_dir)
    opts_file = out_dir / OPTIONS_FILE
    if not opts_file.is_file():
        raise RemaskError(f"--resume: '{opts_file}' is missing, so '{out_dir}' is not an SFT run; "
                          "resume it with `remask train --resume`")
    return json.loads(opts_file.read_text()), read_config(ckpt), load_tokenizer(ckpt)


def sft(data: str | Path | Sequence[str | Path] | None, out_dir: str | Path, *, cfg: RunConfig | None = None,
        init_from: str | Path | None = None, resume: bool = False, overwrite: bool = False, tokenizer: Any = None,
        objective: str | None = None, template: str | None = None, split_turns: bool = False,
        skip_bad: bool = False, val_fraction: float = 0.05, buckets: int = 8,
        callback: Callable[[int, float], None] | None = None) -> SFTResult:
    """Fine-tune on chat records (``.jsonl``: OpenAI messages or {prompt, response}) into ``out_dir``.

    cfg: the run config (default: the small preset; with ``init_from`` only its train part is
    used). objective: "sft" (LLaDA SFT, default) or "ar" (next-token on the answers, causal).
    init_from: a base checkpoint (else a fresh model from ``tokenizer``, default bytes).
    template: a Jinja2 chat template (default: the tokenizer's own, else LLaDA's layout); it is
    saved with the tokenizer. split_turns: one single-turn pair per assistant turn. skip_bad:
    skip (and count) bad or too-long records instead of failing. buckets: length buckets.
    overwrite: replace a checkpoint already in ``out_dir`` (refused otherwise).
    resume: continue ``out_dir`` exactly, with the data options saved there (``cfg`` then only
    sets the new max_steps / time_budget; None keeps the run's own).
    """
    from remask.data.tokenizer import load_tokenizer

    out_dir = Path(out_dir)
    guard_run_dir(out_dir, resume=resume, overwrite=overwrite)
    if resume:
        opts, run_cfg, tok = _read_run(out_dir)
        data = data if data else opts["data"]
        t = run_cfg.train
        cfg = cfg if cfg is not None else run_cfg  # (its max_steps and time_budget may extend the run)
    else:
        cfg = cfg if cfg is not None else preset_small()
        objective = objective or (cfg.train.objective if cfg.train.objective in ("sft", "ar") else "sft")
        if objective not in ("sft", "ar"):
            raise RemaskError(f"--objective must be sft or ar, got {objective!r}")
        if not data:
            raise RemaskError("no SFT data given; pass --data FILE.jsonl")
        t = replace(cfg.train, objective=objective)
        if init_from is not None:
            base = resolve_checkpoint(init_from)
            base_cfg = read_config(base)
            if base_cfg.model.causal != (objective == "ar"):
                kind = "causal (AR)" if base_cfg.model.causal else "bidirectional (MDM)"
                raise RemaskError(f"--ckpt {init_from} is a {kind} model; use --objective "
                                  f"{'ar' if base_cfg.model.causal else 'sft'} with it")
            tok = load_tokenizer(base)
        else:
            tok = load_tokenizer(tokenizer)
        paths = [data] if isinstance(data, (str, Path)) else list(data)
        opts = {"data": [str(Path(p).resolve()) for p in paths], "split_turns": split_turns, "skip_bad": skip_bad,
                "val_fraction": val_fraction, "buckets": buckets,
                "template": template or tok.chat_template or DEFAULT_TEMPLATE}
    tok.chat_template = opts["template"]

    records, bad = read_records(data, skip_bad=opts["skip_bad"])
    examples, too_long = tokenize_records(records, tok, seq_len=t.seq_len, split_turns=opts["split_turns"],
                                          skip_bad=opts["skip_bad"])
    digest = _digest(examples)
    if resume and opts.get("digest") not in (None, digest):
        raise RemaskError(f"--data {data} no longer gives the examples this run was trained on; "
                          "resume with the original data files")
    train_ex, val_ex = split_val(examples, opts["val_fraction"], t.seed)
    source = SFTBatches(train_ex, val_ex, batch_size=t.batch_size, seed=t.seed, eos_id=tok.eos_id,
                        n_buckets=opts["buckets"])
    if not resume:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / OPTIONS_FILE, json.dumps({**opts, "digest": digest}, indent=2) + "\n")
        cfg = RunConfig(model=cfg.model, train=replace(t, samples=0))  # unconditional samples mean nothing here

    res = train(cfg, out_dir, tokenizer=tok, source=source, init_from=None if resume else init_from,
                resume=resume, overwrite=overwrite, callback=callback)
    _store_template(res.checkpoint, opts["template"])

    steps = min(res.step or 1, PADDING_STEPS)
    flat = SFTBatches(train_ex, val_ex, batch_size=t.batch_size, seed=t.seed, eos_id=tok.eos_id, n_buckets=1)
    return SFTResult(res, len(source.train), len(val_ex), bad + too_long, source.padding_fraction(steps),
                     flat.padding_fraction(steps))


def _store_template(ckpt: Path, template: str) -> None:
    """Make sure the checkpoint's tokenizer carries the run's chat template. (A run started from a
    base checkpoint saves the base's tokenizer object, which may have none.)"""

    tok = load_tokenizer(ckpt)
    if tok.chat_template != template:
        tok.chat_template = template
        tok.save(ckpt)
