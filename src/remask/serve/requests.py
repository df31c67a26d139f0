"""Reading a request body: typed fields, the request schema, and ``Job`` (a request, validated).

The sampler settings a request may send are the ``SampleConfig`` / ``ARSampleConfig`` fields, under
their own names and types (``REQUEST_FIELDS``); the schema at /openapi.json is derived from those
fields, so a default or a help text is declared once. The rest are OpenAI's (max_tokens, n, stop,
stream, stream_options, model) and one of remask's own (``stream_steps``, every denoising step as
an event: what a viewer draws) and ``pins`` (words fixed at answer positions, ``serve.pins``).
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remask.config import check
from remask.sampling.config import SAMPLER_FIELDS, ARSampleConfig, DecodeConfig, SampleConfig

if TYPE_CHECKING:
    from remask.serve.pins import Pin

# Sampler settings a request may send under their field names (``sampling.config``); the answer
# length comes as OpenAI's max_tokens, and precision and compilation are the server's own.
SERVER_ONLY = ("gen_length", "dtype", "compile")
REQUEST_FIELDS = tuple(name for name in SAMPLER_FIELDS if name not in SERVER_ONLY)
LARGEST_INT = 2**63 - 1  # what a torch seed (and any count) may be; JSON integers are unbounded

_HINTS = {**typing.get_type_hints(SampleConfig), **typing.get_type_hints(ARSampleConfig)}
_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "an object"}

# The request fields that are neither sampler settings nor the prompt: (JSON type, description).
OPENAI_FIELDS: dict[str, tuple[str | list[str], str]] = {
    "model": ("string", "the served model's id (GET /v1/models); another gets 404 model_not_found"),
    "n": ("integer", "completions per prompt, generated in one batch"),
    "stop": (["string", "array"], "up to 4 strings; the answer ends before the first one"),
    "stream": ("boolean", "send the answer as server-sent events, a chunk per newly final piece of text"),
    "stream_options": ("object", "{\"include_usage\": true} adds a last chunk with the usage"),
    "stream_steps": ("boolean", "with stream: also send every denoising step as an event named 'step' (the "
                                "positions it committed, their tokens and confidences; what a viewer draws)"),
    "pins": ("array", "words fixed at answer token positions, [{\"position\": 5, \"text\": \" cat\"}], the rest "
                      "written around them (infilling; diffusion checkpoints only); the answer runs to max_tokens"),
}


def get(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """``body[key]`` checked against a JSON type; absent or null gives ``default``. Numbers must be
    finite, integers below 2**63."""
    value = body.get(key)
    if value is None:
        return default
    ok = (isinstance(value, int | float) and not isinstance(value, bool) if kind is float
          else isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
    check(ok, f"'{key}' must be {_NAMES[kind]}, got {json.dumps(value)[:40]}")
    check(kind is not float or math.isfinite(value), f"'{key}' must be a finite number, got {value}")
    check(kind is not int or abs(value) <= LARGEST_INT, f"'{key}' must be below 2**63, got {str(value)[:30]}")
    return float(value) if kind is float else value


def json_kind(name: str) -> type:
    """The JSON type a request sends for sampler setting ``name``: its field's type (null aside)."""
    args = [a for a in typing.get_args(_HINTS[name]) if a is not type(None)]
    return args[0] if args else _HINTS[name]


def request_schema(defaults: DecodeConfig) -> dict[str, Any]:
    """The JSON schema of the settings a request may send: name, type, default (the server's, for the
    checkpoint's kind of decoder) and description, each sampler setting's from its dataclass field."""
    names = {int: "integer", float: "number", bool: "boolean", str: "string"}
    props: dict[str, Any] = {"max_tokens": {"type": "integer", "default": defaults.gen_length,
                                            "description": SAMPLER_FIELDS["gen_length"].metadata["help"]}}
    for name in REQUEST_FIELDS:
        f, kind = SAMPLER_FIELDS[name], names[json_kind(name)]
        props[name] = {"type": [kind, "null"] if type(None) in typing.get_args(_HINTS[name]) else kind,
                       "default": getattr(defaults, name, f.default), "description": f.metadata["help"],
                       **({"enum": list(f.metadata["choices"])} if f.metadata.get("choices") else {})}
    props.update({name: {"type": kind, "description": text} for name, (kind, text) in OPENAI_FIELDS.items()})
    return {"type": "object", "properties": props}


def stops(value: Any) -> list[str]:
    """``stop``: a string or a list of at most 4 non-empty ones."""
    found = [value] if isinstance(value, str) else value if value is not None else []
    check(isinstance(found, list) and len(found) <= 4 and all(isinstance(s, str) and s for s in found),
          f"'stop' must be a non-empty string or a list of at most 4 of them, got {json.dumps(value)[:60]}")
    return found


def utf8(text: str, where: str) -> str:
    """``text`` if it can be encoded (JSON may carry an unpaired surrogate, which no tokenizer takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        check(False, f"{where} holds an unpaired UTF-16 surrogate; send valid Unicode text")
    return text


@dataclass
class Job:
    """A validated request: prompts (token ids), the sampler config and what to do with the text."""

    prompts: list[list[int]]
    cfg: Any  # SampleConfig (diffusion) or ARSampleConfig (causal)
    max_tokens: int  # the answer is cut here (a diffusion canvas is rounded up to whole blocks)
    stop: list[str]
    stream: bool
    include_usage: bool
    seed: int
    n: int = 1  # completions per prompt: rows prompt 0 (n times), prompt 1 (n times), ...
    stream_steps: bool = False
    pins: tuple[Pin, ...] = ()  # words fixed in every row's answer (``serve.pins``)

    @property
    def rows(self) -> list[list[int]]:
        """The batch rows this job fills, in choice order."""
        return [p for p in self.prompts for _ in range(self.n)]
