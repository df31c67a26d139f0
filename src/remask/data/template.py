"""Chat templates: a conversation -> text, through a Jinja2 template stored with the tokenizer.

A conversation is a list of ``{"role": "system"|"user"|"assistant", "content": str}``. Its text
comes from the tokenizer's ``chat_template``; the default one is LLaDA's (Llama-3 style) layout
with remask's reserved role tokens::

    <|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n{content}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n{answer}<|eot_id|>

Templates render in a sandbox (a template comes with a checkpoint, i.e. from someone else) and
must be prefix-stable: each turn only appends text, so a history can grow turn by turn and SFT
can tell prompt from answer (``segments``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from remask.errors import RemaskError

ROLES = ("system", "user", "assistant")

# LLaDA's layout; the special strings come in as variables so any tokenizer's names work.
DEFAULT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ start_header }}{{ message['role'] }}{{ end_header }}\n\n{{ message['content'] }}{{ eot_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ start_header }}assistant{{ end_header }}\n\n{% endif %}"
)

Message = dict[str, str]


# ----------------------------------------------------------------------------- templates

def template_of(tok: Any) -> str:
    """The tokenizer's chat template, or the default (LLaDA's layout) when it has none."""
    return tok.chat_template or DEFAULT_TEMPLATE


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    # Sandboxed: a template comes with a checkpoint, i.e. from someone else. trim/lstrip_blocks
    # are the settings Hugging Face renders chat templates with, so theirs render identically.
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise RemaskError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise RemaskError(f"the chat template does not parse ({e}); fix the Jinja2 string") from None


def render(messages: Sequence[Message], tok: Any, *, add_generation_prompt: bool = False,
           template: str | None = None) -> str:
    """Conversation -> text through the chat template (the tokenizer's, else the default)."""
    from jinja2 import TemplateError

    specials = tok.special_tokens
    try:
        return _compile(template or template_of(tok)).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=specials["bos"],
            eos_token=specials["eos"], eot_token=specials["eot"], start_header=specials["start_header"],
            end_header=specials["end_header"])
    except TemplateError as e:
        raise RemaskError(f"the chat template failed to render ({type(e).__name__}: {e}); fix the template") from None


def delta(longer: str, shorter: str, what: str) -> str:
    if not longer.startswith(shorter):
        raise RemaskError(f"the chat template is not prefix-stable ({what} does not extend the text before it); "
                          "history and supervision need a template that only appends turns")
    return longer[len(shorter):]


def segments(messages: Sequence[Message], tok: Any, template: str | None = None) -> list[tuple[str, bool]]:
    """Split a rendered conversation into (text, is_answer) pieces; answers are the assistant
    turns as the template writes them (content and end-of-turn), everything else is prompt."""
    out: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(messages[:i], tok, add_generation_prompt=True, template=template)
        full = render(messages[: i + 1], tok, template=template)
        out.append((delta(prompt, done, f"turn {i}'s prompt"), False))
        out.append((delta(full, prompt, f"assistant turn {i}"), True))
        done = full
    return out
