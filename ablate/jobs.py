"""Ray Job submission: `ablate submit / status --job / logs / cancel` against a cluster's dashboard.

`submit` validates the matrix on this machine first (everything this machine can check), then ships
the ablate package (`py_modules`) and a small working directory holding the matrix file and the local
files it references, laid out as they are here so the matrix's relative paths still resolve on the
cluster. Data given as a URI (s3://…, gs://…) or as `builtin` stays where it is. The job's entrypoint
is a fixed `python -m ablate run …` whose every user-derived piece goes through `shlex.quote`; no
matrix value ever reaches a shell. The results location and matrix name ride along in the job's
metadata, so `status --job` can find the cells without the matrix file.

Token authentication: Ray's own client reads RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and adds the header itself. ablate never prints, logs or
forwards the token or any request header, and never puts it into the job's environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from .spec import BuiltinData, MatrixError, MatrixSpec, load_matrix, parse_matrix

MAX_UPLOAD_BYTES = 100 * 1000**2  # Ray's package limit is 100 MiB (zipped); stay under it uncompressed
CONNECT_TIMEOUT_S = 10.0
STOP_WAIT_S = 15  # SIGINT first (the runner stops cleanly), SIGKILL after this many seconds
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
ENV_PYTHON, ENV_RAY, ENV_ABLATE = "ABLATE_CLIENT_PYTHON", "ABLATE_CLIENT_RAY", "ABLATE_CLIENT_VERSION"
META_RESULTS, META_MATRIX = "ablate_results", "ablate_matrix"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class JobError(Exception):
    """A mistake or condition the user can fix; printed as one line, no traceback."""

    def __init__(self, message: str, code: int = 2):
        self.code = code
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# Versions


def _major_minor(version: str) -> tuple[int, int] | None:
    m = re.match(r"^\s*(\d+)\.(\d+)", str(version))
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_ray_versions(local: str, cluster: str, where: str = "the cluster") -> str | None:
    """A one-line problem if this machine's and the cluster's Ray differ in major.minor, else None."""
    a, b = _major_minor(local), _major_minor(cluster)
    if b is None:
        return f"cannot read the Ray version of {where} (it reported {cluster!r})"
    if a != b:
        return (f"Ray version mismatch: this machine has Ray {local}, {where} runs Ray {cluster}. Driver and "
                f"workers must agree on Ray major.minor: install ray[default]=={cluster} here (or move the cluster "
                f"to Ray {a[0]}.{a[1]}) and submit again")
    return None


def check_client_versions() -> None:
    """Run first by `ablate run` inside a job: stop with a clear message if this node's Python (or Ray)
    major.minor differs from the machine that submitted the job. No-op outside a submitted job."""
    want_py = os.environ.get(ENV_PYTHON)
    if not want_py:
        return
    have_py = f"{sys.version_info.major}.{sys.version_info.minor}"
    problems = []
    if _major_minor(want_py) != _major_minor(have_py):
        problems.append(f"Python version mismatch: the job was submitted from Python {want_py}, but this cluster "
                        f"runs Python {have_py} ({sys.executable}). Submit from Python {have_py}, or run the cluster "
                        f"on Python {want_py}, so driver and workers agree")
    want_ray = os.environ.get(ENV_RAY)
    if want_ray:
        import ray

        p = check_ray_versions(want_ray, ray.__version__, "this cluster")
        if p:
            problems.append(p.replace("this machine has", "the submitting machine has"))
    if problems:
        for p in problems:
            sys.stderr.write(f"ablate: {p}\n")
        raise SystemExit(2)


# ---------------------------------------------------------------------------------------------
# Connecting to a dashboard


def _redact(url: str) -> str:
    """The URL without any user:password part, for messages."""
    try:
        s = urlsplit(url)
        return urlunsplit(s._replace(netloc=s.hostname + (f":{s.port}" if s.port else ""))) if s.hostname else url
    except ValueError:
        return "<unparseable address>"


def resolve_address(address: str | None) -> str:
    """--address, else $RAY_ADDRESS when it is an http(s) URL of the dashboard."""
    source = "--address"
    if not address:
        address, source = os.environ.get("RAY_ADDRESS", ""), "RAY_ADDRESS"
        if not address:
            raise JobError("no Ray dashboard address: pass --address http://HEAD:8265 "
                           "(or set RAY_ADDRESS to that URL)")
    address = address.strip().rstrip("/")
    try:
        s = urlsplit(address)
        ok = s.scheme in ("http", "https") and bool(s.hostname)
        s.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        shown = address if source == "--address" and "@" not in address else "its value"
        raise JobError(f"{source}: {shown} is not a Ray dashboard URL; jobs need the dashboard's "
                       "http(s) address, e.g. --address http://HEAD:8265")
    return address


def _auth_message(status_or_text: Any, address: str) -> str:
    text = str(status_or_text)
    where = _redact(address)
    if "401" in text or "required" in text.lower():
        hint = "set RAY_AUTH_MODE=token and put the cluster's token in RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)"
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" and (
                os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            hint = "a token is set but RAY_AUTH_MODE is not 'token', so it is not sent: set RAY_AUTH_MODE=token"
        elif os.environ.get("RAY_AUTH_MODE", "").lower() != "token" and (Path.home() / ".ray" / "auth_token").is_file():
            hint = ("~/.ray/auth_token exists but is sent only with RAY_AUTH_MODE=token: set it if that file holds "
                    "this cluster's token, or put the token in RAY_AUTH_TOKEN")
        return f"the Ray cluster at {where} requires token authentication and no token was sent: {hint}"
    return (f"the Ray cluster at {where} rejected the authentication token: check that RAY_AUTH_TOKEN "
            "(or the file in RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) holds this cluster's token")


def _quiet_ray_loggers() -> None:
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging", "ray._private.runtime_env.py_modules",
                 "ray._private.runtime_env.working_dir"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def _without_env(*names: str) -> Iterator[None]:
    """Ray's client lets RAY_ADDRESS override its `address` argument; ablate's --address wins instead."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _preflight(address: str) -> str:
    """GET /api/version with a timeout: one clear line for refused, unreachable, auth and non-Ray answers.
    Returns the cluster's Ray version."""
    import requests

    try:
        from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

        headers = get_auth_headers_if_auth_enabled({})
    except ImportError:  # an older or newer Ray: its client adds the header itself
        headers = {}
    where = _redact(address)
    try:
        r = requests.get(f"{address}/api/version", headers=headers, timeout=CONNECT_TIMEOUT_S)
    except requests.exceptions.SSLError:
        raise JobError(f"TLS handshake with {where} failed (certificate not trusted?)") from None
    except requests.exceptions.ConnectTimeout:
        raise JobError(f"no answer from the Ray dashboard at {where} within {CONNECT_TIMEOUT_S:.0f} s: "
                       "is the address right and the port reachable from here?") from None
    except requests.exceptions.ConnectionError:
        raise JobError(f"cannot connect to the Ray dashboard at {where} (connection refused or host unreachable): "
                       "is the head node running with its dashboard on that port?") from None
    except requests.exceptions.RequestException as e:
        raise JobError(f"request to {where} failed: {type(e).__name__}") from None
    if r.status_code in (401, 403):
        raise JobError(_auth_message(r.status_code, address))
    try:
        r.raise_for_status()
        return r.json()["ray_version"]
    except Exception:  # noqa: BLE001 - 404, HTML, anything that is not Ray's version answer
        raise JobError(f"{where} did not answer like a Ray dashboard (HTTP {r.status_code} on /api/version): "
                       "is it the dashboard port (8265 by default)?") from None


