"""Small helpers shared by the benchmark scripts: machine description, tables, result files, where
the datasets are, and running the MDM and AR workers of a comparison at the same time.

Benchmarks are run as scripts (``python benchmarks/NAME.py``), so this module is imported as
``common`` from the script's own directory.

Datasets: every script that reads one takes the dataset ROOT, the folder holding
``tinyshakespeare/``, ``sudoku_countdown/`` and so on (see ``add_data_arg`` and ``dataset``): ``--data DIR``,
else the environment variable ``REMASK_DATA``, else ``../shared/data`` beside the repository (a convenience
on the project's own machines; a user's machine has no such folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from remask.fileio import write_text_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "REMASK_DATA"  # the dataset root, when --data is not given
DEFAULT_DATA = "../shared/data"  # the fallback, relative to the repository root (not to the working directory)
SHAKESPEARE = "tinyshakespeare/input.txt"  # datasets, relative to the root
SUDOKU_COUNTDOWN = "sudoku_countdown"
KINDS = ("mdm", "ar")  # the two workers of an MDM-vs-AR comparison
BARRIERS = ".barriers"  # under the work dir: one file per worker that reached a named point


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
        return time.strftime("%a %b %d %H:%M:%S %Z %Y")


def command_line() -> str:
    """The command that started this script, as a user would retype it from the repo root."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):  # outside the current directory: keep the path as given
        script = script.resolve().relative_to(Path.cwd())
    return shlex.join(["python", str(script), *sys.argv[1:]])


