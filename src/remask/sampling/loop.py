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
   for the parallel rules (``threshold``, ``factor``, ``hierarchy``), as many as they judge safe;
   the rest stay masked ("remasked"). Credit decoding (``credit.py``) may first add to the logits
   the credit each position has earned by predicting the same token step after step.

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

from remask.config import check
from remask.model import check_context, check_vocab, model_device
from remask.sampling.cache import BlockForward
from remask.sampling.config import SampleConfig
from remask.sampling.credit import accrue, fuse
from remask.sampling.remdm import pick_remasks, remaskable
from remask.sampling.rules import CONFIDENCES, NEG_INF, RULES, Confidence, Rule, demote, measure_name, top_k
from remask.sampling.schedule import num_transfer_tokens


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


@dataclass
class _Run:
    """One ``denoise`` call: what it fixes before the first step, then the canvas its steps update."""

    cfg: SampleConfig
    blocks: list[tuple[int, int]]  # [(start, end), ...] column ranges, filled left to right
    steps_per_block: int
    planned: list[int]  # per block: the steps it runs (fewer than steps_per_block if it holds fewer masks)
    forward: BlockForward  # one step's forward pass (CFG's doubled batch, the K/V cache)
    rule: Rule  # which masked positions to commit (``rules.RULES``)
    measure: Confidence  # their scores (``rules.CONFIDENCES``)
    adaptive: bool  # the rule may commit more than the budget, so a block can fill early
    passes: int  # network evaluations per step (2 with CFG)
    banned_ids: Tensor  # (K,) never predicted: the mask, and EOS/EOT with logits_eos_inf
    ending_ids: Tensor  # (1 or 2,) EOS and EOT, committed last with confidence_eos_eot_inf
    generator: torch.Generator  # every draw of the run: Gumbel noise, then the measure's, then ReMDM's
    column: Tensor  # (L,) column indices
    mask_id: int
    eos_id: int
    x: Tensor  # (B, L) x_t: the current canvas
    masked: Tensor  # (B, L) still-masked positions
    n_forward: int = 0  # network evaluations so far


@dataclass
class _Block:
    """The block being filled (Algorithm 5) and what its steps pass on to the next."""

    index: int  # b
    start: int
    end: int
    schedule: Tensor  # (B, steps_per_block) tokens to commit per step; ReMDM adds the ones it re-masks
    held: Tensor  # (B, W) committed by this block's rule so far (ReMDM)
    credit: Tensor | None = None  # (B, W, V) credit decoding's trace (credit.py); None before the first step


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
    run = _setup(model, canvas, editable, cfg, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id,
                 attn_mask=attn_mask, prompt_mask=prompt_mask, block_bounds=block_bounds)
    for b, (start, end) in enumerate(run.blocks):
        if cfg.early_stop and b > 0:  # (a) the previous block is all EOS: the answer has ended
            fill = _after_ended_block(run, b)  # (B, L)
            if bool(fill.any()):
                run.x, run.masked = torch.where(fill, eos_id, run.x), run.masked & ~fill
                finished = not bool(run.masked.any())
                yield StepEvent(step=b * run.steps_per_block, block=b, canvas=run.x.clone(), committed=fill,
                                confidence=torch.full(fill.shape, NEG_INF, device=fill.device),
                                n_forward=run.n_forward, early_exit=True, remasked=torch.zeros_like(fill),
                                n_forward_saved=sum(run.planned[b:]) * run.passes if finished else 0)
                if finished:
                    return
        schedule = num_transfer_tokens(run.masked[:, start:end].sum(-1), run.steps_per_block)  # (B, steps_per_block)
        block = _Block(b, start, end, schedule, held=torch.zeros_like(run.masked[:, start:end]))
        for i in range(run.planned[b]):
            if run.adaptive and i > 0 and not bool(run.masked[:, start:end].any()):
                break  # threshold filled the block early; its remaining steps are not needed
            # a full, exact pass: every N-th block's first step, and every cache_refresh-th step inside a block
            refresh = b % cfg.cache_full_every == 0 if i == 0 else cfg.cache_refresh > 0 and i % cfg.cache_refresh == 0
            since = run.blocks[b - 1][0] if i == 0 and not refresh else None  # else: refresh the previous block
            tail = cfg.early_stop and b > 0 and i == 0  # early exit (b) reads every column from the block on
            logits = run.forward(run.x, start, end, first=refresh, since=since, to_end=tail)  # (B, W, V) from start
            run.n_forward += run.passes
            logits = logits.index_fill(-1, run.banned_ids, NEG_INF)
            committed = torch.zeros_like(run.masked)  # (B, L)
            exited = tail and start + logits.shape[1] == run.x.shape[1]  # a dual-cache window may stop at the block
            if exited:  # (b) EOS just before the block and predicted for every masked column from here on
                committed = _rest_predicted_eos(run, logits, start)  # (B, L)
                exited = bool(committed.any())  # once per block
                run.x, run.masked = torch.where(committed, eos_id, run.x), run.masked & ~committed
            scores, remasked = _step(run, block, i, logits[:, :end - start], committed)
            finished = exited and not bool(run.masked.any())
            saved = (run.planned[b] - 1 + sum(run.planned[b + 1:])) * run.passes if finished else 0
            yield StepEvent(step=b * run.steps_per_block + i, block=b, canvas=run.x.clone(), committed=committed,
                            confidence=scores, n_forward=run.n_forward, early_exit=exited, n_forward_saved=saved,
                            remasked=remasked)
            if finished:
                return


