"""Talking to a Ray cluster's Jobs API: the dashboard address, token auth, version agreement, errors.

Token authentication: Ray's own client reads RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and adds the header itself. ablate never prints, logs or
forwards the token or any request header, and never puts it into the job's environment.

Every failure a user can fix (refused, unreachable, unauthenticated, not a dashboard, Ray or Python
versions that differ, an unknown job id) becomes one JobError line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import UserError
from .envcheck import ENV_PYTHON

CONNECT_TIMEOUT_S = 10.0
ENV_RAY, ENV_ABLATE = "ABLATE_CLIENT_RAY", "ABLATE_CLIENT_VERSION"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class JobError(UserError):
    """A mistake or condition the user can fix with a cluster job; printed as one line, no traceback."""

    one_line = True


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
        mine = f"{a[0]}.{a[1]}" if a else local
        return (
            f"Ray version mismatch: this machine has Ray {local}, {where} runs Ray {cluster}. Driver and "
            f"workers must agree on Ray major.minor: install ray[default]=={cluster} here (or move the cluster "
            f"to Ray {mine}) and submit again"
        )
    return None


def check_client_versions() -> None:
    """Run first by `ablate run` inside a job: stop with a clear message if this node's Python (or Ray)
    major.minor differs from the machine that submitted the job. No-op outside a submitted job."""
    from .envcheck import problems as env_problems

    if not os.environ.get(ENV_PYTHON):
        return
    problems = env_problems()  # the job's entrypoint ran this check already; `ablate run` alone did not
    want_ray = os.environ.get(ENV_RAY)
    if want_ray and not problems:
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


def redact(url: str) -> str:
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
            raise JobError("no Ray dashboard address: pass --address http://HEAD:8265 (or set RAY_ADDRESS to that URL)")
    address = address.strip().rstrip("/")
    try:
        s = urlsplit(address)
        ok = s.scheme in ("http", "https") and bool(s.hostname)
        s.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        shown = address if source == "--address" and "@" not in address else "its value"
        raise JobError(
            f"{source}: {shown} is not a Ray dashboard URL; jobs need the dashboard's "
            "http(s) address, e.g. --address http://HEAD:8265"
        )
    return address


def auth_message(status_or_text: Any, address: str) -> str:
    text = str(status_or_text)
    where = redact(address)
    if "401" in text or "required" in text.lower():
        hint = "set RAY_AUTH_MODE=token and put the cluster's token in RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)"
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
        ):
            hint = "a token is set but RAY_AUTH_MODE is not 'token', so it is not sent: set RAY_AUTH_MODE=token"
        elif os.environ.get("RAY_AUTH_MODE", "").lower() != "token" and (Path.home() / ".ray" / "auth_token").is_file():
            hint = (
                "~/.ray/auth_token exists but is sent only with RAY_AUTH_MODE=token: set it if that file holds "
                "this cluster's token, or put the token in RAY_AUTH_TOKEN"
            )
        return f"the Ray cluster at {where} requires token authentication and no token was sent: {hint}"
    return (
        f"the Ray cluster at {where} rejected the authentication token: check that RAY_AUTH_TOKEN "
        "(or the file in RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) holds this cluster's token"
    )


def _quiet_ray_loggers() -> None:
    for name in (
        "ray.dashboard.modules.dashboard_sdk",
        "ray.dashboard.modules.job.sdk",
        "ray._private.runtime_env.packaging",
        "ray._private.runtime_env.py_modules",
        "ray._private.runtime_env.working_dir",
    ):
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
    where = redact(address)
    try:
        r = requests.get(f"{address}/api/version", headers=headers, timeout=CONNECT_TIMEOUT_S)
    except requests.exceptions.SSLError:
        raise JobError(f"TLS handshake with {where} failed (certificate not trusted?)") from None
    except requests.exceptions.ConnectTimeout:
        raise JobError(
            f"no answer from the Ray dashboard at {where} within {CONNECT_TIMEOUT_S:.0f} s: "
            "is the address right and the port reachable from here?"
        ) from None
    except requests.exceptions.ConnectionError:
        raise JobError(
            f"cannot connect to the Ray dashboard at {where} (connection refused or host unreachable): "
            "is the head node running with its dashboard on that port?"
        ) from None
    except requests.exceptions.RequestException as e:
        raise JobError(f"request to {where} failed: {type(e).__name__}") from None
    if r.status_code in (401, 403):
        raise JobError(auth_message(r.status_code, address))
    try:
        r.raise_for_status()
        return r.json()["ray_version"]
    except Exception:  # noqa: BLE001 - 404, HTML, anything that is not Ray's version answer
        raise JobError(
            f"{where} did not answer like a Ray dashboard (HTTP {r.status_code} on /api/version): "
            "is it the dashboard port (8265 by default)?"
        ) from None


def connect(address: str | None, check_version: bool = True):
    """A JobSubmissionClient for the dashboard at `address` (or $RAY_ADDRESS), checked for Ray agreement."""
    import ray
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    _quiet_ray_loggers()
    address = resolve_address(address)
    cluster_version = _preflight(address)
    if check_version:
        problem = check_ray_versions(ray.__version__, cluster_version, f"the cluster at {redact(address)}")
        if problem:
            raise JobError(problem)
    try:
        with _without_env("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            client = JobSubmissionClient(address)
    except AuthenticationError as e:
        raise JobError(auth_message(str(e).splitlines()[0] if str(e) else "401", address)) from None
    except ConnectionError:
        raise JobError(f"cannot connect to the Ray dashboard at {redact(address)}") from None
    client._ablate_address = address  # type: ignore[attr-defined]  # for messages
    return client


def sdk_call(client, method: str, *args, **kwargs):
    """Call a JobSubmissionClient method; turn its errors into one-line JobErrors."""
    import requests
    from ray.exceptions import AuthenticationError

    where = redact(client._ablate_address)
    try:
        return getattr(client, method)(*args, **kwargs)
    except AuthenticationError as e:
        raise JobError(auth_message(str(e).splitlines()[0] if str(e) else "", client._ablate_address)) from None
    except requests.exceptions.RequestException:
        raise JobError(f"lost the connection to the Ray dashboard at {where}") from None
    except (RuntimeError, ValueError) as e:  # the SDK's "Request failed with status code …", package errors
        text = " ".join(str(e).split())
        if method != "submit_job" and ("404" in text or "does not exist" in text):
            job = args[0] if args else "?"
            raise JobError(
                f"no job {job!r} on the Ray cluster at {where} (list them with `ray job list --address {where}`)"
            ) from None
        raise JobError(f"the Ray dashboard at {where} refused {method}: {text[:300]}") from None


# ---------------------------------------------------------------------------------------------
# Waiting for a cluster that is still starting

SUBMIT_WAIT_S = 60.0
_BUSY = ("No available agent", "please try again later")  # the job agent is not up yet (right after `ray start`)


def parse_wait(text: str | float | None) -> float:
    """--wait: seconds, or a duration such as 60s, 2m, 1m30s; 0 does not wait."""
    if text is None:
        return SUBMIT_WAIT_S
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*", str(text))
    if not m or not (m.group(1) or m.group(2)) or float(m.group(1) or 0) * 60 + float(m.group(2) or 0) > 86_400:
        raise JobError(f"--wait: {text!r} is not a duration; e.g. 60s, 2m, 1m30s, or 0 (do not wait); at most 24h")
    return float(m.group(1) or 0) * 60 + float(m.group(2) or 0)


def starting_up(e: JobError) -> str | None:
    """Why an error may pass by itself while the head starts (connection refused, no job agent yet), or None."""
    text = str(e)
    if "cannot connect to the Ray dashboard" in text:
        return "connection refused"
    if any(b in text for b in _BUSY):
        return "its job agent is not ready"
    return None


def retrying(call, wait_s: float, notice, what: str):
    """call(); while it fails the way a starting cluster fails, try again with backoff (1, 2, 4, 5, 5 … s)
    until `wait_s` has passed, saying once that it waits. Any other error, or the deadline, raises."""
    deadline = time.monotonic() + wait_s
    delay, said = 1.0, False
    while True:
        try:
            return call()
        except JobError as e:
            why = starting_up(e)
            if why is None or time.monotonic() + delay > deadline:
                raise
            if not said:
                notice(f"waiting up to {wait_s:.0f} s for {what} ({why}; it may still be starting)…")
                said = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def check_job_id(job: str) -> str:
    if not _JOB_ID.match(job or ""):
        raise JobError(f"--job: {job!r} is not a Ray job id (e.g. raysubmit_AbC123…, as printed by `ablate submit`)")
    return job
