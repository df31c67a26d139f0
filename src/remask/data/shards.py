"""Pre-tokenised corpora as flat binary shards, memory-mapped for reading.

A shard is a 32-byte little-endian header followed by the tokens::

    magic   8 bytes  b"RMSKTOK\\x00"
    version uint32   1
    dtype   uint32   2 (uint16) or 4 (uint32): bytes per token
    count   uint64   number of tokens
    pad     8 bytes  zero

The header makes a shard self-describing (no guessing the dtype from a sidecar file) and lets a
reader reject a truncated or foreign file instead of training on garbage. uint16 halves disk
and page-cache use whenever the vocabulary fits; LLaDA-8B's 126,464 tokens need uint32.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from remask.errors import RemaskError

MAGIC = b"RMSKTOK\x00"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")  # 32 bytes
assert HEADER.size == 32
_CODES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_FLUSH_TOKENS = 1 << 20  # buffered tokens before a write to disk


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest supported unsigned dtype that holds ids 0..vocab_size-1."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 2**16:
        return _CODES[2]
    if vocab_size <= 2**32:
        return _CODES[4]
    raise ValueError(f"vocab_size={vocab_size} does not fit uint32 token shards")


def pack_header(dtype: np.dtype, count: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, np.dtype(dtype).itemsize, count)


def shard_paths(directory: str | Path, split: str) -> list[Path]:
    """The shards of one split, in order (the zero-padded index makes name order the write order)."""
    return sorted(Path(directory).glob(f"{split}-[0-9][0-9][0-9][0-9][0-9].bin"))


class ShardWriter:
    """Append tokens to ``{split}-00000.bin``, ``{split}-00001.bin``, ... in ``directory``.

    Tokens are buffered and written in chunks, so memory stays bounded however long the corpus
    is. Each shard is written under a temporary name and renamed into place once its header
    holds the final count: a shard with a final name is always complete. Existing shards of the
    same split are deleted first so a shorter re-run leaves no stale tail behind.
    """

    def __init__(self, directory: str | Path, split: str, dtype: Any, max_tokens_per_shard: int = 2**27) -> None:
        self.directory = Path(directory)
        self.split = split
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if self.dtype.itemsize not in _CODES or self.dtype.kind != "u":
            raise ValueError(f"shard dtype must be uint16 or uint32, got {self.dtype}")
        if max_tokens_per_shard <= 0:
            raise ValueError("max_tokens_per_shard must be positive")
        self.max_tokens = max_tokens_per_shard
        self.n_tokens = 0
        self.paths: list[Path] = []
        self._max_id = np.iinfo(self.dtype).max
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self._file: Any = None  # open temp file of the current shard
        self._in_shard = 0  # tokens written to the current shard (flushed or not)
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in shard_paths(self.directory, split):
            old.unlink()

    def _final_path(self, index: int) -> Path:
        return self.directory / f"{self.split}-{index:05d}.bin"

    def write(self, tokens: np.ndarray) -> None:
        """Append a 1-D array of token ids (any integer dtype; values must fit the shard dtype)."""
        if self._closed:
            raise ValueError("write() on a closed ShardWriter")
        tokens = np.asarray(tokens).reshape(-1)
        if tokens.size == 0:
            return
        if tokens.min() < 0 or tokens.max() > self._max_id:
            raise ValueError(f"token ids must be in [0, {self._max_id}] for {self.dtype} shards")
        tokens = tokens.astype(self.dtype, copy=False)
        while tokens.size:
            room = self.max_tokens - self._in_shard
            part, tokens = tokens[:room], tokens[room:]
            self._buf.append(part)
            self._buffered += part.size
            self._in_shard += part.size
            self.n_tokens += part.size
            if self._in_shard == self.max_tokens:
                self._finish_shard()
            elif self._buffered >= _FLUSH_TOKENS:
                self._flush()

    def _flush(self) -> None:
        if self._file is None:
            tmp = self._final_path(len(self.paths)).with_suffix(".bin.tmp")
            self._file = open(tmp, "wb")  # noqa: SIM115 (lives across write() calls; closed in _finish_shard)
            self._file.write(pack_header(self.dtype, 0))  # placeholder; the count is patched at the end
        for part in self._buf:
            self._file.write(part.tobytes())
        self._buf.clear()
        self._buffered = 0

    def _finish_shard(self) -> None:
        self._flush()
        f = self._file
        f.seek(0)
        f.write(pack_header(self.dtype, self._in_shard))
        f.close()
        final = self._final_path(len(self.paths))
        Path(f.name).replace(final)
        self.paths.append(final)
        self._file = None
        self._in_shard = 0

    def close(self) -> list[Path]:
        """Finish the last shard and return every shard path. A split with no tokens still gets
        one empty shard, so readers can tell "empty" from "never prepared"."""
        if not self._closed:
            if self._in_shard or not self.paths:
                self._finish_shard()
            self._closed = True
        return list(self.paths)

    def abort(self) -> None:
        """Drop the shard in progress (used when an exception interrupts writing)."""
        if self._file is not None:
            self._file.close()
            Path(self._file.name).unlink(missing_ok=True)
            self._file = None
        self._buf.clear()
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _open_shard(path: Path) -> np.ndarray:
    fix = "re-run `remask prepare` to rebuild the dataset"
    size = path.stat().st_size
    if size < HEADER.size:
        raise RemaskError(f"token shard '{path}' is truncated ({size} bytes, shorter than its header); {fix}")
    with open(path, "rb") as f:
        magic, version, code, count = HEADER.unpack(f.read(HEADER.size))
    if magic != MAGIC:
        raise RemaskError(f"'{path}' is not a remask token shard (bad magic {magic!r}); {fix}")
    if version != VERSION:
        raise RemaskError(f"token shard '{path}' has format version {version}, this remask reads {VERSION}; {fix}")
    if code not in _CODES:
        raise RemaskError(f"token shard '{path}' has an unknown dtype code {code}; {fix}")
    dtype = _CODES[code]
    expected = HEADER.size + count * dtype.itemsize
    if size != expected:
        raise RemaskError(f"token shard '{path}' is {size} bytes but its header promises {expected}; {fix}")
    if count == 0:
        return np.empty(0, dtype=dtype)  # np.memmap refuses zero-length maps
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(count,))


class TokenData:
    """All shards of one split as one read-only token sequence, without loading it into memory."""

    def __init__(self, directory: str | Path, split: str) -> None:
        self.directory = Path(directory)
        self.split = split
        paths = shard_paths(self.directory, split)
        if not paths:
            raise RemaskError(f"no '{split}' token shards in '{self.directory}'; "
                              "run `remask prepare` on your data first (or pass raw text files)")
        self.paths = paths
        self.shards = [_open_shard(p) for p in paths]
        dtypes = {s.dtype for s in self.shards}
        if len(dtypes) > 1:
            raise RemaskError(f"'{split}' shards in '{self.directory}' mix dtypes {sorted(map(str, dtypes))}; "
                              "re-run `remask prepare`")
        self.dtype = self.shards[0].dtype
        # starts[i] = global index of shard i's first token; starts[-1] = total
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.n_tokens = int(self.starts[-1])

    def __len__(self) -> int:
        return self.n_tokens

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, stitched across shard boundaries if needed."""
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise IndexError(f"window [{start}, {start + length}) is outside {self.split} data of {self.n_tokens} tokens")
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            lo = start + filled - int(self.starts[i])
            take = min(length - filled, len(self.shards[i]) - lo)
            out[filled:filled + take] = self.shards[i][lo:lo + take]
            filled += take
            i += 1
        return out

    # DataLoader workers pickle the dataset: ship the location and re-map, never the mapped bytes.
    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "split": self.split}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], state["split"])  # type: ignore[misc]