def _setup(model: Callable[..., Tensor], canvas: Tensor, editable: Tensor, cfg: SampleConfig, *, mask_id: int,
           eos_id: int, eot_id: int | None, attn_mask: Tensor | None, prompt_mask: Tensor | None,
           block_bounds: Iterable[tuple[int, int]] | None) -> _Run:
    """``denoise``'s arguments, checked -> its ``_Run``, the canvas x_T with every editable position masked."""
    L = canvas.shape[1]
    device = canvas.device
    editable = editable.to(device=device, dtype=torch.bool)
    blocks = [(0, L)] if block_bounds is None else [(int(s), int(e)) for s, e in block_bounds]
    check(len(blocks) > 0 and cfg.steps % len(blocks) == 0,
          f"--steps {cfg.steps} must be a multiple of the number of blocks ({len(blocks)})")
    check(cfg.remasking in RULES, f"--remasking {cfg.remasking!r} is not a known rule; choose one of: "
          f"{', '.join(sorted(RULES))}")
    rule, measure = RULES[cfg.remasking], CONFIDENCES[measure_name(cfg.remasking, cfg.confidence)]
    steps_per_block = cfg.steps // len(blocks)
    if prompt_mask is None:
        prompt_mask = ~editable if attn_mask is None else ~editable & attn_mask
    forward = BlockForward(model, cfg.cache, attn_mask=attn_mask, prompt_mask=prompt_mask, mask_id=mask_id,
                           cfg_scale=cfg.cfg_scale, dtype=cfg.dtype, compile=cfg.compile, device=device)
    banned = [mask_id] + ([eos_id] + ([eot_id] if eot_id is not None else []) if cfg.logits_eos_inf else [])
    ending = [eos_id] + ([eot_id] if eot_id is not None else [])
    masked = editable.clone()  # (B, L) still-masked positions
    # Blocks only change inside themselves, so each block's starting mask count is known now:
    # one host sync here, none in the step. A block whose rows all hold fewer masks than
    # steps ends with steps that commit nothing anywhere; those are skipped (no forward pass).
    planned = [min(steps_per_block, n) for n in
               torch.stack([masked[:, s:e].sum(-1) for s, e in blocks]).amax(-1).tolist()]  # per block
    return _Run(cfg=cfg, blocks=blocks, steps_per_block=steps_per_block, planned=planned, forward=forward,
                rule=rule, measure=measure, adaptive=rule is not top_k, passes=2 if cfg.cfg_scale > 0 else 1,
                banned_ids=torch.tensor(banned, device=device), ending_ids=torch.tensor(ending, device=device),
                generator=torch.Generator(device=device).manual_seed(cfg.seed),
                column=torch.arange(L, device=device), mask_id=mask_id, eos_id=eos_id,
                x=torch.where(editable, mask_id, canvas), masked=masked)


def _after_ended_block(run: _Run, b: int) -> Tensor:
    """Early exit (a): (B, L) bool, the masks from block ``b`` on of every row whose block ``b - 1`` is all EOS."""
    prev_start, prev_end = run.blocks[b - 1]
    ended = (run.x[:, prev_start:prev_end] == run.eos_id).all(-1)  # (B,)
    return ended[:, None] & run.masked & (run.column >= run.blocks[b][0])  # (B, L)


