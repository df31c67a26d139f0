"""What a run directory holds besides its checkpoint: where its data lies, and its metrics log.

    RUN/checkpoint/    the latest checkpoint (``remask.checkpoint``), or with ``--train.keep K``:
    RUN/checkpoints/   the newest K, step-000500/ ... (``remask.train.keep``)
    RUN/latest         the name of the newest complete one among them
    RUN/data/          the prepared corpus when raw text was given (recorded relative to RUN)
    RUN/metrics.jsonl  one JSON record per logged step, validation, skipped step or reload
"""

from __future__ import annotations

import json
from pathlib import Path

from remask.fileio import write_text_atomic


def record_data_dir(data_dir: str | None, out_dir: Path) -> str | None:
    """``data_dir`` as train_state.json records it: relative to the run directory when it lies
    inside (the default ``RUN/data``), so the run can be moved and resumed from anywhere; else absolute."""
    if data_dir is None:
        return None
    path, run = Path(data_dir).resolve(), out_dir.resolve()
    return path.relative_to(run).as_posix() if path.is_relative_to(run) else str(path)


def find_data_dir(recorded: str | None, out_dir: Path) -> str | None:
    """The prepared data a resumed run recorded. A relative path is relative to the run directory;
    runs saved before that rule recorded it relative to their working directory, so that is the fallback."""
    if recorded is None or Path(recorded).is_absolute():
        return recorded
    in_run = out_dir / recorded
    return recorded if not in_run.exists() and Path(recorded).exists() else str(in_run)


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records a crashed run wrote after its last checkpoint, and a line a crash cut
    short (appends are not atomic), with one atomic rewrite."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    write_text_atomic(path, "".join(k + "\n" for k in keep))