def connect(address: str | None, check_version: bool = True):
    """A JobSubmissionClient for the dashboard at `address` (or $RAY_ADDRESS), checked for Ray agreement."""
    import ray
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    _quiet_ray_loggers()
    address = resolve_address(address)
    cluster_version = _preflight(address)
    if check_version:
        problem = check_ray_versions(ray.__version__, cluster_version, f"the cluster at {_redact(address)}")
        if problem:
            raise JobError(problem)
    try:
        with _without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            client = JobSubmissionClient(address)
    except AuthenticationError as e:
        raise JobError(_auth_message(str(e).splitlines()[0] if str(e) else "401", address)) from None
    except ConnectionError:
        raise JobError(f"cannot connect to the Ray dashboard at {_redact(address)}") from None
    client._ablate_address = address  # for messages
    return client


def _sdk(client, method: str, *args, **kwargs):
    """Call a JobSubmissionClient method; turn its errors into one-line JobErrors."""
    import requests
    from ray.exceptions import AuthenticationError

    where = _redact(client._ablate_address)
    try:
        return getattr(client, method)(*args, **kwargs)
    except AuthenticationError as e:
        raise JobError(_auth_message(str(e).splitlines()[0] if str(e) else "", client._ablate_address)) from None
    except requests.exceptions.RequestException:
        raise JobError(f"lost the connection to the Ray dashboard at {where}") from None
    except (RuntimeError, ValueError) as e:  # the SDK's "Request failed with status code …", package errors
        text = " ".join(str(e).split())
        if method != "submit_job" and ("404" in text or "does not exist" in text):
            job = args[0] if args else "?"
            raise JobError(f"no job {job!r} on the Ray cluster at {where} "
                           f"(list them with `ray job list --address {where}`)") from None
        raise JobError(f"the Ray dashboard at {where} refused {method}: {text[:300]}") from None