def _rest_predicted_eos(run: _Run, logits: Tensor, start: int) -> Tensor:
    """Early exit (b): (B, L) bool, the masks from ``start`` on of every row with EOS just before ``start``
    whose logits (B, L - start, V) (a block's first, full pass) predict EOS at every masked column from there."""
    rest = (logits.argmax(-1) == run.eos_id) | ~run.masked[:, start:]  # (B, L - start)
    ended = (run.x[:, start - 1] == run.eos_id) & rest.all(-1)  # (B,)
    return ended[:, None] & run.masked & (run.column >= start)  # (B, L)


def _step(run: _Run, block: _Block, i: int, logits: Tensor, committed: Tensor) -> tuple[Tensor, Tensor]:
    """Step ``i`` of ``block`` after its forward pass: draw, commit the rule's choice and (ReMDM) re-mask.

    logits: (B, W, V) the block's columns. Writes the step into ``run.x``, ``run.masked`` and
    ``committed`` (B, L) -> (the measure's scores (B, L), -inf outside the block's masked
    positions; the positions re-masked (B, L)).
    """
    start, end = block.start, block.end
    xb, mb = run.x[:, start:end], run.masked[:, start:end]  # (B, W)
    if run.cfg.credit > 0:  # credit decoding: a token predicted step after step gains weight (credit.py)
        block.credit = accrue(block.credit, logits, mb, decay=run.cfg.credit_decay, boost=run.cfg.credit_boost)
        logits = fuse(logits, block.credit, run.cfg.credit)  # (B, W, V)
    x0, confidence, order = _draw(run, logits, xb, mb)  # (B, W) each
    commit = run.rule(order, block.schedule[:, i], run.cfg)  # (B, W)
    remasked = torch.zeros_like(run.masked)  # (B, L)
    left = run.planned[block.index] - 1 - i  # steps of this block after this one
    if run.cfg.remask_committed > 0 and left > 0:  # ReMDM: doubt earlier commits, on the same logits, before writing
        back = _remask(run, block, logits, xb, i, left)  # (B, W)
        block.held = block.held & ~back
        remasked[:, start:end] = back
        xb = torch.where(back, run.mask_id, xb)
        mb = mb | back
    block.held = block.held | commit
    run.x[:, start:end] = torch.where(commit, x0, xb)
    run.masked[:, start:end] = mb & ~commit
    committed[:, start:end] |= commit
    scores = torch.full(committed.shape, NEG_INF, device=committed.device)  # (B, L)
    scores[:, start:end] = confidence
    return scores, remasked


def _draw(run: _Run, logits: Tensor, xb: Tensor, mb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Algorithm 4's prediction for the block's masked positions ``mb`` (B, W), from logits (B, W, V)
    -> (x0 (B, W), the measure's confidence in it (B, W), the order the rule commits by (B, W))."""
    x0 = torch.where(mb, add_gumbel_noise(logits, run.cfg.temperature, run.generator).argmax(-1), xb)  # (B, W)
    confidence = _finite(run.measure(logits, x0, mb, run.generator), mb)  # (B, W)
    order = confidence
    if run.cfg.confidence_eos_eot_inf:  # EOS/EOT drawn (not just argmax): commit them last
        order = demote(confidence, torch.isin(x0, run.ending_ids))
    return x0, confidence, order


def _remask(run: _Run, block: _Block, logits: Tensor, xb: Tensor, i: int, left: int) -> Tensor:
    """ReMDM (``remdm.py``): the tokens committed by earlier steps of ``block`` that go back to the mask, (B, W) bool.

    Each is scored by the run's measure on this step's logits (B, W, V) and its committed token
    in ``xb`` (B, W); those sent back join the block's schedule for the ``left`` steps after ``i``.
    """
    eligible = remaskable(block.held, run.masked, run.column[block.start:block.end])  # (B, W)
    doubt = run.measure(logits, xb, eligible, run.generator)  # (B, W) confidence in the committed token
    back = pick_remasks(doubt, eligible, run.cfg.remask_committed, run.cfg.remask_below)  # (B, W)
    # the re-masked tokens join the remaining budget, spread over the steps left (front first)
    block.schedule[:, i + 1:i + 1 + left] += num_transfer_tokens(back.sum(-1), left)
    return back


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
    check_context(model, P, cfg.gen_length)
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
