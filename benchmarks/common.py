"""Small helpers shared by the benchmark scripts: machine description, tables, atomic writes.

Benchmarks are run as scripts (``python benchmarks/NAME.py``), so this module is imported as
``common`` from the script's own directory.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line naming the CPU count, architecture and torch build, e.g. "2-core x86_64 CPU, torch 2.13 CPU"."""
    build = "CUDA" if torch.cuda.is_available() else "CPU"
    version = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    return f"{os.cpu_count()}-core {platform.machine()} CPU, torch {version} {build}"


def date() -> str:
    """The output of `date` (falls back to Python's clock where `date` is missing)."""
    try:
        return subprocess.run(["date"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        import time

        return time.strftime("%a %b %d %H:%M:%S %Z %Y")


def command_line() -> str:
    """The command that started this script, as a user would retype it from the repo root."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):  # outside the current directory: keep the path as given
        script = script.resolve().relative_to(Path.cwd())
    return shlex.join(["python", str(script), *sys.argv[1:]])


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable as plain text on a terminal)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, cells[1:])])


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same directory and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