def _check_job_id(job: str) -> str:
    if not _JOB_ID.match(job or ""):
        raise JobError(f"--job: {job!r} is not a Ray job id (e.g. raysubmit_AbC123…, as printed by `ablate submit`)")
    return job


# ---------------------------------------------------------------------------------------------
# What a submission ships


@dataclass
class Bundle:
    """The working directory a job gets: the matrix and the local files it names, in their layout."""

    spec: MatrixSpec
    matrix_rel: str                      # the matrix file, relative to the common root (posix)
    files: dict[str, Path] = field(default_factory=dict)  # rel path in working dir -> local file or dir
    notes: list[str] = field(default_factory=list)
    remote: set[str] = field(default_factory=set)        # sources this machine cannot check (on the cluster)
    results_root: str = ""
    results: str = ""                    # <results root>/<matrix name>, absolute path or URI

    @property
    def bytes(self) -> int:
        return sum(_size(p) for p in self.files.values())


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def _is_uri(s: str) -> bool:
    return "://" in s


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def results_location(root: str, name: str) -> str:
    """<root>/<name> for a URI or an absolute (cluster) path; refuse a relative root."""
    root = root.strip()
    if _is_uri(root):
        from .storage import join

        return join(root, name)
    if not posixpath.isabs(root):
        raise JobError(f"results root {root!r} is relative: inside a Ray Job it would land in the job's temporary "
                       "working directory on the cluster and be lost. Pass --results with an absolute path on "
                       "storage every node can write (e.g. /mnt/shared/ablate) or a URI (s3://bucket/prefix)")
    return posixpath.join(posixpath.normpath(root), name)


def bundle(matrix: str | Path, results: str | None = None) -> Bundle:
    """Load MATRIX (raising MatrixError on schema problems) and work out what to ship and what stays."""
    matrix = Path(matrix)
    spec = load_matrix(matrix)  # every schema problem, with file:line
    raw = parse_matrix(matrix.read_bytes().decode("utf-8"), str(matrix))  # paths as written
    mpath = Path(os.path.abspath(matrix))
    base = mpath.parent
    local: dict[str, Path] = {}  # field -> textual absolute path of a file/dir to ship
    notes, remote = [], set()
    for split in ("train", "heldout"):
        src = getattr(raw.data, split)
        if isinstance(src, BuiltinData) or src.startswith("builtin:"):
            continue
        if _is_uri(src):
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
        if fld.startswith("data.") and not p.is_file():
            continue  # make_plan reports the missing file with its usual message
        rel = p.relative_to(root).as_posix()
        b.files[rel] = p
        size = _size(p)
        if size > MAX_UPLOAD_BYTES:
            problems.append(f"{matrix}: {fld}: {p} is {_mb(size)}; ablate ships at most {_mb(MAX_UPLOAD_BYTES)} "
                            f"of local files with a job. Put it on shared storage (s3://…, gs://…, or a path every "
                            f"node can read) and set {fld} to that URI or path")
    if not problems and b.bytes > MAX_UPLOAD_BYTES:
        problems.append(f"{matrix}: the matrix's local files total {_mb(b.bytes)}; ablate ships at most "
                        f"{_mb(MAX_UPLOAD_BYTES)} with a job. Put the data on shared storage (s3://…, gs://…) "
                        "and reference it by URI")
    if problems:
        raise MatrixError(problems)
    b.results_root = results if results is not None else spec.storage
    b.results = results_location(b.results_root, spec.name)
    return b


