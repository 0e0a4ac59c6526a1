"""Resumable benchmark rows: one JSON object per line in ``rows.jsonl``, so a benchmark that is
stopped loses nothing and a re-run skips the rows already written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Set, Tuple


def rows_path_and_done(out, keys: Sequence[str]) -> Tuple[Path, Set[tuple]]:
    """``(out/rows.jsonl, {tuple(row[k] for k in keys) of the rows already there})``;
    creates ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rows.jsonl"
    done = set()
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done.add(tuple(r[k] for k in keys))
    return path, done


def append_row(path: Path, row: dict) -> None:
    """Append one row (flushed at once)."""
    with Path(path).open("a") as fh:
        fh.write(json.dumps(row, default=float) + "\n")
