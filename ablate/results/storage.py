"""The results layout on any filesystem pyarrow.fs understands, and writes that never leave a half-written
cell looking finished.

<results>/<matrix name>/ plan.json cells.parquet pairs.parquet report.md *.png LOCK
    cells/<cell id>/     cell.json train_log.jsonl eval_log.jsonl pairs.parquet adapter/
                         error.txt (failed only)   DONE (written last)
    running/<cell id>.json   a heartbeat while a worker trains the cell
    checkpoints/<cell id>.pt mid-cell checkpoint, removed once the cell is published
    refcache/<key>.pt        DPO reference log-probs shared by every cell with the same model and data
    STOP                     written by a driver that is stopping its run: cells end early, unpublished

<results> is a local path or a URI (s3://…, gs://…, file://…); credentials come from the environment.
Locally a cell is built in a temporary sibling directory and renamed into place with DONE inside; on
an object store its files are uploaded first and DONE last. Either way a cell counts as done only
when DONE exists, and DONE is never written before everything else.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ..errors import UserError

DONE = "DONE"
UNTRAINED = "untrained.parquet"  # the base model's per-pair held-out log-probs (written with the reference pass)
HEARTBEAT_S = 10.0  # how often a training worker refreshes its running/ marker
STALE_AFTER_S = 60.0  # a marker older than this belongs to a worker that is gone


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(location: str | Path, rel: str) -> str:
    """location/rel for a path or a URI, keeping a URI's query (?endpoint_override=…) at the end."""
    base, q, query = str(location).partition("?")
    return f"{base.rstrip('/')}/{rel}{q}{query}"


