"""Ray Job submission: `ablate submit / status --job / logs / cancel` against a cluster's dashboard.

`submit` validates the matrix on this machine first (everything this machine can check), then ships
it with the files it names (ablate/jobbundle.py) through the dashboard (ablate/jobclient.py). The
results location and matrix name ride along in the job's metadata, so `status --job` can find the
cells without the matrix file.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bundle, entrypoint, results_location, validate and the version checks are also imported from here.
from ..errors import UserError
from ..results.storage import is_uri
from .jobbundle import (
    STOP_WAIT_S,
    bundle,
    entrypoint,
    human_size,
    results_location,  # noqa: F401
    runtime_env,
    validate,
)
from .jobclient import (
    SUBMIT_WAIT_S,
    JobError,
    auth_message,
    check_client_versions,  # noqa: F401
    check_job_id,
    check_ray_versions,  # noqa: F401
    connect,
    parse_wait,  # noqa: F401 - the CLI's --wait
    redact,
    resolve_address,
    retrying,
    sdk_call,
)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
META_RESULTS, META_MATRIX = "ablate_results", "ablate_matrix"


def submit(
    matrix: str | Path, address: str | None, results: str | None, out, wait_s: float = SUBMIT_WAIT_S, err=None
) -> str:
    """Validate MATRIX here, submit it as a Ray Job, print the job id and return it. A cluster that is still
    starting (connection refused, no job agent yet) gets `wait_s` seconds, with one line saying so."""
    from .. import __version__

    b = bundle(matrix, results)
    validate(matrix, b)
    err = err or out
    said: list[str] = []

    def notice(text: str) -> None:  # once per submission, whether it waits to connect or to submit
        if not said:
            err.print(text, markup=False, highlight=False, soft_wrap=True)
            said.append(text)

    where, deadline = redact(resolve_address(address)), time.monotonic() + wait_s  # one deadline for both waits
    client = retrying(lambda: connect(address), wait_s, notice, f"the Ray cluster at {where}")
    with tempfile.TemporaryDirectory(prefix="ablate-job-") as wd:
        for rel, src in b.files.items():
            dst = Path(wd) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copyfile(src, dst)
        metadata = {
            META_RESULTS: b.results,
            META_MATRIX: b.spec.name,
            "ablate_version": __version__,
            "ablate_matrix_file": b.matrix_rel,
        }
        env = runtime_env(b, wd)
        job = retrying(
            lambda: sdk_call(client, "submit_job", entrypoint=entrypoint(b), runtime_env=env, metadata=metadata),
            max(0.0, deadline - time.monotonic()),
            notice,
            f"the Ray cluster at {where}",
        )
    out.print(f"Submitted job {job}", markup=False, highlight=False, soft_wrap=True)
    out.print(
        f"  matrix {b.spec.name} ({b.matrix_rel}, {human_size(b.bytes)} shipped) → results {b.results}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for n in b.notes:
        out.print(f"  note: {n}", markup=False, highlight=False, soft_wrap=True)
    out.print(
        f"  ablate status --job {job} --address {where}\n  ablate logs --job {job} --follow --address {where}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return job


# ---------------------------------------------------------------------------------------------
# Status, logs, cancel


def _info(client, job: str):
    return sdk_call(client, "get_job_info", check_job_id(job))


def job_cells(info) -> tuple[str | None, Any, str | None]:
    """(results location, cells DataFrame or None, why there are no cells)."""
    from ..results.collect import collect

    meta = info.metadata or {}
    results = meta.get(META_RESULTS)
    if not results:
        return None, None, "this job was not submitted by `ablate submit` (no results location in its metadata)"
    if not is_uri(results) and not Path(results).exists():
        return (
            results,
            None,
            (
                f"the results at {results} are not readable from this machine (a path on the "
                "cluster's disk, or not created yet); the job status above is all ablate can show"
            ),
        )
    try:
        cells, _ = collect(results, write=False)
    except UserError as e:
        msg = e.problems[0] if e.problems else str(e)
        if "no plan.json" in msg:
            return results, None, f"no cells written at {results} yet (the job has not started training)"
        return results, None, f"cannot read the results from this machine: {msg}"
    except Exception as e:  # noqa: BLE001 - e.g. an object store without credentials here
        return (
            results,
            None,
            (
                f"cannot read the results at {results} from this machine: "
                f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            ),
        )
    return results, cells, None


def failure_line(message: str | None) -> str | None:
    """The line to show for a FAILED job: ablate's own one-line reason (`ablate: …`, e.g. the environment
    check's) when the driver log has one, else the first line of Ray's message."""
    lines = [ln.strip() for ln in (message or "").strip().splitlines() if ln.strip()]
    ours = [ln for ln in lines if ln.startswith("ablate: ") or ln.startswith("error: ")]
    return ours[-1] if ours else (lines[0] if lines else None)


def show_status(job: str, address: str | None, out, err) -> str:
    from rich.text import Text

    from ..live import status_table, summary_line
    from ..results.progress import snapshot

    client = connect(address, check_version=False)
    info = _info(client, job)
    status = str(info.status.value if hasattr(info.status, "value") else info.status)
    color = {"SUCCEEDED": "green", "FAILED": "red", "STOPPED": "yellow", "RUNNING": "cyan"}.get(status, "white")
    meta = info.metadata or {}
    out.print(
        Text.assemble(
            f"job {job}: ", (status, color), f"  (matrix {meta[META_MATRIX]})" if META_MATRIX in meta else ""
        ),
        soft_wrap=True,
    )
    if status == "FAILED" and info.message:
        out.print(f"  {failure_line(info.message)}", markup=False, highlight=False, soft_wrap=True)
        out.print(
            f"  full driver log: ablate logs --job {job} --address {redact(client._ablate_address)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    results, cells, why = job_cells(info)
    if cells is None:
        if status == "PENDING" and results:
            why = f"no cells yet: the job is still setting up; they will appear in {results}"
        err.print(why, markup=False, highlight=False, soft_wrap=True)
        return status
    snap = snapshot(results or "", list(zip(cells["cell_id"], cells["label"], cells["status"])))
    out.print(status_table(cells, snap, Text(f"results {results}")))
    out.print(summary_line(snap), highlight=False)
    return status


def show_logs(job: str, address: str | None, follow: bool, err) -> str:
    """Print the driver's log; with follow, stream it until the job ends. Returns the final status."""
    client = connect(address, check_version=False)
    info = _info(client, job)
    if not follow:
        sys.stdout.write(sdk_call(client, "get_job_logs", job) or "")
        sys.stdout.flush()
        return str(info.status)

    async def tail():
        async for chunk in client.tail_job_logs(job):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        err.print(
            f"Stopped following; the job keeps running (`ablate cancel --job {job}` stops it).",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise JobError("interrupted", code=130) from None
    except Exception as e:  # noqa: BLE001 - aiohttp / websocket errors: one line
        if type(e).__name__ == "AuthenticationError":
            raise JobError(auth_message(str(e).splitlines()[0] if str(e) else "", client._ablate_address)) from None
        raise JobError(f"lost the log stream from {redact(client._ablate_address)}: {type(e).__name__}") from None
    return str(_info(client, job).status)


def cancel(job: str, address: str | None, out, wait_s: float = STOP_WAIT_S + 45) -> str:
    """Stop the job (the driver gets SIGINT, then SIGKILL); finished cells stay. Returns the final status."""
    client = connect(address, check_version=False)
    info = _info(client, job)
    status = str(info.status)
    if status in TERMINAL:
        out.print(f"job {job} already {status}; nothing to stop.", highlight=False, soft_wrap=True)
        return status
    sdk_call(client, "stop_job", job)
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
        out.print(
            f"  cells: {', '.join(f'{v} {k}' for k, v in counts.items())}. Finished cells are kept in "
            f"{results}; submitting the same matrix again trains only the rest.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    elif results:
        out.print(
            f"  finished cells are kept in {results}; submitting the same matrix again trains only the rest.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    return status
