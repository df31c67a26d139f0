"""lm-evaluation-harness adapter: score and sample remask checkpoints with ``--model remask``.

    pip install 'remask[lm-eval]'
    remask-lm-eval --model remask --model_args ckpt=runs/x,mc_num=128 --tasks lambada_openai
    python -m remask.integrations.lm_eval --model remask --model_args ckpt=runs/x --tasks wikitext

lm-eval (0.4) looks models up in its own registry and loads no plugins, so a bare ``lm_eval``
process has never heard of "remask". Both commands above register the model and then run
lm-eval's own command line with the same arguments. From Python:

    import lm_eval
    from remask.integrations.lm_eval import register
    register()
    lm_eval.simple_evaluate(model="remask", model_args="ckpt=runs/x", tasks=["arc_easy"])

The three request types:

* ``loglikelihood``: log p(continuation | context); the MDM's Monte Carlo ELBO (``mc_num``,
  ``mc_batch_size``, ``estimator``, ``cfg_scale``, ``seed``) or the AR checkpoint's exact value.
  ``is_greedy``: whether greedy decoding (LLaDA's low-confidence sampler, one token per step, for
  an MDM) reproduces the continuation.
* ``loglikelihood_rolling``: the perplexity bound: the document after an EOS, in windows of the
  checkpoint's training length (``window``, ``stride``), as ``remask eval perplexity`` does.
* ``generate_until``: LLaDA's sampler (``gen_length``, ``steps``, ``block_length``,
  ``remasking``, ``temperature``, any ``SampleConfig`` field) or AR decoding, cut at the first
  stop string.

lm-eval's own ``--device`` defaults to ``cuda:0``; ``remask-lm-eval`` passes ``auto`` instead when
the command line names no device, so it runs on a CPU machine as every remask command does.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from remask.checkpoint import load_checkpoint
from remask.config import build
from remask.data.template import render, template_of
from remask.devices import pick_device
from remask.errors import RemaskError
from remask.evaluate import encode_pair, generate_texts
from remask.likelihood import LikelihoodConfig, ar_logliks, elbo, rolling_loglik, rolling_windows
from remask.model import is_causal
from remask.sampling import DecodeConfig, SampleConfig, generate
from remask.sampling.config import SAMPLER_FIELDS, sampler_config

try:
    from lm_eval.api.model import LM
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise RemaskError("the lm-eval adapter needs lm-evaluation-harness: pip install 'remask[lm-eval]'") from e

NAME = "remask"


def _size(value: int | str | None, default: int) -> int:
    """lm-eval's --batch_size may be 'auto' / 'auto:N'; we take those as our default."""
    return int(value) if isinstance(value, int) or (isinstance(value, str) and value.isdigit()) else default