def validate(matrix: str | Path, b: Bundle) -> None:
    """Every data and cell check this machine can do; raise one MatrixError listing the problems."""
    from .plan import make_plan

    with tempfile.TemporaryDirectory(prefix="ablate-submit-") as tmp:
        if not b.remote:  # everything is here: exactly `ablate run`'s checks (results aside)
            make_plan(matrix, results=tmp)
            return
    # Some sources live only on the cluster: check the rest, and the cells the matrix makes.
    from .cells import baseline_cells, expand
    from .data import load_rows
    from .models import check_model_spec, model_identity

    spec, where, problems = b.spec, str(matrix), []
    if "model.path" in b.remote:
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"path": "cluster/model"})})
    problems += [f"{where}: {p}" for p in check_model_spec(spec.model)]
    for split in ("train", "heldout"):
        if f"data.{split}" not in b.remote:
            try:
                load_rows(getattr(spec.data, split), split)
            except MatrixError as e:
                problems += e.problems
    cells = expand(spec, model_identity(spec.model), {"train": "-", "heldout": "-"})
    if not cells:
        problems.append(f"{where}: exclude removes every cell; nothing to run")
    elif not baseline_cells(cells, spec):
        problems.append(f"{where}: decision.baseline {dict(spec.decision.baseline)} matches no cell of the matrix")
    if problems:
        raise MatrixError(problems)


def entrypoint(b: Bundle) -> str:
    """The job's fixed command; every user-derived piece is shell-quoted."""
    return " ".join(["python", "-m", "ablate", "run", shlex.quote(b.matrix_rel),
                     "--results", shlex.quote(b.results_root)])


