"""Which device a command runs on, and at which precision its forward passes run.

Training and inference share these: every command picks CUDA when it is there and the CPU
otherwise (``auto``), unless told; an impossible request is a one-line error that names the
flag the user typed (``flag``), never a CUDA traceback.
"""

from __future__ import annotations

import contextlib

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


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for forward passes, or None for plain float32. auto: bf16 on CUDA only
    (CPU bf16 matmuls are slower than float32)."""
    if dtype not in DTYPES:
        raise RemaskError(f"dtype {dtype!r} must be one of: {', '.join(DTYPES)}")
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` at ``autocast_dtype(dtype, device)``, or a no-op for float32."""
    amp = autocast_dtype(dtype, device)
    return contextlib.nullcontext() if amp is None else torch.autocast(device_type=device.type, dtype=amp)
