"""The engine: one model and its tokenizer; request bodies -> ``Job``s, and a batch of jobs -> text.

``Engine.run`` generates several jobs as one batch (``sampling.decode.decode_stream`` over all
their rows; prompts of different lengths are left-padded by the sampler) and hands each job its
own rows' text as it becomes final (``Sink``). Every answer, streamed or not, is the stable prefix
of the canvas (``stream.TextDeltas``): the text before the first mask, cut at the first EOS/EOT,
then at the first ``stop`` string. A job whose rows have all hit a stop string gets its answer at
once; a job whose client has left is no longer looked at (its rows are still computed: the batch
keeps its shape, so its other rows stay exactly what they are alone); once no job of a batch is
left the remaining steps are skipped. Blocking: the scheduler runs it in its worker thread.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from remask.config import check
from remask.data.template import ROLES, render
from remask.model import check_context, context_length, is_causal
from remask.sampling.config import DecodeConfig, SampleConfig, sampler_config
from remask.sampling.decode import decode_stream, for_model
from remask.sampling.rules import measure_name
from remask.sampling.stream import TextDeltas, stop_index
from remask.serve.limits import ServerConfig
from remask.serve.pins import parse_pins, pinned_config, pinned_stream, pins_payload
from remask.serve.requests import REQUEST_FIELDS, Job, get, json_kind, stops, utf8


@dataclass
class Result:
    """What a job produced, per row, plus the cost of the batch it ran in."""

    texts: list[str]
    finish: list[str]  # "stop" (EOS/EOT or a stop string) or "length"
    completion_tokens: list[int]  # answer tokens before the first EOS/EOT (or the mask a stop cut at)
    n_forward: int  # forward passes of its batch until it was done (shared with the jobs batched with it)
    n_forward_saved: int


class Sink(Protocol):
    """Where ``Engine.run`` sends one job's output (``batching.Ticket``)."""

    job: Job

    @property
    def live(self) -> bool: ...  # False once the client has left: its rows are ignored

    def piece(self, row: int, text: str) -> None: ...  # newly final text of a row (a choice index)

    def step(self, payload: dict[str, Any]) -> None: ...  # a denoising step of a row (``Job.stream_steps``)

    def done(self, result: Result) -> None: ...


class StopCut:
    """Text pieces in, text out, ending before the first stop string; a tail that may begin one is
    held back until the next piece shows whether it does."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.text, self.sent, self.hit = stops, "", 0, False

    def feed(self, piece: str, final: bool = False) -> str:
        self.text += piece
        cut = min((i for s in self.stops if (i := self.text.find(s)) >= 0), default=-1)
        self.hit = cut >= 0
        end = cut if self.hit else len(self.text) if final else len(self.text) - self._held()
        out, self.sent = self.text[self.sent:max(end, self.sent)], max(end, self.sent)
        return out

    def _held(self) -> int:
        longest = max((len(s) for s in self.stops), default=1) - 1
        for k in range(min(longest, len(self.text)), 0, -1):
            if any(s.startswith(self.text[-k:]) for s in self.stops):
                return k
        return 0


class Tracker:
    """One job's rows through its batch's steps: the text each row has made final, cut at stop strings."""

    def __init__(self, engine: Engine, job: Job) -> None:
        self.engine, self.job = engine, job
        self.deltas = [TextDeltas(engine.tok) for _ in job.rows]
        self.cuts = [StopCut(job.stop) for _ in job.rows]

    def update(self, cols: Sequence[Sequence[int]], final: bool = False) -> list[tuple[int, str]]:
        """The job's answer columns (rows, gen_length) after a step -> [(row, newly final text), ...]."""
        out = []
        for r, (deltas, cut) in enumerate(zip(self.deltas, self.cuts)):
            if cut.hit:
                continue
            ids = cols[r][:self.job.max_tokens]
            if piece := cut.feed(deltas.finish(ids) if final else deltas.update(ids), final=final):
                out.append((r, piece))
        return out

    @property
    def stopped(self) -> bool:
        """Every row has reached a stop string: the job needs no more steps."""
        return all(c.hit for c in self.cuts)

    def result(self, cols: Sequence[Sequence[int]], n_forward: int, saved: int) -> Result:
        counted = [self.engine.answer_length(list(cols[r][:self.job.max_tokens])) for r in range(len(self.cuts))]
        return Result(texts=[c.text[:c.sent] for c in self.cuts],
                      finish=["stop" if c.hit or ended else "length" for c, (_, ended) in zip(self.cuts, counted)],
                      completion_tokens=[n for n, _ in counted], n_forward=n_forward, n_forward_saved=saved)


