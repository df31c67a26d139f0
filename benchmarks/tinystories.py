"""TinyStories for the benchmarks: the train head, repaired, one story per document, and a BPE for it.

The slice is ``tinystories/tinystories_train_head_smallGPT.txt`` under the dataset root (see
``../shared/data/tinystories/SOURCES.md``; the text is CDLA-Sharing-1.0). In that file a story's
paragraphs are separated by a blank line and stories by a lone newline, so a newline with no other
newline beside it ends a story. The v1 encoding bug (UTF-8 read as cp1252) is undone first: the
three-character sequences become their punctuation, then a bare leftover ``â€`` is the closing
quote whose third byte was dropped.

``prepare_stories`` writes the stories as one .jsonl (a document each, so every story ends in EOS),
trains a byte-level BPE on the training stories only (prepare's hash split decides which those are)
and tokenises both splits with it.

A model pre-trained on packed stories starts a new story after an EOS, so it never learns that a
story ends and its canvas stays text to the last column. ``finetune_stories`` (the command below)
fine-tunes it the way LLaDA's SFT teaches an answer to stop: each training story becomes an
example whose first ``--prompt-length`` tokens are the prompt (never masked) and whose rest, its
EOS and the EOS padding (to the batch's longest story, or with ``--pad-to`` to a random longer
length) are the answer. sampling.py's prompts are the starts of held-out stories, as in training.
A model that ends its stories would let parallel rules commit the EOS tail at once, as LLaDA-8B's
answers let Fast-dLLM; on the 2.6M-parameter model it did not work (BENCHMARKS.md, "A story model
that stops"): at gen_length 1024 every decoder ends the story within a few tokens::

    python benchmarks/tinystories.py --ckpt runs/sampling-tinystories/mdm2/run \
        --work-dir runs/sampling-tinystories --seconds 300 --lr 1e-3 --pad-to 1056   # -> WORK/sft/run
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch

from remask.data.sft import SFTBatches
from remask.rng import keyed_generator

TINYSTORIES = "tinystories/tinystories_train_head_smallGPT.txt"  # relative to the dataset root

# cp1252 readings of UTF-8 punctuation, longest first; the bare prefix last (see SOURCES.md)
MOJIBAKE = {"â€œ": "\u201c", "â€™": "\u2019", "â€“": "\u2013", "â€”": "\u2014", "â€˜": "\u2018", "â€Š": "\u200a",
            "â€": "\u201d"}
PAD_STREAM = 4  # rng stream of PaddedStories' lengths (remask.rng uses 0..2, SFT's bucket choice 3)
STORY_END = re.compile(r"(?<!\n)\n(?!\n)")  # a lone newline


def repair(text: str) -> str:
    """Undo the v1 TinyStories mojibake: ``â€™`` -> ``’`` and so on, then ``â€`` -> ``”``."""
    for bad, good in MOJIBAKE.items():
        text = text.replace(bad, good)
    return text


def stories(path: Path) -> list[str]:
    """The stories of the train head, repaired and stripped, in file order."""
    pieces = STORY_END.split(repair(path.read_text(encoding="utf-8")))
    return [s.strip() for s in pieces if s.strip()]


def prepare_stories(path: Path, work: Path, vocab_size: int, val_fraction: float) -> tuple[Any, dict[str, Any]]:
    """Stories -> ``work/stories.jsonl``, a BPE trained on the training ones, ``work/data`` prepared with it.

    Returns (the tokenizer, prepare's metadata).
    """
    from remask.data.corpus import is_validation, iter_documents
    from remask.data.prepare import prepare
    from remask.data.tokenizer import train_bpe

    corpus = work / "stories.jsonl"
    corpus.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories(path)), encoding="utf-8")
    train_texts = [d.text for d in iter_documents([corpus]) if not is_validation(d.id, val_fraction)]
    tok = train_bpe(train_texts, vocab_size)
    return tok, prepare([corpus], work / "data", tok, val_fraction=val_fraction)


def story_examples(data_dir: Path, split: str, eos_id: int, prompt_len: int, max_len: int) -> tuple[list[Any], int]:
    """The split's stories (prepared by ``prepare_stories``) as LLaDA SFT examples: the first ``prompt_len``
    tokens the prompt, the rest and the story's EOS the answer -> (examples, stories left out: longer than
    ``max_len`` tokens with their EOS, which would teach cut-off stories, or no longer than the prompt)."""
    import numpy as np

    from remask.data.sft import Example
    from remask.data.shards import TokenData

    data = TokenData(data_dir, split)
    ids = data.get(0, len(data))  # (N,) stories, each ended by EOS
    ends = (ids == eos_id).nonzero()[0] + 1  # one past each story's EOS
    examples, left_out = [], 0
    for lo, hi in zip([0, *ends[:-1].tolist()], ends.tolist()):
        if not prompt_len < hi - lo <= max_len:
            left_out += 1
            continue
        prompt = np.zeros(hi - lo, dtype=bool)
        prompt[:prompt_len] = True
        examples.append(Example(ids[lo:hi].astype(np.int64), prompt, f"{split} story at token {lo}"))
    return examples, left_out


class PaddedStories(SFTBatches):
    """SFT batches EOS-padded to a random length between their longest story and ``pad_to`` (keyed by (seed,
    step)): the model sees the long all-EOS tail of a canvas far longer than its story (gen_length 1024) as
    well as short ones; LLaDA's padding to the batch's longest would show only the latter."""

    def __init__(self, *args: Any, pad_to: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pad_to = pad_to

    def step_length(self, step: int) -> int:
        longest = super().step_length(step)
        rng = keyed_generator(self.seed, step, 0, PAD_STREAM)
        return int(rng.integers(longest, max(longest, self.pad_to) + 1))


def finetune_stories(args: argparse.Namespace) -> dict[str, Any]:
    """LLaDA SFT of ``--ckpt`` on story completion -> ``WORK/sft/run`` (its best validation in RUN/best)."""
    from remask.checkpoint import read_config, resolve_checkpoint
    from remask.config import RunConfig, TrainConfig
    from remask.data.sft import split_val
    from remask.data.tokenizer import load_tokenizer
    from remask.train.loop import train

    torch.set_num_threads(args.threads)
    base = resolve_checkpoint(args.ckpt)
    tok = load_tokenizer(base)
    examples, left_out = story_examples(args.work_dir / "data", "train", tok.eos_id, args.prompt_length, args.max_len)
    train_ex, val_ex = split_val(examples, 0.05, args.seed)
    # One length bucket by default: a batch mixes story lengths, so short stories carry long EOS tails (the
    # canvas at sampling time is mostly EOS after a story ends; length buckets would hide that).
    source = PaddedStories(train_ex, val_ex, batch_size=args.batch_size, seed=args.seed, eos_id=tok.eos_id,
                           n_buckets=args.buckets, pad_to=args.pad_to)
    t = TrainConfig(objective="sft", seed=args.seed, batch_size=args.batch_size, seq_len=max(args.max_len, args.pad_to),
                    max_steps=10**7, time_budget=args.seconds, lr_clock="time", lr=args.lr, warmup_steps=50,
                    optimizer="muon", eval_interval=50, eval_batches=8, eval_mc=1, early_stop_patience=10**6,
                    ckpt_interval=0, log_interval=5, progress=False, samples=0, dtype="auto", compile=True,
                    t_sampling="stratified")
    cfg = RunConfig(model=read_config(base).model, train=t)
    res = train(cfg, args.work_dir / "sft" / "run", tokenizer=tok, source=source, init_from=base)
    out = {**res.to_json(), "seq_len": t.seq_len, "batch_size": args.batch_size,
           "continued_from": f"{args.ckpt} by story-completion SFT ({len(train_ex)} stories, {left_out} left out, "
                             f"lr {args.lr}, {args.buckets} length bucket(s), padded to <= {args.pad_to or 'the longest'})"}
    (args.work_dir / "sft" / "result.json").write_text(json.dumps(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="Fine-tune a TinyStories MDM to end its stories (LLaDA SFT).")
    ap.add_argument("--ckpt", type=Path, required=True, help="the pre-trained MDM (sampling.py --train-only)")
    ap.add_argument("--work-dir", type=Path, required=True, help="sampling.py's --work-dir (its data/ is used)")
    ap.add_argument("--seconds", type=float, default=1200.0, help="training budget (the LR schedule runs on it)")
    ap.add_argument("--prompt-length", type=int, default=32, help="prompt tokens: sampling.py's prompts")
    ap.add_argument("--max-len", type=int, default=512, help="longest story kept, in tokens with its EOS")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--buckets", type=int, default=1, help="SFT length buckets (1: every batch mixes lengths)")
    ap.add_argument("--pad-to", type=int, default=0, help="EOS-pad each batch to a random length up to this "
                                                          "(e.g. prompt + 1024; 0: to its longest story, as LLaDA)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    r = finetune_stories(ap.parse_args())
    print(f"story SFT: {r['step']} steps in {r['elapsed_s']:.0f}s, val loss {r['val_loss']:.3f} "
          f"-> {r['checkpoint']}")


if __name__ == "__main__":
    main()