def runtime_env(b: Bundle, working_dir: str) -> dict[str, Any]:
    import ray

    from . import __version__

    return {
        "working_dir": working_dir,
        "py_modules": [str(Path(__file__).resolve().parent)],
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


def submit(matrix: str | Path, address: str | None, results: str | None, out) -> str:
    """Validate MATRIX here, submit it as a Ray Job, print the job id and return it."""
    from . import __version__

    b = bundle(matrix, results)
    validate(matrix, b)
    client = connect(address)
    with tempfile.TemporaryDirectory(prefix="ablate-job-") as wd:
        for rel, src in b.files.items():
            dst = Path(wd) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copyfile(src, dst)
        metadata = {META_RESULTS: b.results, META_MATRIX: b.spec.name, "ablate_version": __version__,
                    "ablate_matrix_file": b.matrix_rel}
        job = _sdk(client, "submit_job", entrypoint=entrypoint(b), runtime_env=runtime_env(b, wd), metadata=metadata)
    where = _redact(client._ablate_address)
    out.print(f"Submitted job {job}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"  matrix {b.spec.name} ({b.matrix_rel}, {_mb(b.bytes)} shipped) → results {b.results}",
              markup=False, highlight=False, soft_wrap=True)
    for n in b.notes:
        out.print(f"  note: {n}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"  ablate status --job {job} --address {where}\n  ablate logs --job {job} --follow --address {where}",
              markup=False, highlight=False, soft_wrap=True)
    return job


# ---------------------------------------------------------------------------------------------
# Status, logs, cancel


def _info(client, job: str):
    return _sdk(client, "get_job_info", _check_job_id(job))


def job_cells(info) -> tuple[str | None, Any, str | None]:
    """(results location, cells DataFrame or None, why there are no cells)."""
    from .collect import collect

    meta = info.metadata or {}
    results = meta.get(META_RESULTS)
    if not results:
        return None, None, "this job was not submitted by `ablate submit` (no results location in its metadata)"
    if not _is_uri(results) and not Path(results).exists():
        return results, None, (f"the results at {results} are not readable from this machine (a path on the "
                               "cluster's disk, or not created yet); the job status above is all ablate can show")
    try:
        cells, _ = collect(results, write=False)
    except MatrixError as e:
        msg = e.problems[0] if e.problems else str(e)
        if "no plan.json" in msg:
            return results, None, f"no cells written at {results} yet (the job has not started training)"
        return results, None, f"cannot read the results from this machine: {msg}"
    except Exception as e:  # noqa: BLE001 - e.g. an object store without credentials here
        return results, None, (f"cannot read the results at {results} from this machine: "
                               f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
    return results, cells, None


def show_status(job: str, address: str | None, out, err) -> str:
    from rich.table import Table
    from rich.text import Text

    client = connect(address, check_version=False)
    info = _info(client, job)
    status = str(info.status.value if hasattr(info.status, "value") else info.status)
    color = {"SUCCEEDED": "green", "FAILED": "red", "STOPPED": "yellow", "RUNNING": "cyan"}.get(status, "white")
    meta = info.metadata or {}
    out.print(Text.assemble(f"job {job}: ", (status, color),
                            f"  (matrix {meta[META_MATRIX]})" if META_MATRIX in meta else ""), soft_wrap=True)
    if status == "FAILED" and info.message:
        first = info.message.strip().splitlines()[0]
        out.print(f"  {first}", markup=False, highlight=False, soft_wrap=True)
        out.print(f"  full driver log: ablate logs --job {job} --address {_redact(client._ablate_address)}",
                  markup=False, highlight=False, soft_wrap=True)
    results, cells, why = job_cells(info)
    if cells is None:
        if status == "PENDING" and results:
            why = f"no cells yet: the job is still setting up; they will appear in {results}"
        err.print(why, markup=False, highlight=False, soft_wrap=True)
        return status
    table = Table(title=Text(f"results {results}"), title_justify="left")
    for c in ("cell id", "cell", "status", "held-out acc", "error"):
        table.add_column(c)
    colors = {"done": "green", "failed": "red", "pending": "yellow", "running": "cyan"}
    for r in cells.to_dict("records"):
        acc = r.get("heldout_accuracy")
        acc = "" if acc is None or acc != acc else f"{acc:.3f}"
        st = r["status"]
        table.add_row(Text(r["cell_id"]), Text(r["label"]), Text(st, style=colors.get(st, "white")), acc,
                      Text(f"{r.get('error_type')}: {r.get('error')}" if st == "failed" else ""))
    out.print(table)
    out.print(", ".join(f"{v} {k}" for k, v in cells["status"].value_counts().to_dict().items()), highlight=False)
    return status


def show_logs(job: str, address: str | None, follow: bool, err) -> str:
    """Print the driver's log; with follow, stream it until the job ends. Returns the final status."""
    client = connect(address, check_version=False)
    info = _info(client, job)
    if not follow:
        sys.stdout.write(_sdk(client, "get_job_logs", job) or "")
        sys.stdout.flush()
        return str(info.status)

    async def tail():
        async for chunk in client.tail_job_logs(job):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        err.print(f"Stopped following; the job keeps running (`ablate cancel --job {job}` stops it).",
                  markup=False, highlight=False, soft_wrap=True)
        raise JobError("interrupted", code=130) from None
    except Exception as e:  # noqa: BLE001 - aiohttp / websocket errors: one line
        if type(e).__name__ == "AuthenticationError":
            raise JobError(_auth_message(str(e).splitlines()[0] if str(e) else "", client._ablate_address)) from None
        raise JobError(f"lost the log stream from {_redact(client._ablate_address)}: {type(e).__name__}") from None
    return str(_info(client, job).status)


def cancel(job: str, address: str | None, out, wait_s: float = STOP_WAIT_S + 45) -> str:
    """Stop the job (the driver gets SIGINT, then SIGKILL); finished cells stay. Returns the final status."""
    client = connect(address, check_version=False)
    info = _info(client, job)
    status = str(info.status)
    if status in TERMINAL:
        out.print(f"job {job} already {status}; nothing to stop.", highlight=False, soft_wrap=True)
        return status
    _sdk(client, "stop_job", job)
    deadline = time.monotonic() + wait_s
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1.0)
        info = _info(client, job)
        status = str(info.status)
    results, cells, why = job_cells(info)
    line = f"job {job}: {status}"
    if status not in TERMINAL:
        line += f" (still stopping after {wait_s:.0f} s; check again with `ablate status --job {job}`)"
    out.print(line, highlight=False, soft_wrap=True)
    if cells is not None:
        counts = cells["status"].value_counts().to_dict()
        out.print(f"  cells: {', '.join(f'{v} {k}' for k, v in counts.items())}. Finished cells are kept in "
                  f"{results}; submitting the same matrix again trains only the rest.",
                  markup=False, highlight=False, soft_wrap=True)
    elif results:
        out.print(f"  finished cells are kept in {results}; submitting the same matrix again trains only the rest.",
                  markup=False, highlight=False, soft_wrap=True)
    return status


@contextlib.contextmanager
def user_errors(err) -> Iterator[None]:
    """Print a JobError as one line and exit with its code; never a traceback for what a user can fix."""
    import typer

    try:
        yield
    except JobError as e:
        if e.code != 130:
            from rich.text import Text

            err.print(Text.assemble(("error: ", "bold red"), str(e)), highlight=False, soft_wrap=True)
        raise typer.Exit(e.code) from None

