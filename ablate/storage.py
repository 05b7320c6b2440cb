"""The results layout on disk, and writes that never leave a half-written cell looking finished.

results/<matrix name>/cells/<cell id>/  cell.json train_log.jsonl eval_log.jsonl pairs.parquet adapter/
                                        error.txt (failed only)  DONE (written last)
results/<matrix name>/plan.json cells.parquet pairs.parquet report.md *.png
A cell is built in a temporary sibling directory and renamed into place with DONE already inside,
so a directory named after a cell id either is complete or says why it failed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

DONE = "DONE"


def cells_root(results: Path) -> Path:
    return Path(results) / "cells"


def cell_dir(results: Path, cell_id: str) -> Path:
    return cells_root(results) / cell_id


def cell_status(results: Path, cell_id: str) -> str:
    d = cell_dir(results, cell_id)
    if (d / DONE).is_file():
        return "done"
    if (d / "error.txt").is_file():
        return "failed"
    return "pending"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def new_cell_staging(results: Path, cell_id: str) -> Path:
    d = cells_root(results) / f".tmp-{cell_id}-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    return d


def publish_cell(results: Path, cell_id: str, staging: Path) -> Path:
    """Write DONE into the staging dir, then move it to the cell's final name."""
    (staging / DONE).write_text("")
    final = cell_dir(results, cell_id)
    if final.exists():
        if (final / DONE).exists():  # someone else finished it first; theirs stands
            shutil.rmtree(staging, ignore_errors=True)
            return final
        shutil.rmtree(final)  # an earlier failed attempt
    os.replace(staging, final)
    return final


def publish_failure(results: Path, cell_id: str, cell_json: dict, error_text: str) -> None:
    staging = new_cell_staging(results, cell_id)
    (staging / "cell.json").write_text(dump_json(cell_json))
    (staging / "error.txt").write_text(error_text)
    final = cell_dir(results, cell_id)
    if final.exists():
        if (final / DONE).exists():
            shutil.rmtree(staging, ignore_errors=True)
            return
        shutil.rmtree(final)
    os.replace(staging, final)


def read_cell_json(results: Path, cell_id: str) -> dict | None:
    p = cell_dir(results, cell_id) / "cell.json"
    return json.loads(p.read_text()) if p.is_file() else None


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_results_dir(results: Path) -> list[str]:
    """Problems that would stop us writing results, found before any training."""
    results = Path(results)
    for p in [results, *results.parents]:
        if p.exists():
            if not p.is_dir():
                return [f"storage: {p} is a file, not a directory; choose another results path"]
            if not os.access(p, os.W_OK):
                return [f"storage: {p} is not writable"]
            break
    return []
