"""Which decoding settings give a briefly trained MDM's end-of-training samples that read best.

    python benchmarks/final_samples.py --ckpt RUN_MDM --judge RUN_AR          # two runs on the same data
    python benchmarks/final_samples.py --ckpt RUN_MDM --judge RUN_AR --samples 48

``remask train`` ends by printing a few unconditional samples (``remask.train.loop.final_samples``:
prompt = end-of-text, 64 tokens). A small MDM trained for minutes decoded by LLaDA's low-confidence
rule commits its most certain guess, whitespace, everywhere first; this script measures the settings
that might avoid it. Each setting decodes ``--samples`` unconditional samples (seeds 0..n-1) and is
scored by an AR judge trained on the same data (``--judge``):

- judge ppl: exp(mean NLL per generated token under the AR judge), lower reads better, but a sample of
  repeated spaces or letters also scores low, hence the next columns;
- whitespace: the fraction of generated tokens that are whitespace (the failure above);
- distinct bigrams: distinct token bigrams / bigrams over each sample (repetition lowers it);
- unigram H: entropy in bits of each sample's own token distribution.

The real validation text's figures (same length, same judge) are the reference row.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from common import command_line, date, machine, publish, table
from sample_quality import distinct_pairs, judge_nll, unigram_entropy

# name -> SampleConfig fields; the first is what remask train used before this benchmark.
SETTINGS: dict[str, dict[str, Any]] = {
    "random, blocks of 8, T 0.8": {"remasking": "random", "block_length": 8, "temperature": 0.8},
    "random, one block, T 0.8": {"remasking": "random", "temperature": 0.8},
    "random, blocks of 8, T 1.0": {"remasking": "random", "block_length": 8, "temperature": 1.0},
    "low_confidence, blocks of 8, T 0.8": {"remasking": "low_confidence", "block_length": 8, "temperature": 0.8},
    "low_confidence, blocks of 8, T 1.0": {"remasking": "low_confidence", "block_length": 8, "temperature": 1.0},
    "low_confidence, blocks of 4, T 1.0": {"remasking": "low_confidence", "block_length": 4, "temperature": 1.0},
    "low_confidence, one block, T 1.0": {"remasking": "low_confidence", "temperature": 1.0},
    "margin, blocks of 8, T 1.0": {"remasking": "margin", "block_length": 8, "temperature": 1.0},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, required=True, help="the MDM run or checkpoint")
    ap.add_argument("--judge", type=Path, required=True, help="an AR run or checkpoint trained on the same data")
    ap.add_argument("--samples", type=int, default=32, help="samples per setting")
    ap.add_argument("--gen", type=int, default=64, help="tokens per sample (remask train's end-of-training length)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "final_samples.md")
    return ap.parse_args(argv)


def scores(judge: torch.nn.Module, tok: Any, rows: list[list[int]]) -> dict[str, float]:
    """Judge perplexity, whitespace share, distinct bigrams and unigram entropy over ``rows`` (token ids)."""
    nll = count = space = 0.0
    distinct, entropy = [], []
    for ids in rows:
        token_nll = judge_nll(judge, [tok.eos_id, *ids], 1)
        nll, count = nll + sum(token_nll), count + len(token_nll)
        space += sum(tok.decode([i]).isspace() for i in ids)
        distinct.append(distinct_pairs(ids, empty=0.0))
        entropy.append(unigram_entropy(ids))
    n_tok = sum(len(r) for r in rows)
    return {"ppl": math.exp(nll / max(count, 1)), "space": space / max(n_tok, 1),
            "distinct": sum(distinct) / len(rows), "entropy": sum(entropy) / len(rows)}


@torch.no_grad()
def decode_setting(model: Any, tok: Any, fields: dict[str, Any], n: int, gen: int) -> list[list[int]]:
    """``n`` unconditional samples, one seed each, as final_samples draws them (prompt: EOS)."""
    from remask.sampling import SampleConfig, decode

    rows = []
    for seed in range(n):
        sc = SampleConfig(gen_length=gen, seed=seed, **fields)
        out = decode(model, [[tok.eos_id]], sc, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id)
        rows.append([i for i in out.tokens[0].tolist() if i not in (tok.eos_id, tok.mask_id)])
    return rows


def main() -> None:
    from remask.checkpoint import load_model
    from remask.data.shards import TokenData

    args = parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.ckpt)
    judge, _ = load_model(args.judge)
    model.eval()
    judge.eval()
    data = Path(args.ckpt)
    data = next((p / "data" for p in (data, *data.parents) if (p / "data" / "meta.json").exists()), None)
    rows = []
    if data is not None:  # the real text at the same length: the reference row
        val = TokenData(data, "val")
        real = [val.get(int(i * (len(val) - args.gen) / args.samples), args.gen).tolist() for i in range(args.samples)]
        rows.append(["real validation text", *fmt(scores(judge, tok, real))])
    examples = []
    for name, fields in SETTINGS.items():
        decoded = decode_setting(model, tok, fields, args.samples, args.gen)
        rows.append([name, *fmt(scores(judge, tok, decoded))])
        examples.append(f"**{name}**\n\n```text\n{tok.decode(decoded[0])}\n```")
        print(rows[-1], flush=True)
    text = f"""# final_samples

End-of-training samples: decoding settings for a briefly trained MDM, scored by an AR judge on the same
data ({args.samples} unconditional samples of {args.gen} tokens per setting).

- command: `{command_line()}`
- date: {date()}
- machine: {machine()}
- MDM: `{args.ckpt}` ({model.num_params():,} parameters); judge: `{args.judge}`

{table(["setting", "judge ppl", "whitespace", "distinct bigrams", "unigram H (bits)"], rows)}

The first sample (seed 0) of each setting:

{chr(10).join(examples)}
"""
    print(text)
    publish(text, args.results)


def fmt(s: dict[str, float]) -> list[str]:
    return [f"{s['ppl']:.2f}", f"{s['space']:.2f}", f"{s['distinct']:.2f}", f"{s['entropy']:.2f}"]


if __name__ == "__main__":
    main()
