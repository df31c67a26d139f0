"""Tokenizers: a dependency-free byte tokenizer (the default) and a wrapper for Hugging Face ones.

Both expose the same small surface (``encode``, ``encode_array``, ``decode``, the special ids and a
chat template) so the model, the samplers and the chat code never care which one is in use.
Specials are always looked up by *name*, never renumbered, so a real LLaDA-8B tokenizer keeps its
ids (``<|mdm_mask|>`` = 126336, ``<|endoftext|>`` = 126081, ...) and checkpoints stay compatible.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from remask.errors import RemaskError
from remask.fileio import write_text_atomic

if TYPE_CHECKING:
    import tokenizers
    import torch

MASK = "<|mdm_mask|>"
EOS = "<|endoftext|>"
BOS = "<|startoftext|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"

# role -> default string; the order is also the id order in ByteTokenizer and train_bpe.
DEFAULT_SPECIALS: dict[str, str] = {
    "mask": MASK, "eos": EOS, "bos": BOS, "start_header": START_HEADER, "end_header": END_HEADER, "eot": EOT,
}
# Names other tokenizers use for the same roles; the first one present in a vocabulary wins.
_ALIASES: dict[str, tuple[str, ...]] = {
    "mask": (MASK, "<mask>", "[MASK]"),
    "eos": (EOS, "</s>", "<|end_of_text|>", "<eos>"),
    "bos": (BOS, "<s>", "<|begin_of_text|>", "<bos>"),
    "eot": (EOT, "<|im_end|>", "<end_of_turn>"),
    "start_header": (START_HEADER,),
    "end_header": (END_HEADER,),
}
CONFIG_FILE = "tokenizer_config.json"
HF_FILE = "tokenizer.json"
MODEL_CONFIG_FILE = "config.json"  # a Hugging Face model directory's: its vocab_size may exceed the tokenizer's
ROLES_KEY = "remask_special_tokens"  # remask's key in an exported tokenizer_config.json: role -> token string

# LLaDA-8B-Instruct's published chat template writes the assistant header after every conversation,
# asked for or not: a history could not grow turn by turn (each render would end in a header the
# next turn does not continue), and SFT would supervise that header as part of the answer. This
# template writes the same text with the header only when asked; ``load_tokenizer`` puts it in
# place of such a template only after both render probe conversations identically.
LLADA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ start_header }}{{ message['role'] }}{{ end_header }}\n\n{{ message['content'] | trim }}{{ eot_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ start_header }}assistant{{ end_header }}\n\n{% endif %}"
)
_PROBES = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "2 + 2?"},
     {"role": "assistant", "content": "4\n"}, {"role": "user", "content": "And 3 + 3?"}],
)


class Tokenizer:
    """What every remask tokenizer provides. ``pad_id`` is ``eos_id``: LLaDA pads with EOS."""

    kind: str
    vocab_size: int
    special_tokens: dict[str, str]  # role -> token string, e.g. {"mask": "<|mdm_mask|>"}
    special_ids: dict[str, int]  # token string -> id, for every special token
    chat_template: str | None

    def _role_id(self, role: str) -> int:
        return self.special_ids[self.special_tokens[role]]

    @property
    def mask_id(self) -> int:
        return self._role_id("mask")

    @property
    def eos_id(self) -> int:
        return self._role_id("eos")

    @property
    def bos_id(self) -> int:
        return self._role_id("bos")

    @property
    def eot_id(self) -> int:
        return self._role_id("eot")

    @property
    def pad_id(self) -> int:
        return self.eos_id

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        """Raw corpus text -> ids, specials treated as plain text (a corpus can't forge a [MASK])."""
        return np.asarray(self.encode(text, allow_special=False), dtype=np.int64)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError

    def digest(self) -> str:
        """A short hash that changes whenever encoding could change (used to reuse prepared data)."""
        raise NotImplementedError

    def hf_json(self) -> str:
        """The tokenizer as a Hugging Face ``tokenizer.json`` (ids and encodings unchanged)."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        return {"type": self.kind, "special_tokens": dict(self.special_tokens), "chat_template": self.chat_template}


def _as_int_list(ids: Sequence[int] | torch.Tensor | np.ndarray) -> list[int]:
    if hasattr(ids, "tolist"):  # torch.Tensor or np.ndarray, any shape that is really 1-D
        ids = ids.tolist()
    return [int(i) for i in ids]


# ----------------------------------------------------------------------------- bytes

class ByteTokenizer(Tokenizer):
    """Ids 0..255 are UTF-8 bytes, then the specials: no training, no files, any text round-trips."""

    kind = "bytes"
    RESERVED = ("<|reserved_0|>", "<|reserved_1|>")

    def __init__(self, chat_template: str | None = None) -> None:
        self.special_tokens = dict(DEFAULT_SPECIALS)
        names = [*DEFAULT_SPECIALS.values(), *self.RESERVED]
        self.special_ids = {name: 256 + i for i, name in enumerate(names)}
        self._id_to_special = {i: name for name, i in self.special_ids.items()}
        self.vocab_size = 256 + len(names)  # 264
        self.chat_template = chat_template
        self._special_re = re.compile("|".join(re.escape(n) for n in names))

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        if not allow_special:
            return list(text.encode("utf-8"))
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            ids.extend(text[pos:m.start()].encode("utf-8"))
            ids.append(self.special_ids[m.group()])
            pos = m.end()
        ids.extend(text[pos:].encode("utf-8"))
        return ids

    def encode_array(self, text: str) -> np.ndarray:
        # one copy for the UTF-8 bytes, one widening copy; no Python loop over characters
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        out: list[str] = []
        buf = bytearray()
        for i in _as_int_list(ids):
            if 0 <= i < 256:
                buf.append(i)
                continue
            # a special or an invalid id ends the current byte run
            out.append(buf.decode("utf-8", errors="replace"))
            buf.clear()
            if i in self._id_to_special:
                if not skip_special_tokens:
                    out.append(self._id_to_special[i])
            else:
                out.append("\ufffd")
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def token_to_id(self, token: str) -> int | None:
        if token in self.special_ids:
            return self.special_ids[token]
        b = token.encode("utf-8")
        return b[0] if len(b) == 1 else None

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / CONFIG_FILE, json.dumps(self._config(), indent=2) + "\n")

    def digest(self) -> str:
        return "bytes-v1"

    def hf_json(self) -> str:
        # Byte-level BPE without merges: each byte is one symbol, id = byte value; the specials follow
        # at 256.. in id order. No regex split, no prefix space: the bytes of any text, as here.
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as _HF

        tok = _HF(models.BPE(vocab={c: b for b, c in enumerate(_byte_symbols())}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        names = sorted(self.special_ids, key=self.special_ids.__getitem__)
        tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
        return tok.to_str()


def _byte_symbols() -> list[str]:
    """The character byte-level BPE writes for each byte 0..255 (the convention of the ``tokenizers``
    ByteLevel pre-tokenizer and decoder): printable Latin-1 bytes stand for themselves; the others,
    in byte order, take the code points from 256 on."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out, shifted = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + shifted))
            shifted += 1
    return out


def byte_tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


# ----------------------------------------------------------------------------- Hugging Face

class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` with remask's specials found by name (or added when absent).

    ``special_tokens`` maps a role (mask, eos, bos, eot, start_header, end_header) to the token
    string to use; roles left out are found among common aliases, else the remask name is added.
    Adding grows the vocabulary, which ``vocab_size`` reflects. The caller's object is not mutated.
    """

    kind = "hf"

    def __init__(self, tok: tokenizers.Tokenizer, special_tokens: dict[str, str] | None = None,
                 chat_template: str | None = None) -> None:
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as _HF

        tok = _HF.from_str(tok.to_str())  # private copy: we add tokens and flip encode_special_tokens
        given = dict(special_tokens or {})
        unknown = sorted(set(given) - set(DEFAULT_SPECIALS))
        if unknown:
            raise RemaskError(f"unknown special token role {unknown[0]!r}; roles are {', '.join(DEFAULT_SPECIALS)}")
        roles: dict[str, str] = {}
        for role, default in DEFAULT_SPECIALS.items():
            if given.get(role):
                roles[role] = given[role]
            else:
                roles[role] = next((a for a in _ALIASES[role] if tok.token_to_id(a) is not None), default)
        # Registering a token that is already in the vocabulary keeps its id; new ones are appended.
        # Marking them special makes encode() match them as units and lets decode skip them.
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in dict.fromkeys(roles.values())])
        self._tok = tok
        self._raw = _HF.from_str(tok.to_str())
        self._raw.encode_special_tokens = True  # corpora: "<|mdm_mask|>" in text is just characters
        self.special_tokens = roles
        added = {i: t.content for i, t in tok.get_added_tokens_decoder().items() if t.special}
        self.special_ids = {content: i for i, content in sorted(added.items())}
        for s in roles.values():
            self.special_ids[s] = tok.token_to_id(s)
        self.vocab_size = max(tok.get_vocab_size(with_added_tokens=True), max(self.special_ids.values()) + 1)
        self.chat_template = chat_template

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        # add_special_tokens=False: no post-processor BOS/EOS; callers place specials themselves
        tok = self._tok if allow_special else self._raw
        return tok.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._raw.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        # the Rust side raises on negative ids; ids past the vocabulary are dropped like it would
        valid = [i for i in _as_int_list(ids) if 0 <= i < self.vocab_size]
        return self._tok.decode(valid, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / HF_FILE, self._tok.to_str())
        write_text_atomic(directory / CONFIG_FILE, json.dumps(self._config(), indent=2) + "\n")

    def digest(self) -> str:
        return "hf-" + hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()[:16]

    def hf_json(self) -> str:
        return self._tok.to_str()


# ----------------------------------------------------------------------------- loading

def _token_name(value: Any) -> str | None:
    """HF configs store a token as "<s>" or as {"content": "<s>", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _hf_chat_template(value: Any) -> str | None:
    """HF's chat_template is a string, or a list of {"name", "template"} with a "default" one."""
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default", next(iter(named.values()), None))
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RemaskError(f"cannot read tokenizer file '{path}' ({type(e).__name__}: {e}); "
                          "re-save the tokenizer or pass --tokenizer bytes") from None


def load_tokenizer(path: str | Path | Tokenizer | None) -> Tokenizer:
    """None or "bytes" -> ByteTokenizer; else a directory (tokenizer_config.json and/or
    tokenizer.json, remask's or Hugging Face's format) or a path to a tokenizer.json file.
    A Tokenizer object is returned as it is, so APIs can take either.

    In a Hugging Face model directory (LLaDA-8B's), the model's config.json may raise ``vocab_size``
    to the embedding's rows, and a template like LLaDA-8B-Instruct's is replaced by LLADA_TEMPLATE."""
    if isinstance(path, Tokenizer):
        return path
    if path is None or str(path) == "bytes":
        return ByteTokenizer()
    p = Path(path)
    if not p.exists():
        raise RemaskError(f"tokenizer '{p}' does not exist; give a directory with tokenizer.json, "
                          "a tokenizer.json file, or 'bytes'")
    if p.is_file():
        directory = p.parent
        hf_file: Path | None = p if p.name != CONFIG_FILE else (directory / HF_FILE)
    else:
        directory, hf_file = p, p / HF_FILE
    if hf_file is not None and not hf_file.is_file():
        hf_file = None
    cfg_file = directory / CONFIG_FILE
    cfg = _read_json(cfg_file) if cfg_file.is_file() else {}
    if not isinstance(cfg, dict):
        raise RemaskError(f"tokenizer config '{cfg_file}' is not a JSON object; re-save the tokenizer")

    if cfg.get("type") == "bytes":
        tok = ByteTokenizer(chat_template=cfg.get("chat_template"))
        if cfg.get("special_tokens", tok.special_tokens) != tok.special_tokens:
            raise RemaskError(f"'{cfg_file}' declares byte-tokenizer specials that differ from remask's; "
                              "delete its special_tokens entry or re-save the tokenizer")
        return tok
    if hf_file is None:
        raise RemaskError(f"no tokenizer.json found at '{p}'; give a Hugging Face tokenizer directory, "
                          "a tokenizer.json file, or 'bytes'")

    from tokenizers import AddedToken
    from tokenizers import Tokenizer as _HF

    try:
        hf = _HF.from_file(str(hf_file))
    except Exception as e:  # the Rust parser raises plain Exception subclasses
        raise RemaskError(f"cannot parse tokenizer '{hf_file}' ({e}); is it a Hugging Face tokenizer.json?") from None

    if cfg.get("type") == "hf":  # remask's own format
        roles = cfg.get("special_tokens") or {}
        if not isinstance(roles, dict):
            raise RemaskError(f"'{cfg_file}': special_tokens must be an object; re-save the tokenizer")
        return HFTokenizer(hf, special_tokens=roles, chat_template=cfg.get("chat_template"))

    # Hugging Face's tokenizer_config.json (or none). Tokens only the slow tokenizer knew are added
    # in id order, which reproduces their ids when they sit right after the vocabulary.
    decoder = cfg.get("added_tokens_decoder")
    decoder = decoder if isinstance(decoder, dict) else {}
    extra = []
    for _, entry in sorted(((int(k), v) for k, v in decoder.items() if str(k).isdigit()), key=lambda kv: kv[0]):
        name = _token_name(entry)
        if name and hf.token_to_id(name) is None:
            special = bool(entry.get("special", True)) if isinstance(entry, dict) else True
            extra.append(AddedToken(name, special=special, normalized=False))
    if extra:
        hf.add_tokens(extra)
    roles = {}
    for role, key in (("eos", "eos_token"), ("bos", "bos_token"), ("mask", "mask_token")):
        name = _token_name(cfg.get(key))
        if name and hf.token_to_id(name) is not None:
            roles[role] = name
    exported = cfg.get(ROLES_KEY)  # written by remask export (llada.write_tokenizer_files): every role, exactly
    if isinstance(exported, dict):
        roles.update({r: n for r, n in exported.items() if r in DEFAULT_SPECIALS and isinstance(n, str) and n})
    tok = HFTokenizer(hf, special_tokens=roles, chat_template=_hf_chat_template(cfg.get("chat_template")))
    tok.vocab_size = max(tok.vocab_size, _model_vocab(directory / MODEL_CONFIG_FILE))
    if tok.chat_template is not None and _header_always_written(tok):
        tok.chat_template = LLADA_TEMPLATE
    return tok


def _model_vocab(config_file: Path) -> int:
    """The embedding rows a Hugging Face model config beside the tokenizer declares (0 when none):
    LLaDA-8B's 126,464 rows exceed the ids its tokenizer defines (up to 126,348), and a model, its
    tokenizer and the checkpoints built from them must agree on the count."""
    if not config_file.is_file():
        return 0
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return 0
    if not isinstance(meta, dict) or "model_type" not in meta:
        return 0
    sizes = [meta.get(k) for k in ("vocab_size", "embedding_size")]
    return max([v for v in sizes if isinstance(v, int) and not isinstance(v, bool)], default=0)


def _header_always_written(tok: HFTokenizer) -> bool:
    """Whether ``tok``'s template writes the assistant header unasked and otherwise renders exactly
    as LLADA_TEMPLATE (LLaDA-8B-Instruct's published one does); see LLADA_TEMPLATE."""
    from remask.data.template import render

    try:
        for probe in _PROBES:
            asked = render(probe, tok, add_generation_prompt=True)
            if render(probe, tok) != asked or render(probe, tok, add_generation_prompt=True,
                                                     template=LLADA_TEMPLATE) != asked:
                return False
    except RemaskError:  # a template that fails on a plain conversation is left for its user to meet
        return False
    return True


# ----------------------------------------------------------------------------- training

def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> HFTokenizer:
    """Train a byte-level BPE; the specials come first (ids 0..5) so their ids never depend on data.

    Byte-level pre-tokenisation plus a full 256-symbol initial alphabet means every UTF-8 string
    encodes without unknown tokens and decodes back exactly.
    """
    from tokenizers import Tokenizer as _HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    specials = list(DEFAULT_SPECIALS.values())
    if vocab_size < 256 + len(specials):
        raise RemaskError(f"BPE vocab_size={vocab_size} is too small; it needs at least {256 + len(specials)} "
                          f"(256 byte symbols + {len(specials)} special tokens)")
    tok = _HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tok)