class RemaskLM(LM):
    """A remask checkpoint (MDM or AR) behind lm-eval's LM interface.

    ``model_args`` other than ckpt, device, the batch sizes, window and stride are settings by
    their field names: the likelihood's (``LikelihoodConfig``: mc_num, estimator, cfg_scale, seed;
    its batch_size is ``mc_batch_size`` here, as lm-eval takes ``batch_size``) and the sampler's
    (``SampleConfig`` / ``ARSampleConfig``: gen_length, steps, block_length, remasking, temperature,
    ...). Both configs are built by the same builders as the CLI's and the server's, so a default
    lives in its dataclass alone.
    """

    def __init__(self, ckpt: str, device: str | None = None, batch_size: int | str | None = 1,
                 max_batch_size: int | None = None, mc_batch_size: int | None = None, window: int | None = None,
                 stride: int | None = None, **settings: Any) -> None:
        super().__init__()
        ck = load_checkpoint(ckpt, pick_device(device, flag="device"))
        self.model, self.tok, self.path = ck.model, ck.tokenizer, ck.path
        self.max_len = ck.config.model.max_seq_len
        self.window = window or min(ck.config.train.seq_len, self.max_len)
        self.stride = stride or self.window - 1
        likelihood = {k: v for k, v in settings.items() if k in LikelihoodConfig.__dataclass_fields__}
        unknown = sorted(set(settings) - set(likelihood) - set(SAMPLER_FIELDS))
        if unknown:
            raise RemaskError(f"unknown --model_args key {unknown[0]!r}; valid: ckpt, device, mc_batch_size, window, "
                              f"stride, {', '.join(sorted(set(LikelihoodConfig.__dataclass_fields__) | set(SAMPLER_FIELDS)))}")
        if mc_batch_size is not None:
            likelihood["batch_size"] = mc_batch_size
        self.lcfg = build(LikelihoodConfig, likelihood, "model_args")
        self.batch = _size(batch_size, 16)
        # the sampler settings; gen_length, when not given, follows each request's max_gen_toks
        self.gen = {k: v for k, v in settings.items() if k in SAMPLER_FIELDS}
        self._key = 0  # a fresh noise key per scored span: independent Monte Carlo errors

    @property
    def causal(self) -> bool:
        return is_causal(self.model)

    # ------------------------------------------------------------------------- loglikelihood

    def _fit(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """Keep the continuation whole and as much of the context (its end) as the model holds."""
        if len(cont) >= self.max_len:
            raise RemaskError(f"a continuation of {len(cont)} tokens does not fit the model context of "
                              f"{self.max_len} tokens with any context; pick a task with shorter targets")
        ctx = ctx or [self.tok.eos_id]  # an empty context starts a document
        return ctx[-(self.max_len - len(cont)):], cont

    def _greedy_mdm(self, ctx: list[int], cont: list[int]) -> bool:
        """Would the sampler, at temperature 0 and one token per step, produce ``cont``?"""
        cfg = SampleConfig(gen_length=len(cont), steps=len(cont), remasking="low_confidence")
        out = generate(self.model, [ctx], cfg, mask_id=self.tok.mask_id, eos_id=self.tok.eos_id,
                       eot_id=self.tok.eot_id)
        return out.tokens[0].tolist() == cont

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._fit(*encode_pair(self.tok, *req.args)) for req in requests]
        if self.causal:
            results = [(v, bool(g)) for v, g in ar_logliks(self.model, pairs, batch_size=self.batch, with_greedy=True)]
        else:
            results = []
            for ctx, cont in pairs:
                if not cont:
                    results.append((0.0, True))
                    continue
                est = elbo(self.model, ctx, cont, self.lcfg, mask_id=self.tok.mask_id, key=self._key)
                self._key += 1
                results.append((est.value, self._greedy_mdm(ctx, cont)))
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            stream = [self.tok.eos_id, *self.tok.encode_array(text).tolist()]
            est = rolling_loglik(self.model, stream, window=self.window, stride=self.stride, cfg=self.lcfg,
                                 mask_id=self.tok.mask_id, batch_size=self.batch, key=self._key)
            self._key += len(rolling_windows(len(stream), self.window, self.stride))
            out.append(est.value)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, est.value)
        return out

    # ------------------------------------------------------------------------- generation

    def _sample_config(self, kwargs: dict[str, Any]) -> DecodeConfig:
        """The model_args' sampler settings; the request sets the length (unless gen_length was
        given) and, when it samples (do_sample), the temperature."""
        request = {"gen_length": self.gen.get("gen_length") or int(kwargs.get("max_gen_toks", 64))}
        if kwargs.get("do_sample") and "temperature" in kwargs:
            request["temperature"] = float(kwargs["temperature"])
        return sampler_config({**self.gen, **request}, causal=self.causal)[0]

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            sample = self._sample_config(kwargs)
            ids = self.tok.encode(context)[-(self.max_len - sample.gen_length):] if context else []
            text = generate_texts(self.model, self.tok, [ids], sample)[0]
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    # ------------------------------------------------------------------------- chat

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return render(chat_history, self.tok, add_generation_prompt=add_generation_prompt)

    @property
    def tokenizer_name(self) -> str:
        return f"remask-{self.tok.kind}-{self.tok.digest()[:12]}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return template_of(self.tok) if chat_template else None


def register() -> type[RemaskLM]:
    """Make ``--model remask`` known to lm-eval in this process (idempotent)."""
    import lm_eval.models  # noqa: F401  (the built-in models first: lm-eval imports them only into an empty registry)
    from lm_eval.api.registry import MODEL_REGISTRY, register_model  # both names exist across lm-eval 0.4.x

    if NAME not in MODEL_REGISTRY:
        register_model(NAME)(RemaskLM)
    return RemaskLM


def main(argv: list[str] | None = None) -> None:
    """``remask-lm-eval ARGS`` == ``lm_eval ARGS`` with ``--model remask`` available."""
    from lm_eval.__main__ import cli_evaluate

    register()
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--device" or a.startswith("--device=") for a in args):
        args += ["--device", "auto"]  # lm-eval's default is cuda:0; ours is CUDA when there is one
    sys.argv = ["lm_eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
