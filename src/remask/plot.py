"""Training curves of one or more runs, side by side: ``remask plot RUN [RUN ...] --out curves.png``.

Reads each run's ``metrics.jsonl`` (written by the training loop: training records with step,
loss, tokens and elapsed seconds; validation records with step, val_loss and val_bpb) and draws a
3 x 3 grid: training loss, validation ELBO in nats/token and in bits/byte (rows) against optimizer
steps, training tokens and wall-clock (columns), one colour per run. Needs matplotlib (the
``plot`` extra); the figure is written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from remask.errors import RemaskError
from remask.fileio import atomic_path

ROWS = (("loss", "training loss (nats/token)"), ("val_loss", "validation (nats/token; MDM: ELBO)"),
        ("val_bpb", "validation (bits/byte)"))
COLUMNS = (("step", "optimizer steps"), ("tokens", "training tokens"), ("elapsed", "wall-clock (s)"))


@dataclass
class Curves:
    """One run's metrics as columns: ``train`` and ``val`` map a key to its values in step order."""

    name: str
    train: dict[str, np.ndarray] = field(default_factory=dict)
    val: dict[str, np.ndarray] = field(default_factory=dict)


STYLES = ("-", "--", ":")


def read_curves(run: str | Path, name: str | None = None) -> Curves:
    """A run directory's ``metrics.jsonl`` -> its curves. Validation points get the tokens and
    elapsed seconds of the training record at their step (interpolated between logged steps)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise RemaskError(f"'{run}' has no metrics.jsonl; pass a run directory written by `remask train` or `remask sft`")
    train, val = [], []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line a crash cut short
        (val if "val_loss" in rec else train if "loss" in rec else []).append(rec)
    if not train and not val:
        raise RemaskError(f"'{path}' holds no training or validation records yet")
    cols = lambda recs, keys: {k: np.array([r.get(k, np.nan) for r in recs], dtype=float)  # noqa: E731
                               for k in keys}
    curves = Curves(name or Path(run).resolve().name, cols(train, ("step", "loss", "tokens", "elapsed")),
                    cols(val, ("step", "val_loss", "val_bpb")))
    if train and val:  # where each validation happened, in tokens and seconds
        for key in ("tokens", "elapsed"):
            curves.val[key] = np.interp(curves.val["step"], curves.train["step"], curves.train[key])
    return curves


def plot_runs(runs: Sequence[str | Path], out: str | Path, *, labels: Sequence[str] | None = None) -> Path:
    """Draw the curves of ``runs`` into one figure at ``out`` (PNG, PDF or SVG by its suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise RemaskError("remask plot needs matplotlib: pip install 'remask[plot]'") from None
    if labels is not None and len(labels) != len(runs):
        raise RemaskError(f"--labels gives {len(labels)} names for {len(runs)} runs; give one per run")
    curves = [read_curves(r, labels[i] if labels else None) for i, r in enumerate(runs)]
    fig, axes = plt.subplots(len(ROWS), len(COLUMNS), figsize=(13, 10), squeeze=False)
    handles: dict[str, object] = {}  # one legend entry per run, from whichever panel drew it first
    for row, (key, ylabel) in enumerate(ROWS):
        for col, (xkey, xlabel) in enumerate(COLUMNS):
            ax = axes[row][col]
            for i, c in enumerate(curves):
                data = c.train if key == "loss" else c.val
                if key in data and xkey in data and len(data[key]):
                    # ten colours, then the same ten dashed, then dotted: every run stays distinguishable
                    (line,) = ax.plot(data[xkey], data[key], color=f"C{i % 10}", linestyle=STYLES[i // 10 % 3],
                                      marker="" if key == "loss" else "o", markersize=3, linewidth=1.2)
                    handles.setdefault(c.name, line)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    ncol = min(len(handles), 4) or 1
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=ncol)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.025 * -(-len(handles) // ncol) - 0.01))  # room for the legend's rows
    return _save(fig, Path(out))


def _save(fig: object, out: Path) -> Path:
    """Write the figure under a temporary name beside ``out``, then rename it into place."""
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=110, format=out.suffix.lstrip(".") or "png")  # type: ignore[attr-defined]
    finally:
        plt.close(fig)  # type: ignore[arg-type]
    return out
