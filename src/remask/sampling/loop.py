"""LLaDA's reverse process: blocks of steps, each a forward pass, a draw, and a commit.

Nie et al. 2025, Algorithm 4 (reverse process with low-confidence remasking) and Algorithm 5
(semi-autoregressive remasking). The canvas starts as the prompt followed by ``gen_length``
mask tokens. The generated region is cut into blocks of ``block_length``, filled left to right,
``steps // num_blocks`` steps each. At every step:

1. one forward pass gives logits for the current block (with classifier-free guidance, one
   pass over the doubled batch [conditional; unconditional], the unconditional copy having its
   prompt masked, and logits = u + (w + 1)(c - u));
2. a token x0 is drawn for every masked position of the block (argmax at temperature 0,
   Gumbel-max above);
3. a confidence measure (``rules.CONFIDENCES``) scores them and a rule (``rules.RULES``)
   commits the schedule's number (``schedule.num_transfer_tokens``) with the highest scores, or,
   for ``threshold``, every one at least that sure; the rest stay masked ("remasked").

Committed and prompt tokens never change again, unless ReMDM-style re-masking is on
(``remask_committed``, see ``remdm.py``): then a doubtful token committed earlier in the current
block may go back to the mask and be predicted again. ``denoise`` is the loop itself, a generator of
``StepEvent``s; ``generate_stream`` (events) and ``generate`` (the result) put a prompt before new text,
``infill.infill`` fills holes inside fixed text. Speed-ups, each off or on in ``SampleConfig``:
parallel decoding (``remasking="threshold"``), approximate K/V caches (``cache``, see
``cache.py``), early exit once the answer has ended (``early_stop``), bf16 and torch.compile.
The engine knows nothing about tokenization.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from remask.config import check, option
from remask.errors import RemaskError
from remask.sampling.cache import CACHE_MODES, DTYPES, BlockForward
from remask.sampling.remdm import pick_remasks, remaskable
from remask.sampling.rules import CONFIDENCES, NEG_INF, RULES, demote, measure_name, top_k
from remask.sampling.schedule import num_transfer_tokens


@dataclass(kw_only=True)
class SampleConfig:
    """LLaDA's sampler settings (the arguments of its ``generate``)."""

    gen_length: int = option("number of tokens to generate after the prompt", 64)
    steps: int = option("denoising steps in total, shared equally by the blocks (one forward pass each)", 64)
    block_length: int | None = option("semi-autoregressive block length; must divide gen_length (None: one block)",
                                      None)
    temperature: float = option("Gumbel-max sampling temperature (0: argmax, deterministic)", 0.0)
    remasking: str = option("which masked tokens to commit each step: low_confidence (LLaDA), margin, entropy, "
                            "random, or threshold (parallel decoding)", "low_confidence")
    cfg_scale: float = option("classifier-free guidance weight w (0: off; >0 doubles the forward passes)", 0.0)
    logits_eos_inf: bool = option("never generate EOS/EOT: their logits are set to -inf", False)
    confidence_eos_eot_inf: bool = option("commit EOS/EOT predictions only after every other token of the block",
                                          False)
    seed: int = option("seed of the sampling noise (Gumbel draws, random remasking)", 0)
    confidence: str | None = option("confidence measure: low_confidence, margin, entropy or random "
                                    "(None: the rule's namesake; low_confidence for threshold)", None)
    threshold: float = option("remasking=threshold: commit every masked token whose confidence >= this", 0.9)
    cache: str = option("approximate K/V cache: none (exact), prefix, or dual (prefix and suffix)", "none")
    cache_refresh: int = option("with a cache: also recompute the whole canvas every this many steps of a block "
                                "(0: only at each block's first step, as Fast-dLLM)", 0)
    early_stop: bool = option("stop once the answer has ended: a block committed entirely as EOS, or a block "
                              "ending in EOS with EOS predicted for the whole rest; the rest is filled with EOS",
                              True)
    dtype: str = option("forward-pass precision: auto (bf16 on CUDA), float32 or bfloat16", "auto")
    compile: bool = option("torch.compile the model's forward pass (pays off on GPU for repeated calls)", False)
    remask_committed: int = option("ReMDM-style re-masking: at most this many tokens committed earlier in the block "
                                   "go back to the mask per step (0: off, LLaDA's commits are final)", 0)
    remask_below: float = option("re-masking: only committed tokens whose current confidence is below this "
                                 "(same measure as the commits)", 0.5)

    def __post_init__(self) -> None:
        check(self.gen_length > 0, f"--gen-length must be positive, got {self.gen_length}")
        check(self.steps > 0, f"--steps must be positive, got {self.steps}")
        if self.block_length is not None:
            check(self.block_length > 0,
                  f"--block-length must be positive (or None for one block), got {self.block_length}")
            check(self.gen_length % self.block_length == 0,
                  f"--block-length {self.block_length} must divide --gen-length {self.gen_length}")
        blocks = self.num_blocks
        if self.steps % blocks:
            suggestion = -(-self.steps // blocks) * blocks
            raise RemaskError(f"--steps {self.steps} must be a multiple of the number of blocks "
                              f"(--gen-length {self.gen_length} / --block-length {self.block_length} = {blocks}); "
                              f"try --steps {suggestion}")
        check(self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}")
        check(self.cfg_scale >= 0, f"--cfg-scale must be >= 0 (0 turns guidance off), got {self.cfg_scale}")
        check(self.remasking in RULES,
              f"--remasking {self.remasking!r} is not a known rule; choose one of: {', '.join(sorted(RULES))}")
        check(self.confidence is None or self.confidence in CONFIDENCES,
              f"--confidence {self.confidence!r} is not a known measure; choose one of: "
              f"{', '.join(sorted(CONFIDENCES))}")
        check(0 < self.threshold <= 1, f"--threshold must be in (0, 1] (confidences are probabilities), "
                                       f"got {self.threshold}")
        check(self.cache in CACHE_MODES, f"--cache {self.cache!r} is not a cache mode; choose one of: "
                                         f"{', '.join(CACHE_MODES)}")
        check(self.dtype in DTYPES, f"--dtype {self.dtype!r} must be one of: {', '.join(DTYPES)}")
        check(self.cache_refresh >= 0, f"--cache-refresh must be >= 0 (0: refresh only at block starts), "
                                       f"got {self.cache_refresh}")
        check(self.remask_committed >= 0, f"--remask-committed must be >= 0 (0 turns re-masking off), "
                                          f"got {self.remask_committed}")
        check(0 < self.remask_below <= 1, f"--remask-below must be in (0, 1] (confidences are probabilities), "
                                          f"got {self.remask_below}")
        check(self.remask_committed == 0 or self.steps // blocks >= 2,
              f"--remask-committed needs at least 2 steps per block (a block's last step never re-masks), got "
              f"--steps {self.steps} for {blocks} block(s); raise --steps or set --remask-committed 0")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // (self.block_length or self.gen_length)


@dataclass
class StepEvent:
    """What one denoising step did; ``denoise`` yields one per forward pass, and one when early exit
    fills ended rows with EOS before a block (no forward pass, ``early_exit`` set)."""

    step: int  # index over all steps of the run (block * steps_per_block + step in block)
    block: int  # index of the block being filled
    canvas: Tensor  # (B, L) long, the canvas after this step's commits (a copy)
    committed: Tensor  # (B, L) bool, positions committed at this step
    confidence: Tensor  # (B, L) float, the measure's scores (-inf outside the block's masked positions)
    n_forward: int  # network evaluations so far (a CFG step counts 2)
    early_exit: bool = False  # some row's answer ended here: its remaining masks were filled with EOS
    n_forward_saved: int = 0  # set on the last event when early exit ended the run: scheduled passes skipped
    remasked: Tensor | None = None  # (B, L) bool, committed positions sent back to the mask at this step
    # (``SampleConfig.remask_committed``; ``denoise`` always sets it, all False when re-masking is off)

    def remasks(self, row: int = 0) -> list[int]:
        """Positions of ``row`` re-masked at this step (their canvas entry is the mask again), left to right."""
        return [] if self.remasked is None else self.remasked[row].nonzero().flatten().tolist()

    def commits(self, row: int = 0) -> list[tuple[int, int, float]]:
        """(position, token, confidence) of every commit of ``row`` at this step, left to right."""
        cols = self.committed[row].nonzero().flatten().tolist()
        return [(c, int(self.canvas[row, c]), float(self.confidence[row, c])) for c in cols]


@dataclass
class Generation:
    """The result of ``generate`` (or ``infill``)."""

    tokens: Tensor  # (B, gen_length) long, the generated ids (no padding); infill: the filled canvas (B, L)
    canvas: Tensor  # (B, L) long, the final canvas (left padding, prompt, generated tokens)
    n_forward: int  # network evaluations, counting CFG's unconditional pass
    n_forward_saved: int = 0  # scheduled evaluations early exit skipped (``SampleConfig.early_stop``)


def add_gumbel_noise(logits: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """Logits whose argmax is a sample at ``temperature`` (Gumbel-max), in float64.

    LLaDA notes that low-precision Gumbel noise hurts generation quality, so the noise is drawn
    in float64. argmax(logits / T + g), g ~ Gumbel(0, 1), is the same draw as LLaDA's
    argmax(exp(logits) / (-log u)^T) without overflowing exp. Temperature 0 returns ``logits``
    unchanged, so the argmax is deterministic.
    """
    if temperature == 0:
        return logits
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)  # (..., V)
    u = u.clamp_min(torch.finfo(torch.float64).tiny)  # log(0) guard; u < 1 already
    gumbel = -torch.log(-torch.log(u))
    return logits.double() / temperature + gumbel


def _finite(confidence: Tensor, candidates: Tensor) -> Tensor:
    """Candidates get a finite score (so the schedule can always be met), the rest -inf."""
    if not confidence.is_floating_point():
        confidence = confidence.float()
    lowest = torch.finfo(confidence.dtype).min
    return torch.where(candidates, confidence.nan_to_num(nan=lowest), NEG_INF)  # (B, L)


@torch.inference_mode()
def denoise(
    model: Callable[..., Tensor],
    canvas: Tensor,
    editable: Tensor,
    cfg: SampleConfig,
    *,
    mask_id: int,
    eos_id: int,
    eot_id: int | None = None,
    attn_mask: Tensor | None = None,
    prompt_mask: Tensor | None = None,
    block_bounds: Iterable[tuple[int, int]] | None = None,
) -> Iterator[StepEvent]:
    """The reverse process over ``canvas`` (B, L): yields a ``StepEvent`` after every step.

    editable: (B, L) bool, the positions to generate; they start as ``mask_id``, everything else
    is fixed. attn_mask: (B, L) bool, True for real tokens (None: all real). prompt_mask: (B, L)
    bool, the positions CFG's unconditional pass masks (None: the fixed real tokens).
    block_bounds: ``[(start, end), ...]`` column ranges filled one after another, ``cfg.steps``
    shared equally (None: one block over the whole canvas). Uses every field of ``cfg`` but
    gen_length and block_length. Host synchronisation happens between steps only: once per
    block (schedule, early exit) and, for a rule that may beat its budget (threshold), once per
    step to stop when the block is full.

    With ``cfg.remask_committed`` (ReMDM-style, ``remdm.py``) each step but a block's last also
    returns up to that many doubtful tokens committed by earlier steps of the block to the mask
    (``StepEvent.remasked``) and adds them to the block's remaining schedule: the block still
    ends fully committed, with as many forward passes as without re-masking for the
    fixed-budget rules and at most as many (``sum`` of the planned steps) for ``threshold``.
    """
    B, L = canvas.shape
    device = canvas.device
    editable = editable.to(device=device, dtype=torch.bool)
    blocks = [(0, L)] if block_bounds is None else [(int(s), int(e)) for s, e in block_bounds]
    check(len(blocks) > 0 and cfg.steps % len(blocks) == 0,
          f"--steps {cfg.steps} must be a multiple of the number of blocks ({len(blocks)})")
    check(cfg.remasking in RULES, f"--remasking {cfg.remasking!r} is not a known rule; choose one of: "
          f"{', '.join(sorted(RULES))}")
    rule, measure = RULES[cfg.remasking], CONFIDENCES[measure_name(cfg.remasking, cfg.confidence)]
    adaptive = rule is not top_k  # may commit more than the budget, so a block can fill early
    steps_per_block = cfg.steps // len(blocks)
    passes = 2 if cfg.cfg_scale > 0 else 1
    if prompt_mask is None:
        prompt_mask = ~editable if attn_mask is None else ~editable & attn_mask
    forward = BlockForward(model, cfg.cache, attn_mask=attn_mask, prompt_mask=prompt_mask, mask_id=mask_id,
                           cfg_scale=cfg.cfg_scale, dtype=cfg.dtype, compile=cfg.compile, device=device)
    banned = [mask_id] + ([eos_id] + ([eot_id] if eot_id is not None else []) if cfg.logits_eos_inf else [])
    banned_ids = torch.tensor(banned, device=device)  # never predicted
    ending_ids = torch.tensor([eos_id] + ([eot_id] if eot_id is not None else []), device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    column = torch.arange(L, device=device)  # (L,)
    remdm = cfg.remask_committed > 0

    x = torch.where(editable, mask_id, canvas)  # (B, L) x_t: the current canvas
    masked = editable.clone()  # (B, L) still-masked positions
    # Blocks only change inside themselves, so each block's starting mask count is known now:
    # one host sync here, none in the step. A block whose rows all hold fewer masks than
    # steps ends with steps that commit nothing anywhere; those are skipped (no forward pass).
    planned = [min(steps_per_block, n) for n in
               torch.stack([masked[:, s:e].sum(-1) for s, e in blocks]).amax(-1).tolist()]  # per block
    n_forward = 0
    for b, (start, end) in enumerate(blocks):
        if cfg.early_stop and b > 0:  # (a) the previous block is all EOS: the answer has ended
            prev_start, prev_end = blocks[b - 1]
            ended = (x[:, prev_start:prev_end] == eos_id).all(-1)  # (B,)
            fill = ended[:, None] & masked & (column >= start)  # (B, L)
            if bool(fill.any()):
                x, masked = torch.where(fill, eos_id, x), masked & ~fill
                finished = not bool(masked.any())
                yield StepEvent(step=b * steps_per_block, block=b, canvas=x.clone(), committed=fill,
                                confidence=torch.full((B, L), NEG_INF, device=device), n_forward=n_forward,
                                early_exit=True, n_forward_saved=sum(planned[b:]) * passes if finished else 0,
                                remasked=torch.zeros_like(fill))
                if finished:
                    return
        schedule = num_transfer_tokens(masked[:, start:end].sum(-1), steps_per_block)  # (B, steps_per_block)
        held = torch.zeros_like(masked[:, start:end])  # (B, W) committed by this block's rule so far (ReMDM)
        for i in range(planned[b]):
            if adaptive and i > 0 and not bool(masked[:, start:end].any()):
                break  # threshold filled the block early; its remaining steps are not needed
            refresh = i == 0 or (cfg.cache_refresh > 0 and i % cfg.cache_refresh == 0)  # a full, exact pass
            logits, offset = forward(x, start, end, first=refresh)  # (B, W, V) covering [start, end)
            n_forward += passes
            logits = logits.index_fill(-1, banned_ids, NEG_INF)
            committed = torch.zeros_like(masked)  # (B, L)
            exited = cfg.early_stop and b > 0 and i == 0
            if exited:  # (b) EOS just before the block and predicted for every masked column from here on
                rest = (logits[:, start - offset:].argmax(-1) == eos_id) | ~masked[:, start:]  # (B, L - start)
                ended = (x[:, start - 1] == eos_id) & rest.all(-1)  # (B,)
                committed = ended[:, None] & masked & (column >= start)
                exited = bool(committed.any())  # once per block
                x, masked = torch.where(committed, eos_id, x), masked & ~committed
            lb = logits[:, start - offset:end - offset]  # (B, W, V) the block's columns
            xb, mb = x[:, start:end], masked[:, start:end]  # (B, W)
            x0 = torch.where(mb, add_gumbel_noise(lb, cfg.temperature, generator).argmax(-1), xb)  # (B, W) draws
            confidence = _finite(measure(lb, x0, mb, generator), mb)  # (B, W)
            order = confidence
            if cfg.confidence_eos_eot_inf:  # EOS/EOT drawn (not just argmax): commit them last
                order = demote(confidence, torch.isin(x0, ending_ids))
            commit = rule(order, schedule[:, i], cfg.threshold)  # (B, W)
            remasked = torch.zeros_like(masked)  # (B, L)
            left = planned[b] - 1 - i  # steps of this block after this one
            if remdm and left > 0:  # ReMDM: doubt earlier commits, scored on the same logits, before writing
                eligible = remaskable(held, masked, column[start:end])  # (B, W)
                doubt = measure(lb, xb, eligible, generator)  # (B, W) confidence in the committed token
                back = pick_remasks(doubt, eligible, cfg.remask_committed, cfg.remask_below)  # (B, W)
                # the re-masked tokens join the remaining budget, spread over the steps left (front first)
                schedule[:, i + 1:i + 1 + left] += num_transfer_tokens(back.sum(-1), left)
                held = held & ~back
                remasked[:, start:end] = back
                xb = torch.where(back, mask_id, xb)
                mb = mb | back
            held = held | commit
            x[:, start:end] = torch.where(commit, x0, xb)
            masked[:, start:end] = mb & ~commit
            committed[:, start:end] |= commit
            scores = torch.full((B, L), NEG_INF, device=device)
            scores[:, start:end] = confidence
            finished = exited and not bool(masked.any())
            saved = (planned[b] - 1 + sum(planned[b + 1:])) * passes if finished else 0
            yield StepEvent(step=b * steps_per_block + i, block=b, canvas=x.clone(), committed=committed,
                            confidence=scores, n_forward=n_forward, early_exit=exited, n_forward_saved=saved,
                            remasked=remasked)
            if finished:
                return


def run_events(events: Iterator[StepEvent], start: Tensor, callback: Callable[[StepEvent], None] | None, *,
               first: int = 0) -> Generation:
    """Drive ``denoise`` to the end, feeding ``callback``: -> its ``Generation``, whose ``tokens`` are
    the final canvas's columns from ``first`` on (``start`` (B, L) is the canvas before any step)."""
    canvas, n_forward, saved = start, 0, 0
    for event in events:
        if callback is not None:
            callback(event)
        canvas, n_forward, saved = event.canvas, event.n_forward, event.n_forward_saved
    return Generation(tokens=canvas[:, first:], canvas=canvas, n_forward=n_forward, n_forward_saved=saved)


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free callable)."""
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def context_length(model: Any) -> int | None:
    """``model.cfg.max_seq_len`` when the model declares one."""
    limit = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    return limit if isinstance(limit, int) else None


def check_vocab(model: Any, ids: Tensor, what: str) -> None:
    """Ids outside ``model.cfg.vocab_size`` -> RemaskError (instead of an embedding IndexError)."""
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
    if isinstance(vocab, int) and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        bad = int(ids.max()) if int(ids.max()) >= vocab else int(ids.min())
        raise RemaskError(f"{what} holds token id {bad}, outside the model vocabulary (size {vocab}); "
                          "encode it with the model's own tokenizer")


def left_pad(prompts: Sequence[Sequence[int]] | Tensor, pad_id: int,
             device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Prompts -> ((B, P) long left-padded with ``pad_id``, (B, P) bool real-token mask or None if all equal)."""
    if isinstance(prompts, Tensor):
        ids = prompts[None] if prompts.dim() == 1 else prompts
        check(ids.dim() == 2, f"prompts must be a (B, L) tensor of token ids, got shape {tuple(prompts.shape)}")
        check(ids.shape[0] > 0, "no prompts given; pass at least one prompt")
        return ids.to(device=device, dtype=torch.long), None
    rows = [list(p) for p in _rows(prompts)]
    lengths = [len(r) for r in rows]
    P = max(lengths)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    real = torch.zeros(len(rows), P, dtype=torch.bool)
    for i, r in enumerate(rows):  # host-side, once per call
        if r:
            ids[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
            real[i, P - len(r):] = True
    attn = None if len(set(lengths)) == 1 else real.to(device)
    return ids.to(device), attn


def _rows(prompts: Sequence[Sequence[int]]) -> list[Sequence[int]]:
    rows = list(prompts)
    check(len(rows) > 0, "no prompts given; pass at least one prompt")
    check(not any(isinstance(r, int) for r in rows),
          "prompts must be a list of token-id lists; wrap a single prompt as [ids]")
    return rows


def generate_stream(
    model: Callable[..., Tensor],
    prompts: Sequence[Sequence[int]] | Tensor,
    cfg: SampleConfig,
    *,
    mask_id: int,
    eos_id: int,
    eot_id: int | None = None,
) -> Iterator[StepEvent]:
    """``generate`` as a generator of ``StepEvent``s, one per forward pass (plus one per early exit).

    The generated text of row ``r`` is ``event.canvas[r, -cfg.gen_length:]``; see
    ``stream.TextDeltas`` to turn events into text as its stable prefix grows. The prompts are
    checked when this is called, not when it is first iterated.
    """
    # denoise's inference_mode decorator re-enters the mode on every resumption of the generator.
    return _start(model, prompts, cfg, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id)[1]


def _start(model: Any, prompts: Sequence[Sequence[int]] | Tensor, cfg: SampleConfig, *, mask_id: int,
           eos_id: int, eot_id: int | None) -> tuple[Tensor, Iterator[StepEvent]]:
    """Prompts -> (the starting canvas (B, P + gen_length): prompt, then gen_length masks; its ``denoise``
    events over Algorithm 5's blocks). The prompts are checked here, before the first event."""
    device = model_device(model)
    ids, attn = left_pad(prompts, eos_id, device)  # (B, P), (B, P) or None
    B, P = ids.shape
    limit = context_length(model)
    if limit is not None and P + cfg.gen_length > limit:
        raise RemaskError(f"prompt ({P} tokens) + --gen-length {cfg.gen_length} exceeds the model context of "
                          f"{limit} tokens; shorten the prompt or lower --gen-length")
    check_vocab(model, ids if attn is None else ids[attn], "the prompt")
    masks = torch.full((B, cfg.gen_length), mask_id, dtype=torch.long, device=device)
    canvas = torch.cat([ids, masks], 1)  # (B, L): prompt, then gen_length masks
    editable = torch.zeros_like(canvas, dtype=torch.bool)
    editable[:, P:] = True
    attn_mask = None if attn is None else torch.cat([attn, torch.ones(B, cfg.gen_length, dtype=torch.bool,
                                                                          device=device)], 1)
    block = cfg.block_length or cfg.gen_length
    bounds = [(P + b * block, P + (b + 1) * block) for b in range(cfg.num_blocks)]  # Algorithm 5's blocks
    return canvas, denoise(model, canvas, editable, cfg, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id,
                           attn_mask=attn_mask, block_bounds=bounds)


@torch.inference_mode()
def generate(
    model: Callable[..., Tensor],
    prompts: Sequence[Sequence[int]] | Tensor,
    cfg: SampleConfig,
    *,
    mask_id: int,
    eos_id: int,
    eot_id: int | None = None,
    callback: Callable[[StepEvent], None] | None = None,
) -> Generation:
    """Generate ``cfg.gen_length`` tokens after each prompt with LLaDA's reverse process.

    Prompts of different lengths are left-padded with ``eos_id`` and hidden by an attention
    mask; the model's positions count real tokens only, so each row gets exactly the result it
    would get alone (at temperature 0, without a cache; with a cache, up to float rounding of
    the differently shaped attention). ``callback`` sees every ``StepEvent``. With
    ``cfg.early_stop`` a finished answer is EOS-padded to gen_length (``stream.trim_eos`` cuts it).
    """
    canvas, events = _start(model, prompts, cfg, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id)
    return run_events(events, canvas, callback, first=canvas.shape[1] - cfg.gen_length)