class Engine:
    """One model and its tokenizer: requests -> jobs -> text, blocking (the app runs it off the loop)."""

    def __init__(self, model: Any, tokenizer: Any, defaults: DecodeConfig, *, random_seed: bool = False,
                 limits: ServerConfig | None = None) -> None:
        self.model, self.tok, self.random_seed = model, tokenizer, random_seed
        self.limits = limits if limits is not None else ServerConfig()
        self.defaults = for_model(defaults, model)
        self.causal = is_causal(model)
        self.context = context_length(model)
        self.vocab = getattr(getattr(model, "cfg", None), "vocab_size", None) or tokenizer.vocab_size
        self.ends = {tokenizer.eos_id} | ({tokenizer.eot_id} if getattr(tokenizer, "eot_id", None) is not None
                                          else set())

    # ------------------------------------------------------------------------- requests -> jobs

    def encode_prompts(self, prompt: Any) -> list[list[int]]:
        """/v1/completions ``prompt``: a string, a list of strings, token ids or a list of those."""
        check(prompt is not None, "'prompt' is required: a string or a list of strings")
        rows = [prompt] if isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                                       and isinstance(prompt[0], int)) else prompt
        check(isinstance(rows, list) and len(rows) > 0,
              "'prompt' must be a string, a list of strings or token ids, and not an empty list")
        check(len(rows) <= self.limits.max_batch_size, f"'prompt' holds {len(rows)} prompts; this server takes at "
                                                       f"most {self.limits.max_batch_size} (max_batch_size)")
        out = []
        for i, row in enumerate(rows):
            if isinstance(row, str):
                out.append(self.tok.encode(utf8(row, f"prompt {i}")))
            else:
                check(isinstance(row, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in row),
                      f"prompt {i} must be a string or a list of token ids")
                bad = [t for t in row if not 0 <= t < self.vocab]
                check(not bad, f"prompt {i} holds token id {str(bad[0] if bad else 0)[:24]}, outside the "
                               f"vocabulary (size {self.vocab})")
                out.append(list(row))
            check(len(out[-1]) > 0, f"prompt {i} is empty; send some text (a document start needs one token)")
        return out

    def encode_chat(self, messages: Any) -> list[int]:
        """OpenAI ``messages`` -> the chat template's text up to the assistant header, as ids."""
        check(isinstance(messages, list) and len(messages) > 0,
              "'messages' is required: a non-empty list of {\"role\", \"content\"} objects")
        specials = [s for s in self.tok.special_tokens.values() if s]
        msgs = []
        for k, m in enumerate(messages):
            check(isinstance(m, dict) and m.get("role") in ROLES,
                  f"messages[{k}] must be an object with a 'role' among {', '.join(ROLES)}")
            content = m.get("content")
            if isinstance(content, list):  # OpenAI content parts: only text ones
                check(all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                          for p in content), f"messages[{k}] content parts must all be {{\"type\": \"text\"}}")
                content = "".join(p["text"] for p in content)
            check(isinstance(content, str), f"messages[{k}] 'content' must be a string")
            # the rendered text is encoded with specials on: a special token in content would forge a turn
            found = next((s for s in specials if s in content), None)
            check(found is None, f"messages[{k}] content holds the special token {found!r}; remove it")
            msgs.append({"role": m["role"], "content": utf8(content, f"messages[{k}] content")})
        return self.tok.encode(render(msgs, self.tok, add_generation_prompt=True), allow_special=True)

    def job(self, body: dict[str, Any], prompts: list[list[int]]) -> Job:
        """Validate a request's fields against the server's defaults and limits (RemaskError if wrong)."""
        d, limits = self.defaults, self.limits
        max_tokens = get(body, "max_completion_tokens", int, None)  # chat's newer name for max_tokens
        max_tokens = get(body, "max_tokens", int, d.gen_length) if max_tokens is None else max_tokens
        check(max_tokens > 0, f"max_tokens must be positive, got {max_tokens}")
        ceiling = limits.max_tokens_limit
        check(ceiling is None or max_tokens <= ceiling, f"max_tokens {max_tokens} exceeds this server's limit of "
                                                        f"{ceiling} (max_tokens_limit)")
        longest = max(len(p) for p in prompts)
        check(limits.max_prompt_tokens is None or longest <= limits.max_prompt_tokens,
              f"the prompt is {longest} tokens; this server takes at most {limits.max_prompt_tokens} "
              "(max_prompt_tokens)")
        n = get(body, "n", int, 1)
        check(1 <= n <= limits.max_n, f"'n' must be 1 on this server (max_n); send a list of prompts for several "
                                      f"completions, got {n}" if limits.max_n == 1 else
                                      f"'n' must be in 1..{limits.max_n} (max_n), got {n}")
        check(n * len(prompts) <= limits.max_batch_size, f"{len(prompts)} prompts x n {n} = {n * len(prompts)} rows; "
                                                          f"this server batches at most {limits.max_batch_size}")
        check(not body.get("logprobs") and not body.get("echo"), "logprobs and echo are not supported")
        stream = get(body, "stream", bool, False)
        steps = get(body, "stream_steps", bool, False)
        check(stream or not steps, "'stream_steps' needs 'stream': true (the steps are sent as events)")
        include_usage = get(get(body, "stream_options", dict, {}), "include_usage", bool, False)
        cfg = self._config(body, max_tokens)
        rounded = f" (rounded up to whole blocks: {cfg.gen_length})" if cfg.gen_length != max_tokens else ""
        check_context(self.model, longest, cfg.gen_length,
                      f"prompt ({{used}} tokens) + max_tokens {max_tokens}{rounded} exceeds the model context of "
                      "{limit} tokens; shorten the prompt or lower max_tokens")
        pins = parse_pins(body.get("pins"), self.tok, max_tokens=max_tokens, causal=self.causal)
        cfg = pinned_config(cfg) if pins else cfg
        return Job(prompts, cfg, max_tokens, stops(body.get("stop")), stream, include_usage, cfg.seed, n, steps, pins)

    def _config(self, body: dict[str, Any], max_tokens: int) -> Any:
        """The request's sampler settings on the server's defaults -> its SampleConfig or ARSampleConfig."""
        settings = {k: get(body, k, json_kind(k), None) for k in REQUEST_FIELDS}
        if settings["top_p"] == 1.0:  # OpenAI clients send it by default: no nucleus cut, for either decoder
            settings["top_p"] = None
        if settings["seed"] is None:
            settings["seed"] = secrets.randbelow(2**31) if self.random_seed else self.defaults.seed
        check(settings["seed"] >= 0, f"'seed' must be >= 0, got {settings['seed']}")
        asked = settings["steps"]
        settings["gen_length"] = length = max_tokens if self.causal else self._whole_blocks(max_tokens, settings)
        check(self.causal or asked is None or asked <= length,
              f"steps {asked} exceeds the answer length {length} (max_tokens, in whole blocks); every step "
              "commits at least one token")
        cfg, foreign = sampler_config(settings, causal=self.causal, base=self.defaults)  # validates
        check(not foreign, f"'{foreign[0] if foreign else ''}' is "
                           f"{'a diffusion sampler setting; this checkpoint is autoregressive (causal)' if self.causal else 'an AR sampler setting (top_k, top_p, kv_cache); this checkpoint is a masked diffusion model, which takes temperature and remasking'}")
        return cfg

    def _whole_blocks(self, max_tokens: int, settings: dict[str, Any]) -> int:
        """A diffusion canvas covers whole blocks: max_tokens rounded up. Without ``steps`` the request
        keeps the server's steps per token (a multiple of the blocks), set in ``settings``."""
        d = self.defaults
        block = settings["block_length"] if settings["block_length"] is not None else d.block_length
        length = -(-max_tokens // block) * block if block and block > 0 else max_tokens
        if settings["steps"] is None:
            blocks = length // block if block and block > 0 else 1
            settings["steps"] = max(blocks, -(-round(d.steps * length / d.gen_length) // blocks) * blocks)
        return length

    # ------------------------------------------------------------------------- a batch of jobs -> text

    def run(self, sinks: Sequence[Sink]) -> int:
        """Generate every sink's job as one batch (their configs must agree but for the seed of a
        noiseless one, see ``batching.batch_key``) -> the forward passes it took."""
        jobs = [s.job for s in sinks]
        n = jobs[0].cfg.gen_length
        rows, ends = [row for j in jobs for row in j.rows], {"eos_id": self.tok.eos_id,
                                                              "eot_id": getattr(self.tok, "eot_id", None)}
        if jobs[0].pins:  # a batch shares its pins (``batching.Ticket.key``)
            events = pinned_stream(self.model, rows, jobs[0].cfg, jobs[0].pins, mask_id=self.tok.mask_id, **ends)
        else:
            events = decode_stream(self.model, rows, jobs[0].cfg, mask_id=self.tok.mask_id, **ends)
        starts = [sum(len(j.rows) for j in jobs[:k]) for k in range(len(jobs))]
        for s in sinks:
            if s.job.pins and s.job.stream_steps:
                for r in range(len(s.job.rows)):
                    s.step(pins_payload(s.job.pins, r, n, self.tok))
        going = [(s, Tracker(self, s.job), a) for s, a in zip(sinks, starts)]
        cols: list[list[int]] = []
        n_forward = saved = 0
        try:
            for event in events:
                cols = event.canvas[:, event.canvas.shape[1] - n:].tolist()  # (B, gen_length): one copy a step
                n_forward, saved = event.n_forward, event.n_forward_saved
                going = [g for g in going if g[0].live and not self._advance(*g, cols, event, n_forward)]
                if not any(sink.live for sink, _, _ in going):  # looked at again before the next step
                    break  # every job is answered or abandoned: the remaining steps are not needed
        finally:
            events.close()
        for sink, tracker, a in filter(lambda g: g[0].live, going):
            mine = cols[a:a + len(sink.job.rows)]
            for r, piece in tracker.update(mine, final=True):
                sink.piece(r, piece)
            sink.done(tracker.result(mine, n_forward, saved))
        return n_forward

    def _advance(self, sink: Sink, tracker: Tracker, a: int, cols: list[list[int]], event: Any, n_forward: int) -> bool:
        """One step for one job (its rows start at batch row ``a``) -> whether the job is done."""
        mine = cols[a:a + len(sink.job.rows)]
        for r, piece in tracker.update(mine):
            sink.piece(r, piece)
        if sink.job.stream_steps:
            for r in range(len(mine)):
                sink.step(self.step_payload(event, a + r, r, len(cols[0])))
        if tracker.stopped:
            sink.done(tracker.result(mine, n_forward, 0))
        return tracker.stopped

    def step_payload(self, event: Any, row: int, index: int, length: int) -> dict[str, Any]:
        """One step of batch row ``row`` (choice ``index``) for a viewer: the answer columns it committed
        (column, token id, token text, confidence or None) and those it sent back to the mask."""
        width = event.canvas.shape[1] - length  # prompt columns (left padding included)
        ids = event.canvas[row, width:].tolist()
        if hasattr(event, "committed"):  # a diffusion StepEvent
            cols = (event.committed[row, width:].nonzero().flatten()).tolist()
            conf = event.confidence[row, width:].tolist()
            remasked = [c - width for c in event.remasks(row)]
        else:  # an AR step: one token at ``position``
            cols, conf, remasked = [event.position], [math.nan] * length, []
        commits = [[c, ids[c], self.tok.decode([ids[c]]), conf[c] if math.isfinite(conf[c]) else None] for c in cols]
        return {"object": "remask.step", "index": index, "step": event.step, "block": getattr(event, "block", 0),
                "length": length, "n_forward": event.n_forward, "early_exit": bool(getattr(event, "early_exit", False)),
                "commits": commits, "remasked": remasked}

    def answer_length(self, ids: list[int]) -> tuple[int, bool]:
        """(tokens before the first EOS/EOT or mask, whether EOS/EOT ended the answer)."""
        cut = stop_index(ids, self.ends | {self.tok.mask_id})
        return cut, cut < len(ids) and ids[cut] in self.ends


def draws_noise(cfg: Any) -> bool:
    """Whether a sampler config draws from its generator: then its answer depends on the batch it is in."""
    if cfg.temperature > 0:
        return True
    return isinstance(cfg, SampleConfig) and measure_name(cfg.remasking, cfg.confidence) == "random"