def provenance(total_s: float) -> str:
    """The closing lines of a report: command, date, machine and wall time."""
    return (f"Command: `{command_line()}`\n"
            f"Date: {date()}\n"
            f"Machine: {machine()} (shared with other jobs; wall times vary, step counts do not)\n"
            f"Total wall time: {total_s:.0f} s\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable as plain text on a terminal)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, cells[1:])])


def write_atomic(path: str | Path, text: str) -> Path:
    """``remask.fileio.write_text_atomic``, creating the parent directory first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return path


def publish(text: str, results: Path) -> None:
    """Print the report and write it to ``results`` ('-': print only)."""
    print(text)
    if str(results) != "-":
        write_atomic(results, text)
        print(f"wrote {results}")


# ----------------------------------------------------------------------------- flags

def add_model_args(ap: argparse.ArgumentParser, *, d_model: int = 128, n_layer: int = 4, n_head: int = 4) -> None:
    """--d-model, --n-layer, --n-head: the backbone both objectives share."""
    ap.add_argument("--d-model", type=int, default=d_model)
    ap.add_argument("--n-layer", type=int, default=n_layer)
    ap.add_argument("--n-head", type=int, default=n_head)


def add_set_arg(ap: argparse.ArgumentParser) -> None:
    """--set SECTION.FIELD=VALUE (repeatable): a RunConfig override applied to every model the script
    trains, e.g. ``--set train.dtype=bfloat16 --set train.t_sampling=stratified``."""
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override a config field of every model (repeatable), as `remask train --SECTION.FIELD`")


def set_pairs(overrides: Sequence[str]) -> dict[str, str]:
    """--set SECTION.FIELD=VALUE flags -> {field: value} (a later --set of the same field wins)."""
    bad = next((o for o in overrides if "=" not in o), None)
    if bad is not None:
        raise SystemExit(f"error: --set expects SECTION.FIELD=VALUE, got {bad!r}")
    return dict(o.split("=", 1) for o in overrides)


def with_overrides(cfg: Any, overrides: Sequence[str]) -> Any:
    """``cfg`` with the --set overrides applied (one-line error for a malformed or unknown one)."""
    from remask.config import apply_overrides

    pairs = set_pairs(overrides)
    return apply_overrides(cfg, pairs) if pairs else cfg


def optimizer_label(overrides: Sequence[str]) -> str:
    """How a report names the optimizer the --set overrides chose (TrainConfig's default otherwise)."""
    from remask.config import TrainConfig

    chosen = set_pairs(overrides).get("train.optimizer", TrainConfig().optimizer)
    return "Muon (AdamW for embeddings, head, norms)" if chosen == "muon" else "AdamW"


def add_worker_args(ap: argparse.ArgumentParser, name: str, kinds: Sequence[str] | None = KINDS) -> None:
    """--work-dir, --results (default results/NAME.md) and the hidden --worker of ``run_workers``
    (one of ``kinds``; None: any name)."""
    ap.add_argument("--work-dir", type=Path, default=None, help="keep runs here (default: a temp dir, removed)")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR / f"{name}.md",
                    help="Markdown results file to write ('-': do not write)")
    ap.add_argument("--worker", choices=kinds, help=argparse.SUPPRESS)


# ----------------------------------------------------------------------------- datasets

def add_data_arg(ap: argparse.ArgumentParser, holds: str, fallback: str | None = None) -> None:
    """--data DIR: the dataset root (the folder holding ``holds``, e.g. "tinyshakespeare/"); ``fallback``
    names what the script uses when neither is given and ../shared/data is absent."""
    last = f", else {fallback}" if fallback else ""
    ap.add_argument("--data", type=Path, default=None, metavar="DIR",
                    help=f"dataset root, the folder holding {holds} (default: ${DATA_ENV}, else "
                         f"{DEFAULT_DATA} relative to the repository root{last})")


@dataclass(frozen=True)
class DataRoot:
    path: Path
    source: str  # "--data", "REMASK_DATA" or "default"
    label: str  # how a report names it: the --data value as given, "$REMASK_DATA" or "../shared/data"


def data_root(given: Path | None) -> DataRoot:
    """The dataset root: ``given`` (--data), else $REMASK_DATA, else ../shared/data beside the repository.
    A relative --data or REMASK_DATA is relative to the working directory."""
    if given is not None:
        return DataRoot(given.expanduser(), "--data", str(given))
    env = os.environ.get(DATA_ENV)
    if env:
        return DataRoot(Path(env).expanduser(), DATA_ENV, f"${DATA_ENV}")
    return DataRoot((REPO_ROOT / DEFAULT_DATA).resolve(), "default", DEFAULT_DATA)


def dataset(given: Path | None, name: str, *, optional: bool = False) -> Path | None:
    """The file or folder ``name`` (e.g. ``SHAKESPEARE``) under the dataset root of ``data_root(given)``.

    Missing, it ends the script with one line naming --data and REMASK_DATA, except that an
    ``optional`` dataset under the default root gives None (the script falls back to built-in data)."""
    root = data_root(given)
    path, top = root.path / name, name.split("/")[0]
    if path.exists():
        return path
    if optional and root.source == "default":
        return None
    if root.path.is_file():
        raise SystemExit(f"error: {root.path} (from {root.source}) is a file; --data DIR and {DATA_ENV}=DIR name the "
                         f"dataset root, the folder holding {top}/")
    raise SystemExit(f"error: {name} not found under {root.path} (from {root.source}); point --data DIR or "
                     f"{DATA_ENV}=DIR at the dataset root, the folder holding {top}/")


# ----------------------------------------------------------------------------- two workers at once

@contextlib.contextmanager
def work_dir(given: Path | None, prefix: str) -> Iterator[Path]:
    """``given`` (created if needed, kept), or a fresh temporary directory removed on exit."""
    work = given or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if given is None:
            shutil.rmtree(work, ignore_errors=True)


def barrier(work: Path, name: str, me: str, kinds: Sequence[str] = KINDS, timeout: float = 900.0) -> None:
    """Wait until every worker reaches ``name``, so their timed phases overlap and see the same load."""
    marks = work / BARRIERS
    marks.mkdir(parents=True, exist_ok=True)
    (marks / f"{name}.{me}").touch()
    deadline = time.monotonic() + timeout
    while not all((marks / f"{name}.{k}").exists() for k in kinds):
        if time.monotonic() > deadline:
            raise SystemExit(f"{me}: the other worker never reached '{name}'")
        time.sleep(0.05)


def run_workers(script: str | Path, work: Path, argv: Sequence[str], *, kinds: Sequence[str] = KINDS,
                threads: int = 1, logs: bool = True, result: str = "{kind}.json",
                progress: Callable[[str], str] | None = None, every: float = 30.0) -> dict[str, Any]:
    """Run ``python SCRIPT *argv --worker KIND`` for every kind AT THE SAME TIME, and read their results.

    Both processes share the machine, so whatever else runs on it slows both alike. ``threads``
    sets OMP/MKL threads of each; ``logs`` sends each worker's output to ``work/KIND.log`` (else
    to this terminal); ``progress(kind)``, when given, is printed for every worker each ``every``
    seconds. Returns ``{kind: parsed JSON of work/result}`` (``result`` is formatted with the kind).
    A failed worker stops the others and ends the benchmark with its exit code and the end of its log.
    ``argv`` may repeat this script's own flags (``sys.argv[1:]``): argparse keeps the last value given.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    shutil.rmtree(work / BARRIERS, ignore_errors=True)  # marks left by an earlier run in a kept --work-dir
    with contextlib.ExitStack() as stack:
        procs = {}
        for kind in kinds:
            out = stack.enter_context((work / f"{kind}.log").open("w")) if logs else None
            cmd = [sys.executable, str(Path(script).resolve()), *argv, "--worker", kind]
            procs[kind] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if logs else None, env=env)
        t0 = next_print = time.monotonic()
        failed: list[str] = []
        while not failed and any(p.poll() is None for p in procs.values()):
            time.sleep(1.0 if progress is not None else 0.2)
            failed = [k for k, p in procs.items() if p.poll() not in (None, 0)]
            if progress is not None and time.monotonic() >= next_print:
                next_print += every
                print(f"[{time.monotonic() - t0:5.0f}s] " + "; ".join(f"{k}: {progress(k)}" for k in kinds),
                      flush=True)
        for p in procs.values():  # one failed: the other would wait for it at a barrier
            if p.poll() is None:
                p.terminate()
                p.wait()
        if not failed:  # all ended; the last may have failed after the check in the loop
            failed = [k for k, p in procs.items() if p.returncode != 0]
    if failed:
        raise SystemExit("\n".join(
            f"--- the {k} worker failed (exit {procs[k].returncode})"
            + (":\n" + (work / f"{k}.log").read_text()[-4000:] if logs else "") for k in failed))
    return {k: json.loads((work / result.format(kind=k)).read_text()) for k in kinds}


def progress_line(metrics: Path, key: str = "loss") -> str:
    """The newest record of a run's ``metrics.jsonl`` that holds ``key`` ("loss" or "val_loss"), for
    ``run_workers``' progress lines; "starting" before there is one."""
    try:
        recs = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    except (OSError, json.JSONDecodeError):  # not written yet, or a line being written
        return "starting"
    rec = next((r for r in reversed(recs) if key in r), None)
    if rec is None:
        return "starting"
    if key == "val_loss":
        return f"step {rec['step']} val {rec['val_loss']:.3f}"
    return f"step {rec['step']} {key} {rec[key]:.3f} ({rec.get('elapsed', 0):.0f}s)"


def steady_rate(metrics: Path, steps: int, elapsed: float) -> float:
    """Optimizer steps per second from a run's ``metrics.jsonl``, after the first logging window's one-off
    costs (compilation, allocation); ``steps / elapsed`` when it holds fewer than two training records."""
    recs = [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
    if len(recs) < 2:
        return steps / max(elapsed, 1e-3)
    return (recs[-1]["step"] - recs[0]["step"]) / max(recs[-1]["elapsed"] - recs[0]["elapsed"], 1e-3)


# ----------------------------------------------------------------------------- validation with its error

@torch.no_grad()  # without it every window's graph stayed alive: 14 GB for 512 windows of a 1.9M model
def val_standard_error(model: torch.nn.Module, data_dir: Path, cfg: Any) -> tuple[float, float]:
    """The training loop's validation loss recomputed per window (same windows, same fixed noise as
    ``remask.train.loop``) -> (mean, standard error over windows)."""
    from remask.objectives import OBJECTIVES
    from remask.rng import keyed_uniform
    from remask.train.batches import TokenWindows
    from remask.train.loop import EVAL_SEED, VAL_EPS

    t = cfg.train
    model.eval()
    draws = 1 if t.objective == "ar" else t.eval_mc
    per_window = []
    for batch, idx in TokenWindows(data_dir, t.seq_len, t.seed).val_batches(t.micro_batch_size, t.eval_batches):
        contrib = torch.stack([
            OBJECTIVES[t.objective](model, batch, keyed_uniform(EVAL_SEED, d, idx, 1 + batch.tokens.shape[1]),
                                    mask_id=cfg.model.mask_token_id, eps=VAL_EPS).double()
            for d in range(draws)])  # (draws, b)
        per_window.append(contrib.mean(0))
    x = torch.cat(per_window)  # (windows,)
    return x.mean().item(), (x.std() / math.sqrt(len(x))).item()
