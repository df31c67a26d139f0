"""`remask plot`: curves read from metrics.jsonl, one figure for several runs, written atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest

from remask.errors import RemaskError
from remask.plot import plot_runs, read_curves


def write_run(path, steps: int, *, crash: bool = False) -> None:
    path.mkdir(parents=True)
    lines = []
    for s in range(1, steps + 1):
        lines.append(json.dumps({"step": s, "loss": 5.0 / s, "lr": 1e-3, "tokens_per_s": 100.0,
                                 "elapsed": 0.5 * s, "tokens": 128 * s}))
        if s % 4 == 0:
            lines.append(json.dumps({"step": s, "val_loss": 4.0 / s, "val_bpb": 6.0 / s}))
    text = "\n".join(lines) + "\n" + ('{"step": 99, "lo' if crash else "")
    (path / "metrics.jsonl").write_text(text)


def test_curves_are_read_and_validation_points_placed_in_tokens_and_time(tmp_path):
    write_run(tmp_path / "a", 8, crash=True)  # a line cut short by a crash is skipped
    c = read_curves(tmp_path / "a")
    assert c.name == "a" and c.train["step"].tolist() == list(range(1, 9))
    assert c.val["step"].tolist() == [4, 8] and c.val["val_bpb"].tolist() == [1.5, 0.75]
    assert c.val["tokens"].tolist() == [512, 1024] and np.allclose(c.val["elapsed"], [2.0, 4.0])


def test_plot_writes_one_figure_for_several_runs(tmp_path):
    pytest.importorskip("matplotlib")
    from remask.commands import main

    write_run(tmp_path / "mdm", 8)
    write_run(tmp_path / "ar", 12)
    out = tmp_path / "fig" / "curves.png"
    assert main(["plot", str(tmp_path / "mdm"), str(tmp_path / "ar"), "--out", str(out),
                 "--labels", "MDM", "AR"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    with pytest.raises(RemaskError, match="--labels gives 1 names for 2 runs"):
        plot_runs([tmp_path / "mdm", tmp_path / "ar"], out, labels=["x"])


def test_a_directory_without_metrics_is_a_one_line_error(tmp_path):
    with pytest.raises(RemaskError, match=r"has no metrics\.jsonl"):
        read_curves(tmp_path)
