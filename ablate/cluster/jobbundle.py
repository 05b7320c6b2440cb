"""What a Ray Job submission ships: the matrix and the local files it names, and the job's command.

The ablate package goes as `py_modules`; a small working directory holds the matrix file and the
local files it references, laid out as they are here so the matrix's relative paths still resolve on
the cluster. Data given as a URI (s3://…, gs://…) or as `builtin` stays where it is. The entrypoint
is a fixed `python -m ablate run …` whose every user-derived piece goes through `shlex.quote`; no
matrix value ever reaches a shell.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..matrix.yamlfile import load_matrix, parse_matrix
from ..results.storage import is_uri, join
from ..schema import DatasetSource, MatrixSpec, SplitFromTrain
from .jobclient import ENV_ABLATE, ENV_PYTHON, ENV_RAY, JobError

MAX_UPLOAD_BYTES = 100 * 1000**2  # Ray's package limit is 100 MiB (zipped); stay under it uncompressed
STOP_WAIT_S = 15  # SIGINT first (the runner stops cleanly), SIGKILL after this many seconds


@dataclass
class Bundle:
    """The working directory a job gets: the matrix and the local files it names, in their layout."""

    spec: MatrixSpec
    matrix_rel: str  # the matrix file, relative to the common root (posix)
    files: dict[str, Path] = field(default_factory=dict)  # rel path in working dir -> local file or dir
    notes: list[str] = field(default_factory=list)
    remote: set[str] = field(default_factory=set)  # sources this machine cannot check (on the cluster)
    results_root: str = ""
    results: str = ""  # <results root>/<matrix name>, absolute path or URI

    @property
    def bytes(self) -> int:
        return sum(_size(p) for p in self.files.values())


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def human_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def results_location(root: str, name: str) -> str:
    """<root>/<name> for a URI or an absolute (cluster) path; refuse a relative root."""
    root = root.strip()
    if is_uri(root):
        return join(root, name)
    if not posixpath.isabs(root):
        raise JobError(
            f"results root {root!r} is relative: inside a Ray Job it would land in the job's temporary "
            "working directory on the cluster and be lost. Pass --results with an absolute path on "
            "storage every node can write (e.g. /mnt/shared/ablate) or a URI (s3://bucket/prefix)"
        )
    return posixpath.join(posixpath.normpath(root), name)


def bundle(matrix: str | Path, results: str | None = None) -> Bundle:
    """Load MATRIX (raising UserError on schema problems) and work out what to ship and what stays."""
    matrix = Path(matrix)
    spec = load_matrix(matrix)  # every schema problem, with file:line
    raw = parse_matrix(matrix.read_bytes().decode("utf-8"), str(matrix))  # paths as written
    mpath = Path(os.path.abspath(matrix))
    base = mpath.parent
    local: dict[str, Path] = {}  # field -> textual absolute path of a file/dir to ship
    notes, remote = [], set()
    for split in ("train", "heldout"):
        src = getattr(raw.data, split)
        if isinstance(src, DatasetSource) and src.hf is not None:  # a hub dataset: the cluster's driver loads it
            remote.add(f"data.{split}")
            notes.append(f"data.{split} {src.display()} is loaded by the cluster")
            continue
        src = src.path if isinstance(src, DatasetSource) else src
        if not isinstance(src, str) or src.startswith("builtin:"):  # builtin, or split_from_train
            continue
        if is_uri(src):
            remote.add(f"data.{split}")
            notes.append(f"data.{split} stays at {src} (read by the cluster)")
        elif Path(src).is_absolute():
            if not Path(src).is_file():
                remote.add(f"data.{split}")
            notes.append(f"data.{split} is the absolute path {src}: it must exist on the cluster's nodes")
        else:
            local[f"data.{split}"] = Path(os.path.normpath(base / src))
    mp = raw.model.path
    if not mp.startswith("builtin:"):
        if Path(mp).is_absolute():
            if not Path(mp).is_dir():
                remote.add("model.path")
            notes.append(f"model.path is the absolute path {mp}: it must exist on the cluster's nodes")
        elif (base / mp).is_dir():
            local["model.path"] = Path(os.path.normpath(base / mp))
    root = Path(os.path.commonpath([str(base), *(str(p.parent) for p in local.values())]))
    b = Bundle(spec, mpath.relative_to(root).as_posix(), notes=notes, remote=remote)
    b.files[b.matrix_rel] = mpath
    problems = []
    for fld, p in local.items():
        if fld.startswith("data.") and not p.exists():  # a file, or a datasets save_to_disk directory
            continue  # make_plan reports the missing file with its usual message
        rel = p.relative_to(root).as_posix()
        b.files[rel] = p
        size = _size(p)
        if size > MAX_UPLOAD_BYTES:
            problems.append(
                f"{matrix}: {fld}: {p} is {human_size(size)}; ablate ships at most "
                f"{human_size(MAX_UPLOAD_BYTES)} of local files with a job. Put it on shared storage (s3://…, gs://…, "
                f"or a path every node can read) and set {fld} to that URI or path"
            )
    if not problems and b.bytes > MAX_UPLOAD_BYTES:
        problems.append(
            f"{matrix}: the matrix's local files total {human_size(b.bytes)}; ablate ships at "
            f"most {human_size(MAX_UPLOAD_BYTES)} with a job. Put the data on shared storage (s3://…, "
            "gs://…) and reference it by URI"
        )
    if problems:
        raise UserError(problems)
    b.results_root = results if results is not None else spec.storage
    b.results = results_location(b.results_root, spec.name)
    return b


def validate(matrix: str | Path, b: Bundle) -> None:
    """Every data and cell check this machine can do; raise one UserError listing the problems."""
    from ..matrix.plan import make_plan

    with tempfile.TemporaryDirectory(prefix="ablate-submit-") as tmp:
        if not b.remote:  # everything is here: exactly `ablate run`'s checks (results aside)
            make_plan(matrix, results=tmp)
            return
    # Some sources live only on the cluster: check the rest, and the cells the matrix makes.
    from ..inputs.data import load_rows
    from ..inputs.models import check_model_spec

    spec, where, problems = b.spec, str(matrix), []
    if "model.path" in b.remote:
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"path": "cluster/model"})})
    problems += [f"{where}: {p}" for p in check_model_spec(spec.model)]
    for split in ("train", "heldout"):
        if f"data.{split}" not in b.remote and not isinstance(getattr(spec.data, split), SplitFromTrain):
            try:
                load_rows(getattr(spec.data, split), split)
            except UserError as e:
                problems += e.problems
    if problems:
        raise UserError(problems)


def entrypoint(b: Bundle) -> str:
    """The job's fixed command; every user-derived piece is shell-quoted. Its first step checks that the
    cluster's `python` can run ablate and says in one line what is missing (ablate/cluster/envcheck.py)."""
    run = ["python", "-m", "ablate", "run", shlex.quote(b.matrix_rel), "--results", shlex.quote(b.results_root)]
    return "python -m ablate.cluster.envcheck && " + " ".join(run)


def runtime_env(b: Bundle, working_dir: str) -> dict[str, Any]:
    import ray

    from .. import __version__

    return {
        "working_dir": working_dir,
        "py_modules": [str(Path(__file__).resolve().parents[1])],  # the ablate package
        "excludes": ["__pycache__", "*.pyc"],
        "env_vars": {
            ENV_PYTHON: f"{sys.version_info.major}.{sys.version_info.minor}",
            ENV_RAY: ray.__version__,
            ENV_ABLATE: __version__,
            # `ablate cancel`: SIGINT lets the runner stop its cells and exit; SIGKILL only after the wait.
            "RAY_JOB_STOP_SIGNAL": "SIGINT",
            "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S),
            "RAY_USAGE_STATS_ENABLED": "0",
            "COLUMNS": "160",  # the report table in the driver log
        },
    }
