"""SFT data: record validation, tokenisation, and length-bucketed batches.

Records are conversations (OpenAI ``messages``, or ``{"prompt", "response"}``) rendered through the
tokenizer's chat template (``remask.data.template``). Following LLaDA's SFT (Nie et al. 2025,
sec. 2.3 and its GUIDELINES), the prompt is never masked, each answer ends with its end-of-turn
token and one EOS, and short sequences are right-padded with EOS to the batch's longest; the
padding belongs to the answer (masked and predicted), which is how the model learns to end an
answer::

    <prompt turns><|start_header_id|>assistant<|end_header_id|>\\n\\n{answer}<|eot_id|><|endoftext|><|endoftext|>...

Every assistant turn of a multi-turn conversation is supervised, or (``split_turns``) the
conversation becomes one single-turn pair per assistant turn, as LLaDA did.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from remask.data.batch import Batch
from remask.data.template import ROLES, Message, segments
from remask.errors import RemaskError
from remask.rng import DATA, keyed_generator

BUCKET = 3  # rng stream for the per-step bucket choice (remask.rng uses 0..2)


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Record:
    messages: list[Message]
    where: str  # "file:line", for error messages


def _validate(obj: Any) -> list[Message]:
    """A parsed JSON line -> messages, or ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        out = []
        for k, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise ValueError(f"messages[{k}] must be an object with 'role' and 'content'")
            if "role" not in m:
                raise ValueError(f"messages[{k}] has no 'role'")
            if m["role"] not in ROLES:
                raise ValueError(f"messages[{k}] has role {m['role']!r}; use one of {', '.join(ROLES)}")
            content = m.get("content")
            if not isinstance(content, str):
                raise ValueError(f"messages[{k}] 'content' must be a string, got {type(content).__name__}")
            if not content.strip():
                raise ValueError(f"messages[{k}] has empty content")
            out.append({"role": m["role"], "content": content})
        if out[-1]["role"] != "assistant":
            raise ValueError("the conversation must end with an assistant message (nothing to learn after it)")
        return out
    if "prompt" in obj or "response" in obj:
        missing = [k for k in ("prompt", "response") if k not in obj]
        if missing:
            raise ValueError(f"missing '{missing[0]}'")
        for key in ("prompt", "response", "system"):
            if key in obj and (not isinstance(obj[key], str) or not obj[key].strip()):
                raise ValueError(f"'{key}' must be a non-empty string")
        system = [{"role": "system", "content": obj["system"]}] if "system" in obj else []
        return [*system, {"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["response"]}]
    raise ValueError("expected {'messages': [...]} or {'prompt': ..., 'response': ...}")


def _jsonl_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.jsonl"))
            if not found:
                raise RemaskError(f"--data directory '{p}' holds no .jsonl files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise RemaskError(f"--data '{p}' does not exist; give .jsonl files of chat records")
    if not files:
        raise RemaskError("no SFT data given; pass --data FILE.jsonl")
    return files


def read_records(paths: str | Path | Iterable[str | Path], *, skip_bad: bool = False) -> tuple[list[Record], int]:
    """Read SFT ``.jsonl`` files (OpenAI messages or {prompt, response}) -> (records, n_skipped).

    A bad line raises RemaskError naming ``file:line``; with ``skip_bad`` it is counted instead.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    records: list[Record] = []
    skipped = 0
    for f in _jsonl_files(paths):
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise RemaskError(f"cannot read '{f}' ({type(e).__name__}: {e})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{f}:{n}"
            try:
                records.append(Record(_validate(json.loads(line)), where))
            except (json.JSONDecodeError, ValueError) as e:
                if not skip_bad:
                    what = f"not valid JSON ({e.msg})" if isinstance(e, json.JSONDecodeError) else str(e)
                    raise RemaskError(f"{where}: {what}; fix the record or pass --skip-bad") from None
                skipped += 1
    if not records:
        raise RemaskError(f"no usable SFT records in {', '.join(map(str, paths))} ({skipped} skipped)")
    return records, skipped


# ----------------------------------------------------------------------------- tokenisation

@dataclass(frozen=True)
class Example:
    ids: np.ndarray  # (n,) int64: prompt and answer tokens, one EOS at the end
    prompt: np.ndarray  # (n,) bool: True where never masked nor supervised
    where: str


def tokenize(messages: Sequence[Message], tok: Any, *, split_turns: bool = False, template: str | None = None,
             where: str = "") -> list[Example]:
    """A conversation -> one example with every assistant turn supervised, or one single-turn
    pair per assistant turn (``split_turns``). Each piece is encoded on its own, so a prompt
    token never merges with an answer token (which BPE could do across the boundary)."""
    pieces = segments(messages, tok, template)
    if split_turns:  # pair k: everything before answer k is prompt, answer k is the answer
        groups = [[(text, False) for text, _ in pieces[:k]] + [pieces[k]] for k in range(1, len(pieces), 2)]
    else:
        groups = [pieces]
    out = []
    for group in groups:
        ids, prompt = [], []
        for text, answer in group:
            enc = tok.encode(text, allow_special=True)
            ids.extend(enc)
            prompt.extend([not answer] * len(enc))
        ids.append(tok.eos_id)  # LLaDA: the answer ends with EOS (padding adds more of them)
        prompt.append(False)
        out.append(Example(np.asarray(ids, dtype=np.int64), np.asarray(prompt, dtype=bool), where))
    return out


def tokenize_records(records: Sequence[Record], tok: Any, *, seq_len: int, split_turns: bool = False,
                     template: str | None = None, skip_bad: bool = False) -> tuple[list[Example], int]:
    """Records -> examples no longer than ``seq_len``; too-long ones are errors (or skipped and counted)."""
    examples: list[Example] = []
    skipped = 0
    for r in records:
        for ex in tokenize(r.messages, tok, split_turns=split_turns, template=template, where=r.where):
            if len(ex.ids) > seq_len:
                if not skip_bad:
                    raise RemaskError(f"{r.where}: {len(ex.ids)} tokens, longer than --seq-len {seq_len}; "
                                      "raise --seq-len or pass --skip-bad")
                skipped += 1
            else:
                examples.append(ex)
    if not examples:
        raise RemaskError(f"every SFT example is longer than --seq-len {seq_len}; raise --seq-len")
    return examples, skipped


def collate(examples: Sequence[Example], eos_id: int, length: int | None = None) -> Batch:
    """Right-pad with EOS to ``length`` (default: the longest); padding is answer, not prompt."""
    L = length or max(len(e.ids) for e in examples)
    tokens = torch.full((len(examples), L), eos_id, dtype=torch.long)  # (b, L)
    prompt = torch.zeros(len(examples), L, dtype=torch.bool)  # (b, L)
    for i, e in enumerate(examples):
        tokens[i, : len(e.ids)] = torch.from_numpy(e.ids)
        prompt[i, : len(e.ids)] = torch.from_numpy(e.prompt)
    return Batch(tokens, prompt_mask=prompt)


# ----------------------------------------------------------------------------- batches

class SFTBatches:
    """A BatchSource of SFT examples, length-bucketed and keyed by (seed, step, global index).

    Training examples are sorted by length and cut into ``n_buckets`` groups of equal count.
    Each step draws one bucket (keyed by (seed, step); probability proportional to its size, so
    every example is equally likely overall), then each sample of the step draws an example in
    it (keyed by (seed, step, index)). The whole step's batch is padded to its longest example,
    so the batch does not depend on how it is split into micro-batches or processes.
    """

    bytes_per_token = None  # the SFT loss is per answer token (padding included): no bits per byte

    def __init__(self, train: Sequence[Example], val: Sequence[Example], *, batch_size: int, seed: int,
                 eos_id: int, n_buckets: int = 8) -> None:
        if not train:
            raise RemaskError("no SFT training examples")
        if n_buckets < 1:
            raise RemaskError(f"--buckets must be >= 1, got {n_buckets}")
        self.batch_size, self.seed, self.eos_id = batch_size, seed, eos_id
        order = sorted(range(len(train)), key=lambda i: len(train[i].ids))  # stable: ties keep file order
        self.train = [train[i] for i in order]
        self.val = list(val) or list(train)  # tiny data sets validate on their training examples
        self.buckets = [b for b in np.array_split(np.arange(len(self.train)), min(n_buckets, len(self.train)))]
        sizes = np.array([len(b) for b in self.buckets], dtype=np.float64)
        self.bucket_p = sizes / sizes.sum()

    def _example_ids(self, step: int, indices: Iterable[int]) -> list[int]:
        bucket = self.buckets[int(keyed_generator(self.seed, step, 0, BUCKET).choice(len(self.buckets),
                                                                                   p=self.bucket_p))]
        return [int(bucket[keyed_generator(self.seed, step, int(i), DATA).integers(len(bucket))]) for i in indices]

    def step_length(self, step: int) -> int:
        """The padded length of step ``step``'s global batch."""
        everyone = range(step * self.batch_size, (step + 1) * self.batch_size)
        return max(len(self.train[k].ids) for k in self._example_ids(step, everyone))

    def train_batch(self, step: int, indices: np.ndarray) -> Batch:
        rows = [self.train[k] for k in self._example_ids(step, indices)]
        return collate(rows, self.eos_id, self.step_length(step))  # (b, L_step)

    def val_batches(self, micro_batch_size: int, n_batches: int) -> list[tuple[Batch, np.ndarray]]:
        # Fixed: evenly spaced over the (length-sorted) validation set, each batch padded to its own longest.
        val = sorted(self.val, key=lambda e: len(e.ids))
        n = micro_batch_size * n_batches
        pick = np.linspace(0, len(val) - 1, num=n).round().astype(np.int64)
        out = []
        for b in range(n_batches):
            idx = np.arange(b * micro_batch_size, (b + 1) * micro_batch_size)
            out.append((collate([val[int(pick[i])] for i in idx], self.eos_id), idx))
        return out

    def padding_fraction(self, steps: int) -> float:
        """Fraction of training tokens that are EOS padding over steps 0..steps-1 (the one EOS
        each answer ends with is not counted: it is content)."""
        pad = total = 0
        for s in range(steps):
            everyone = range(s * self.batch_size, (s + 1) * self.batch_size)
            lengths = [len(self.train[k].ids) for k in self._example_ids(s, everyone)]
            pad += max(lengths) * len(lengths) - sum(lengths)
            total += max(lengths) * len(lengths)
        return pad / total if total else 0.0


def split_val(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out ``fraction`` of the examples (a fixed random subset) -> (train, val)."""
    if not 0 <= fraction < 1:
        raise RemaskError(f"--val-fraction must be in [0, 1), got {fraction}")
    n_val = int(len(examples) * fraction)
    perm = np.random.default_rng([seed & 0xFFFFFFFF, 0xC4A7]).permutation(len(examples))
    held = set(perm[:n_val].tolist())
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])