class Store:
    """One directory (a results root or one matrix's results) on a pyarrow filesystem."""

    def __init__(self, location: str | Path):
        location = str(location)
        if is_uri(location):
            self.fs, self.root = pafs.FileSystem.from_uri(location)
        else:
            # abspath, not resolve(): a symlink on the driver host may not exist on the workers
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(location)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.uri = self.root if self.local else location  # a URI keeps its query for the workers
        self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def local_path(self, rel: str = "") -> Path:
        assert self.local, "only a local store has local paths"
        return Path(self.path(rel))

    # -- reads ---------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_json(self, rel: str) -> Any | None:
        try:
            return json.loads(self.read_bytes(rel))
        except (FileNotFoundError, json.JSONDecodeError):  # absent, or a torn marker from a killed writer
            return None

    def listdir(self, rel: str = "", recursive: bool = False) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=recursive)
        return self.fs.get_file_info(sel)

    # -- writes --------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Readers see the old content or the new one, never a torn file: a local write goes to a temporary
        name and is renamed; an object-store PUT is atomic by itself."""
        if self.local:
            path = self.local_path(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            with self.fs.open_output_stream(self.path(rel)) as f:
                f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def delete(self, rel: str) -> None:
        try:
            info = self.fs.get_file_info(self.path(rel))
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(self.path(rel))
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass

    def upload_dir(self, local_dir: Path, rel: str, skip: frozenset[str] | set[str] = frozenset()) -> None:
        for f in sorted(Path(local_dir).rglob("*")):
            if f.is_file() and f.name not in skip:
                self.write_bytes(f"{rel}/{f.relative_to(local_dir).as_posix()}", f.read_bytes())


def as_store(results: str | Path | Store) -> Store:
    return results if isinstance(results, Store) else Store(results)


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


# -- cell states -------------------------------------------------------------------------------


def cell_states(results: str | Path | Store, ids: list[str] | None = None) -> dict[str, str]:
    """pending / running / done / failed for each cell, from one listing of cells/ and running/."""
    store = as_store(results)
    root = store.path("cells") + "/"
    files: dict[str, set[str]] = {}
    for info in store.listdir("cells", recursive=True):
        rel = info.path[len(root) :] if info.path.startswith(root) else info.path
        cid, _, name = rel.partition("/")
        if name in (DONE, "error.txt"):
            files.setdefault(cid, set()).add(name)
    running = {Path(i.path).stem for i in store.listdir("running") if i.path.endswith(".json")}
    now = time.time()
    out: dict[str, str] = {}
    for cid in ids if ids is not None else sorted(files.keys() | running):
        got = files.get(cid, set())
        if DONE in got:
            out[cid] = "done"
        elif cid in running and _alive(store.read_json(f"running/{cid}.json"), now):
            out[cid] = "running"
        elif "error.txt" in got:
            out[cid] = "failed"
        else:
            out[cid] = "pending"
    return out


def cell_status(results: str | Path | Store, cell_id: str) -> str:
    return cell_states(results, [cell_id])[cell_id]


def _alive(marker: dict | None, now: float) -> bool:
    return marker is not None and now - float(marker.get("heartbeat", 0)) < STALE_AFTER_S


def write_running(store: Store, cell_id: str, info: dict) -> None:
    store.write_text(f"running/{cell_id}.json", json.dumps({**info, "heartbeat": time.time()}))


def clear_running(store: Store, cell_id: str) -> None:
    store.delete(f"running/{cell_id}.json")


STOP = "STOP"


def request_stop(store: Store) -> None:
    """Ask this run's cells to end: a training cell stops after its current step (dropping its staging
    folder), a queued one returns as soon as it starts. The next run removes the marker under its lock."""
    store.write_text(STOP, "")


def clear_stop(store: Store) -> None:
    store.delete(STOP)


# -- publishing a cell -------------------------------------------------------------------------


def new_cell_staging(store: Store, cell_id: str) -> Path:
    """Where a worker writes a cell before publishing: beside the cell locally, so a rename publishes it."""
    if store.local:
        d = store.local_path("cells") / f"{STAGING_PREFIX}{cell_id}-{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True)
        return d
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"ablate-{cell_id}-"))


def _publish(store: Store, cell_id: str, staging: Path, done: bool) -> bool:
    """Move a staged cell into place; returns False if a finished copy already stands (theirs wins)."""
    rel = f"cells/{cell_id}"
    if store.is_file(f"{rel}/{DONE}"):
        shutil.rmtree(staging, ignore_errors=True)
        return False
    if done:
        (staging / DONE).write_text("")
    if store.local:
        final = store.local_path(rel)
        if final.exists():
            shutil.rmtree(final)  # an earlier failed attempt
        os.replace(staging, final)
    else:
        store.delete(rel)  # an earlier failed attempt: gone before the new files land
        store.upload_dir(staging, rel, skip={DONE})
        if done:
            store.write_bytes(f"{rel}/{DONE}", b"")
        shutil.rmtree(staging, ignore_errors=True)
    return True


STAGING_PREFIX = ".tmp-"


def clean_staging(store: Store) -> list[str]:
    """Remove the staging folders (cells/.tmp-*) an interrupted run left behind; return their names.
    Call only while holding the results lock with no cell running: a staging folder then belongs to a
    worker that is gone. A finished cell never has the prefix, so it is never touched."""
    if not store.local:
        return []  # on an object store a cell is staged in the worker's temporary directory, not here
    gone = []
    for d in store.local_path("cells").glob(f"{STAGING_PREFIX}*"):
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d.name)
    for f in store.local_path("checkpoints").glob(".*.tmp"):  # a checkpoint write its killed worker never renamed
        f.unlink(missing_ok=True)
    return gone


class ResultsUnwritable(Exception):
    """The results store (or a cell's staging folder) cannot be written: full, read-only, no permission.
    Raised by a worker instead of recording a failure it could not write either; the driver stops the run."""


# Write errors that say the storage refuses, whatever is written: full, over quota, mounted read-only.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def unwritable(store: Store, exc: BaseException) -> str | None:
    """One line saying why the results cannot be written, if `exc` (or what caused it) is such an error.
    Permission errors count only for paths under the results (a model folder without permission is a
    different problem)."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if getattr(e, "cause", None) is not None:  # a Ray task error: what the task raised
            e = e.cause  # type: ignore[attr-defined]
            continue
        if isinstance(e, ResultsUnwritable):
            return str(e)
        if isinstance(e, OSError) and e.errno is not None:
            name = str(e.filename or "")
            ours = store.local and (name.startswith(store.root + "/") or name == store.root)
            if e.errno in _STORAGE_ERRNOS or (e.errno in (errno.EACCES, errno.EPERM) and ours):
                return f"{os.strerror(e.errno)}" + (f" ({name})" if name else "")
        e = e.__cause__ or e.__context__
    return None


def publish_cell(store: Store, cell_id: str, staging: Path) -> bool:
    """Publish a finished cell with DONE last, then drop its heartbeat and checkpoint."""
    ok = _publish(store, cell_id, staging, done=True)
    store.delete(checkpoint_key(cell_id))
    if store.local:  # a checkpoint write an earlier, killed attempt left half done
        for f in store.local_path("checkpoints").glob(f".{cell_id}.pt.*.tmp"):
            f.unlink(missing_ok=True)
    return ok


def publish_failure(results: str | Path | Store, cell_id: str, cell_json: dict, error_text: str) -> None:
    store = as_store(results)
    staging = new_cell_staging(store, cell_id)
    (staging / "cell.json").write_text(dump_json(cell_json))
    (staging / "error.txt").write_text(error_text)
    _publish(store, cell_id, staging, done=False)


def read_cell_json(results: str | Path | Store, cell_id: str) -> dict | None:
    return as_store(results).read_json(f"cells/{cell_id}/cell.json")


def read_jsonl(store: Store, rel: str) -> list[dict]:
    try:
        text = store.read_bytes(rel).decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def checkpoint_key(cell_id: str) -> str:
    return f"checkpoints/{cell_id}.pt"


def read_parquet(store: Store, rel: str):
    import pandas as pd

    return pd.read_parquet(io.BytesIO(store.read_bytes(rel)))


def host_info() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def check_results_dir(results: str | Path) -> list[str]:
    """Problems that would stop us writing results, found before any training."""
    if is_uri(results):
        try:
            store = Store(results)
            store.listdir()
        except (OSError, ValueError) as e:
            return [f"storage: cannot use {results}: {str(e).splitlines()[0]}"]
        return []
    results = Path(results)
    for p in [results, *results.parents]:
        if p.exists():
            if not p.is_dir():
                return [f"storage: {p} is a file, not a directory; choose another results path"]
            if not os.access(p, os.W_OK) or not _can_create(p):
                return [
                    f"storage: {p} is not writable; choose a results directory you can write to "
                    "(--results DIR or storage: in the matrix)"
                ]
            break
    return []


def _can_create(d: Path) -> bool:
    import tempfile

    try:
        fd, name = tempfile.mkstemp(prefix=".ablate-probe-", dir=d)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def read_plan(results: str | Path | Store) -> dict[str, Any]:
    """plan.json of a results directory (written by the driver; every reader goes through here)."""
    try:
        store = as_store(results)
        plan = store.read_json("plan.json")
    except (OSError, ValueError) as e:  # an unreachable or malformed URI
        raise UserError([f"{results}: cannot read: {str(e).splitlines()[0]}"]) from None
    if plan is None:
        raise UserError([f"{results}: not an ablate results directory (no plan.json); run `ablate run` first"])
    return plan


def write_plan(store: Store, plan: dict[str, Any]) -> None:
    store.write_text("plan.json", dump_json(plan))
