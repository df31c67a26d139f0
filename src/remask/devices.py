"""Which device a command runs on, and at which precision its forward passes run.

Training and inference share these: every command picks CUDA when it is there and the CPU
otherwise (``auto``), unless told; an impossible request is a one-line error that names the
flag the user typed (``flag``), never a CUDA traceback.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from remask.errors import RemaskError

DTYPES = ("auto", "float32", "bfloat16")


def pick_device(name: str | None = "auto", local_rank: int = 0, *, flag: str = "--device") -> torch.device:
    """``auto`` (or None) -> ``cuda:{local_rank}`` when CUDA is visible, else the CPU; otherwise the
    named device, checked. ``flag`` names the setting in errors (``--device``, ``--train.device``)."""
    name = name or "auto"
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RemaskError(f"{flag} {name} was asked for but no CUDA device is visible; use {flag} cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RemaskError(f"{flag} {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


@functools.cache  # asked at every training forward; the CPU does not change
def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, hence the getattr
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(dtype: str, device: torch.device, *, cpu_bf16: bool = False) -> torch.dtype | None:
    """The autocast dtype for forward passes, or None for plain float32. auto: bf16 on CUDA; on the
    CPU only with ``cpu_bf16`` (training) and a CPU with native bf16 matmuls (elsewhere they are
    slower than float32, and inference keeps float32 so its tokens do not depend on the CPU)."""
    if dtype not in DTYPES:
        raise RemaskError(f"dtype {dtype!r} must be one of: {', '.join(DTYPES)}")
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if dtype == "auto" and device.type == "cpu" and cpu_bf16 and native_bf16_cpu():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: str, *, cpu_bf16: bool = False) -> contextlib.AbstractContextManager:
    """``torch.autocast`` at ``autocast_dtype(dtype, device, cpu_bf16=)``, or a no-op for float32."""
    return autocast_to(device, autocast_dtype(dtype, device, cpu_bf16=cpu_bf16))


def autocast_to(device: torch.device, amp: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` at an already resolved dtype ``amp``, or a no-op for None (float32)."""
    return contextlib.nullcontext() if amp is None else torch.autocast(device_type=device.type, dtype=amp)


@contextlib.contextmanager
def flush_denormals(device: torch.device) -> Iterator[None]:
    """Treat subnormal floats as zero on the CPU inside the block (training), then restore the default.

    AdamW's second moments of rarely updated rows (unseen byte values, say) decay geometrically into
    the subnormal range, where x86 arithmetic is far slower: a 2-thread MDM run fell from 22k to
    12-13k tokens/s over its first 1000 steps, and held 22-23k with subnormals flushed. Values below
    1e-38 round to zero instead, which changes nothing measurable.
    """
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
