"""How good a generated sample is, for sampling.py: the AR judge's NLL per token, repetition, endings,
and what committing neighbours together does.

* judge NLL: the AR judge's NLL of each generated token given the prompt and the sample before it
  (a sliding window, each scored token seeing at least half the judge's window of context).
* distinct word bigrams: the share of a sample's word bigrams (lower-cased, split on white space)
  that are distinct; repetition lowers it, where a low judge perplexity alone may just be repetition.
* whole-sentence ending: the sample's text up to its first EOS (the end of the story), or all of it if
  it has none, ends with a sentence (``.``, ``!`` or ``?``, maybe followed by a closing quote).
* neighbours committed together: over adjacent generated positions, the share decided by the same
  forward pass, and the judge NLL of tokens committed in the same pass as a neighbour vs alone, which
  is where parallel decoding breaks (two neighbours each likely alone, unlikely together).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)]*$")


@torch.inference_mode()
def judge_nll(judge: torch.nn.Module, ids: list[int], first: int) -> list[float]:
    """The AR judge's NLL (nats) of each of ids[first:], each token seeing up to a window of context."""
    window = judge.cfg.max_seq_len
    device = next(judge.parameters()).device
    x = torch.tensor(ids, device=device)
    out: list[float] = []
    pos = max(first, 1)
    if first == 0:
        out.append(math.nan)  # the first token has no context to be predicted from
    while pos < len(ids):
        lo = max(0, pos - window // 2)  # at least half a window of context for every scored token
        hi = min(len(ids), lo + window)
        logp = judge(x[None, lo:hi]).float().log_softmax(-1)[0]  # (hi - lo, V)
        out += (-logp[pos - lo - 1:hi - lo - 1].gather(-1, x[pos:hi, None])).flatten().tolist()
        pos = hi
    return out


def unigram_entropy(ids: list[int]) -> float:
    """Bits per token of the sample's own token distribution."""
    counts = Counter(ids)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def distinct_pairs(items: Sequence[Hashable], empty: float = math.nan) -> float:
    """Distinct adjacent pairs / adjacent pairs of ``items`` (1.0: no pair repeats; ``empty`` without a pair)."""
    pairs = list(itertools.pairwise(items))
    return len(set(pairs)) / len(pairs) if pairs else empty


def distinct_bigrams(text: str) -> float:
    """Distinct word bigrams / word bigrams of ``text`` (lower-cased, split on white space)."""
    return distinct_pairs(text.lower().split())


def story_of(ids: list[int], eos_id: int) -> list[int]:
    """The ids up to the first EOS (the end of the story), or all of them."""
    return ids[:ids.index(eos_id)] if eos_id in ids else ids


def unpadded(ids: list[int], eos_id: int) -> list[int]:
    """``ids`` without EOS padding: cut after the first EOS when only EOS follow it (a model that ends its
    story pads the canvas with EOS, which is not text to score); unchanged when text follows the EOS (a
    model trained on packed documents starts the next one)."""
    if eos_id not in ids:
        return ids
    end = ids.index(eos_id) + 1
    return ids[:end] if all(t == eos_id for t in ids[end:]) else ids


def whole_sentence(text: str) -> bool:
    """``text`` (a story up to its EOS) ends with a whole sentence."""
    return bool(SENTENCE_END.search(text.rstrip()))


def commit_steps(events: list[Any], first: int, length: int, row: int = 0) -> list[int]:
    """The forward pass (index of the ``StepEvent``) that committed each of the ``length`` columns from
    ``first`` on, for ``row``."""
    step = [-1] * length
    for k, e in enumerate(events):
        for c in e.committed[row, first:first + length].nonzero().flatten().tolist():
            step[c] = k
    return step


@dataclass
class Quality:
    """Sums over samples, turned into the report's figures by ``figures``."""

    nll: list[float] = field(default_factory=list)  # per generated token
    together: list[bool] = field(default_factory=list)  # per generated token: a neighbour shares its pass
    bigrams: list[float] = field(default_factory=list)  # per sample
    endings: list[bool] = field(default_factory=list)  # per sample
    story_tokens: list[float] = field(default_factory=list)  # per sample: tokens before the first EOS
    ended: list[float] = field(default_factory=list)  # per sample: 1.0 if it has an EOS
    entropy: list[float] = field(default_factory=list)  # per sample
    pairs: int = 0  # adjacent generated pairs
    same_pass: int = 0  # ... decided by one forward pass

    def add(self, nll: list[float], steps: list[int], ids: list[int], story: str, eos_id: int) -> None:
        """One sample: its tokens' judge NLL, commit passes and ids, and its text up to the first EOS."""
        self.story_tokens.append(float(len(story_of(ids, eos_id))))
        self.ended.append(float(eos_id in ids))
        self.nll += nll
        self.pairs += len(steps) - 1
        self.same_pass += sum(a == b for a, b in itertools.pairwise(steps))
        self.together += [(i > 0 and steps[i - 1] == s) or (i + 1 < len(steps) and steps[i + 1] == s)
                          for i, s in enumerate(steps)]
        self.bigrams.append(distinct_bigrams(story))
        self.endings.append(whole_sentence(story))
        self.entropy.append(unigram_entropy(ids))

    def figures(self) -> dict[str, float]:
        def mean(xs: list[float]) -> float:
            xs = [x for x in xs if not math.isnan(x)]
            return sum(xs) / len(xs) if xs else math.nan

        return {"ppl": math.exp(mean(self.nll)),
                "bigrams": mean(self.bigrams), "endings": mean([float(e) for e in self.endings]),
                "entropy": mean(self.entropy), "story_tokens": mean(self.story_tokens), "ended": mean(self.ended),
                "same_pass": self.same_pass / max(self.pairs, 1),
                "nll_together": mean([x for x, t in zip(self.nll, self.together) if t]),
                "nll_alone": mean([x for x, t in zip(self.nll, self.together) if not t])}
