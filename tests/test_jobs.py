"""`ablate submit / status --job / logs / cancel` against a real Ray head started here (no mocks of Ray).

Each head runs as `ray start --head --block` in its own process session, on free ports and a private
temp dir, so it never touches another Ray on this machine; teardown stops exactly that session.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from ablate.cluster.jobs import check_client_versions, check_ray_versions
from ablate.inputs.letters import letters_task

from conftest import ROOT, ablate_cli, small_matrix

RAY_BIN = Path(sys.executable).parent / "ray"
NO_AUTH = {"RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))}
    env.update(COLUMNS="200", RAY_USAGE_STATS_ENABLED="0", PATH=f"{RAY_BIN.parent}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


class Head:
    """A private single-node Ray cluster with its dashboard on loopback."""

    def __init__(self, auth_env: dict, dashboard_port: int | None = None, wait: bool = True):
        self.tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Unix socket paths are limited
        ports = iter([*([dashboard_port] if dashboard_port else []), *(free_port() for _ in range(10))])
        opts = {
            "--dashboard-port": 0,
            "--port": 0,
            "--ray-client-server-port": 0,
            "--dashboard-agent-listen-port": 0,
            "--dashboard-agent-grpc-port": 0,
            "--runtime-env-agent-port": 0,
            "--metrics-export-port": 0,
            "--node-manager-port": 0,
            "--object-manager-port": 0,
        }
        opts = {k: str(next(ports)) for k in opts}
        self.url = f"http://127.0.0.1:{opts['--dashboard-port']}"
        cmd = [
            str(RAY_BIN),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--num-cpus",
            "2",
            "--disable-usage-stats",
            "--temp-dir",
            self.tmp,
            *[x for kv in opts.items() for x in kv],
        ]
        self.log = open(Path(self.tmp) / "head.log", "w")
        self.env = base_env(**auth_env)
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True
        )
        self.headers = {"Authorization": f"Bearer {auth_env['RAY_AUTH_TOKEN']}"} if "RAY_AUTH_TOKEN" in auth_env else {}
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        headers = self.headers
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, (Path(self.tmp) / "head.log").read_text()[-3000:]
            try:  # ready when the dashboard answers and the job agent lists jobs
                if requests.get(f"{self.url}/api/jobs/", headers=headers, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "Ray head did not come up"
            time.sleep(1)

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # `ray start --block` shuts its Ray processes down on SIGTERM
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything of this session's group still left
        except ProcessLookupError:
            pass
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def ablate(*args, env=None, cwd=ROOT, timeout=180):
    """The real command line in a fresh process (what a user runs; auth settings are read per process)."""
    return ablate_cli(*args, env=env or base_env(**NO_AUTH), cwd=cwd, timeout=timeout)


def cli(*args, **env):
    """The same commands in this process (importing ablate costs seconds on a busy 2-core machine)."""
    from typer.testing import CliRunner

    from ablate.cli import app

    clear = {k: None for k in os.environ if k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))}
    r = CliRunner().invoke(app, [str(a) for a in args], env={**clear, "COLUMNS": "200", **NO_AUTH, **env})
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def job_id(out) -> str:
    m = re.search(r"Submitted job (\S+)", out.stdout)
    assert m and out.returncode == 0, out.stdout + out.stderr
    return m.group(1)


def job_state(out) -> str:
    m = re.search(r"^job \S+: (\w+)", out.stdout, re.M)
    assert m, out.stdout + out.stderr
    return m.group(1)


def wait_for(head, job, pred, timeout=240):
    deadline = time.monotonic() + timeout
    while True:
        st = cli("status", "--job", job, "--address", head.url)
        assert st.returncode == 0, st.stdout + st.stderr
        if pred(st):
            return st
        if job_state(st) in ("FAILED", "STOPPED") or time.monotonic() > deadline:
            logs = cli("logs", "--job", job, "--address", head.url).stdout
            pytest.fail(
                f"job {job} ended up {job_state(st)}:\n{st.stdout}\n{st.stderr}\n--- driver log ---\n{logs[-4000:]}"
            )
        time.sleep(2)


def tiny(name: str, **train) -> dict:
    m = small_matrix(name=name)
    m["train"].update({"max_steps": 3, "eval_steps": 3, "batch_size": 8, **train})
    m["matrix"]["lora_rank"] = [4]
    return m


@pytest.fixture(scope="module")
def head():
    h = Head(NO_AUTH)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A matrix in a folder with a space in its name, its train data one level up and held-out data beside it."""
    root = tmp_path_factory.mktemp("proj")
    (root / "data").mkdir()
    (root / "mat rices").mkdir()
    for path, rows in (
        (root / "data" / "train.jsonl", letters_task(32, 0.5, split="train")),
        (root / "mat rices" / "heldout.jsonl", letters_task(16, -0.3, split="heldout")),
    ):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = tiny("shipped")
    m["data"].update(train="../data/train.jsonl", heldout="heldout.jsonl")
    (root / "mat rices" / "m.yaml").write_text(yaml.safe_dump(m, sort_keys=False, allow_unicode=True))
    return root


@pytest.fixture(scope="module")
def finished(head, project):
    t0 = time.monotonic()
    sub = ablate("submit", "mat rices/m.yaml", "--address", head.url, "--results", str(project / "res"), cwd=project)
    job = job_id(sub)
    # --follow streams the driver's log while the job runs and returns when it ends
    follow = ablate("logs", "--job", job, "--follow", "--address", head.url, timeout=300)
    st = wait_for(head, job, lambda st: job_state(st) == "SUCCEEDED", timeout=60)
    return job, sub, st, follow, time.monotonic() - t0


def test_submit_ships_matrix_and_data_and_the_job_trains_every_cell(head, project, finished):
    job, sub, st, follow, secs = finished
    res = project / "res" / "shipped"
    assert "→ results " + str(res) in sub.stdout and sub.stderr.strip() == ""
    assert st.stdout.count("done") >= 2 and "2 done" in st.stdout, st.stdout
    info = head.client().get_job_info(job)
    assert info.metadata["ablate_results"] == str(res) and info.metadata["ablate_matrix"] == "shipped"
    # The entrypoint is fixed and quoted; code and files travel as uploaded packages, not local paths.
    assert info.entrypoint == (
        f"python -m ablate.cluster.envcheck && python -m ablate run 'mat rices/m.yaml' --results {project / 'res'}"
    )
    assert info.runtime_env["working_dir"].startswith("gcs://")
    assert all(p.startswith("gcs://") for p in info.runtime_env["py_modules"])
    assert info.runtime_env["env_vars"]["ABLATE_CLIENT_PYTHON"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    rep = cli("report", res)
    assert rep.returncode == 0, rep.stderr
    assert ("Switch from dpo r4" in rep.stdout or "Keep dpo r4" in rep.stdout) and "held-out" in rep.stdout
    print(f"submit → SUCCEEDED in {secs:.0f}s")


def test_logs_print_the_driver_output(head, finished):
    job, follow = finished[0], finished[3]
    assert follow.returncode == 0, follow.stderr
    assert "Running entrypoint" in follow.stdout and "held-out acc" in follow.stdout and "report.md" in follow.stdout
    # The driver is not on a terminal: its progress is plain lines, no spinner frames or cursor movement.
    assert "progress: 0/2 done, 0 running, 2 pending, 0 failed" in follow.stdout
    assert not re.search("[\r\u2800-\u28ff]", follow.stdout) and "\x1b[2K" not in follow.stdout
    for args in ((), ("--follow",)):  # follow on a finished job streams the whole log and returns
        out = cli("logs", "--job", job, "--address", head.url, *args)
        assert out.returncode == 0, out.stderr
        assert "shipped" in out.stdout and "held-out acc" in out.stdout and "Traceback" not in out.stdout


def test_cancel_stops_the_job_and_keeps_finished_cells(head, tmp_path):
    m = tiny("cancelme")
    del m["train"]["max_steps"]
    m["train"].update(eval_steps=10_000, logging_steps=50)
    m["matrix"]["objective"] = ["dpo"]
    m["matrix"]["epochs"] = [1, 1000]  # one quick cell, one that would run for a long time
    m["decision"]["baseline"] = {"objective": "dpo", "epochs": 1}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    job = job_id(cli("submit", tmp_path / "c.yaml", "--address", head.url, "--results", tmp_path / "res"))
    wait_for(head, job, lambda st: "1 done" in st.stdout, timeout=300)
    out = cli("cancel", "--job", job, "--address", head.url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"job {job}: STOPPED" in out.stdout and "kept" in out.stdout
    assert str(head.client().get_job_status(job)) == "STOPPED"
    cells = tmp_path / "res" / "cancelme" / "cells"
    done = [d for d in cells.iterdir() if (d / "DONE").is_file()]
    assert len(done) == 1 and json.loads((done[0] / "cell.json").read_text())["status"] == "done"
    again = cli("cancel", "--job", job, "--address", head.url)
    assert again.returncode == 0 and "already STOPPED" in again.stdout


def test_invalid_or_oversized_matrix_submits_nothing(head, tmp_path):
    before = len(head.client().list_jobs())
    bad = small_matrix()
    bad["objectives"]["dpo"]["gamma"] = 0.5
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    out = cli("submit", tmp_path / "bad.yaml", "--address", head.url, "--results", tmp_path / "r")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "problem(s)" in out.stderr and "bad.yaml" in out.stderr and "objectives.dpo.gamma" in out.stderr

    big = small_matrix()
    with open(tmp_path / "big.jsonl", "wb") as f:  # sparse: 101 MB on paper, nothing on disk
        f.truncate(101 * 1000**2)
    big["data"]["train"] = "big.jsonl"
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(big))
    out = cli("submit", tmp_path / "big.yaml", "--address", head.url, "--results", tmp_path / "r")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "shared storage" in out.stderr and "URI" in out.stderr and "101.0 MB" in out.stderr

    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(small_matrix()))  # storage: results (relative)
    out = cli("submit", tmp_path / "ok.yaml", "--address", head.url)
    assert out.returncode == 2 and "relative" in out.stderr and "--results" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert len(head.client().list_jobs()) == before


def test_user_errors_are_one_line(head, tmp_path):
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(small_matrix()))
    dead = f"http://127.0.0.1:{free_port()}"
    cases = [
        (("submit", tmp_path / "ok.yaml", "--address", dead, "--results", "/tmp/x", "--wait", "0"), "cannot connect"),
        (("submit", tmp_path / "ok.yaml", "--address", head.url, "--wait", "soon"), "--wait: 'soon' is not a duration"),
        (("status", "--job", "raysubmit_nope", "--address", dead), "cannot connect"),
        (("status", "--job", "raysubmit_nope", "--address", head.url), "no job 'raysubmit_nope'"),
        (("logs", "--job", "raysubmit_nope", "--address", head.url), "no job"),
        (("cancel", "--job", "../../api/jobs", "--address", head.url), "not a Ray job id"),
        (("status", "--job", "x", "--address", "ray://127.0.0.1:10001"), "not a Ray dashboard URL"),
        (("logs", "--job", "x"), "no Ray dashboard address"),
    ]
    for args, msg in cases:
        out = cli(*args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert msg in out.stderr and len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
        assert "Traceback" not in out.stdout + out.stderr
    out = cli("status", "--job", "x", RAY_ADDRESS="auto")  # RAY_ADDRESS that is not a dashboard URL
    assert out.returncode == 2 and "RAY_ADDRESS" in out.stderr and "http" in out.stderr
    out = cli("status", "--job", "raysubmit_nope", RAY_ADDRESS=head.url)  # ...and one that is
    assert out.returncode == 2 and "no job" in out.stderr
    out = cli("status", "--job", "raysubmit_nope", "--address", head.url, RAY_ADDRESS=dead)  # --address wins
    assert out.returncode == 2 and "no job" in out.stderr
    # a submission through the real entry point, from the matrix's folder, is refused just the same
    out = ablate("submit", "ok.yaml", "--address", dead, "--results", "/tmp/x", "--wait", "0", cwd=tmp_path)
    assert out.returncode == 2 and "cannot connect" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr
    # A cluster that refuses connections may still be starting: submit retries for --wait, saying so once.
    t0 = time.monotonic()
    out = cli("submit", tmp_path / "ok.yaml", "--address", dead, "--results", "/tmp/x", "--wait", "4s")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 2 and time.monotonic() - t0 >= 3, out.stderr
    assert lines[0].startswith("waiting up to 4 s for the Ray cluster at") and "connection refused" in lines[0]
    assert "cannot connect" in lines[1]


def test_ray_version_comparison():
    msg = check_ray_versions("2.60.0", "2.59.1", "the cluster at http://h:8265")
    assert "2.60.0" in msg and "2.59.1" in msg and "ray[default]==2.59.1" in msg and "\n" not in msg
    assert check_ray_versions("2.60.0", "2.60.3") is None
    assert check_ray_versions("2.60.0", "3.0.0.dev0") is not None
    assert "cannot read" in check_ray_versions("2.60.0", "nonsense")


def test_python_version_check_inside_the_job(monkeypatch, capsys):
    monkeypatch.delenv("ABLATE_CLIENT_PYTHON", raising=False)
    check_client_versions()  # not inside a submitted job: nothing to check
    monkeypatch.setenv("ABLATE_CLIENT_PYTHON", f"{sys.version_info.major}.{sys.version_info.minor}")
    check_client_versions()
    monkeypatch.setenv("ABLATE_CLIENT_PYTHON", "3.7")
    with pytest.raises(SystemExit) as e:
        check_client_versions()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Python version mismatch" in err and "3.7" in err and f"{sys.version_info.minor}" in err


def test_submit_waits_for_a_starting_cluster_and_token_auth_is_used_and_never_shown(tmp_path):
    token = secrets.token_hex(32)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    m = tiny("authed")
    m["matrix"]["objective"] = ["dpo"]
    m["decision"]["baseline"] = {"objective": "dpo"}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(m))
    args = ("submit", tmp_path / "a.yaml", "--address", url, "--results", tmp_path / "res")
    good = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    # Submitted before the head runs (as right after `ray start`): it says once that it waits, then submits.
    early = subprocess.Popen(
        [sys.executable, "-m", "ablate", *map(str, args), "--wait", "240s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=good,
    )
    h = None
    try:
        first = early.stderr.readline()  # the event: it found nobody there and is waiting
        assert first.startswith(f"waiting up to 240 s for the Ray cluster at {url}") and "refused" in first, first
        h = Head({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, dashboard_port=port)
        out, rest = early.communicate(timeout=300)
        assert early.returncode == 0 and rest.strip() == "", rest
        outs = [subprocess.CompletedProcess(args, 0, out, first + rest)]
        job = job_id(outs[0])

        # Ray reads the auth mode and token once per process (and an in-process ray.init elsewhere in the suite
        # would have set them), so every case runs the real command line in a fresh process.
        outs += [ablate(*args), ablate(*args, env=base_env(**{**NO_AUTH, "RAY_AUTH_TOKEN": token}))]
        outs.append(ablate(*args, env=base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))))
        for out, msg in zip(outs[1:], ("requires token authentication", "RAY_AUTH_MODE=token", "rejected")):
            assert out.returncode == 2 and msg in out.stderr, out.stderr  # not retried: waiting cannot fix it
            assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
        out = ablate("cancel", "--job", job, "--address", url, env=good)
        outs.append(out)
        assert out.returncode == 0 and f"job {job}" in out.stdout, out.stdout + out.stderr
        for out in outs:
            assert token not in out.stdout + out.stderr and "Bearer" not in out.stdout + out.stderr
        info = requests.get(f"{url}/api/jobs/{job}", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
        assert token not in json.dumps(info)  # not in the job's runtime env or metadata either
    finally:
        early.kill()
        if h is not None:
            h.stop()


def test_submit_retries_only_what_a_starting_cluster_answers():
    from ablate.cluster.jobclient import JobError, parse_wait, retrying

    calls = []

    def busy_twice():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise JobError(
                "the Ray dashboard at http://h:8265 refused submit_job: Request failed with status code 503: "
                "No available agent to submit job, please try again later."
            )
        return "raysubmit_1"

    said = []
    assert retrying(busy_twice, 30, said.append, "the Ray cluster at http://h:8265") == "raysubmit_1"
    assert len(said) == 1 and "job agent is not ready" in said[0]
    assert calls[2] - calls[0] >= 2.9  # backoff: 1 s, then 2 s

    def refused_auth():
        raise JobError("the Ray cluster at http://h:8265 requires token authentication and no token was sent")

    with pytest.raises(JobError, match="requires token"):
        retrying(refused_auth, 30, said.append, "x")
    assert len(said) == 1  # an error that waiting cannot fix is raised at once
    assert [parse_wait(w) for w in ("60s", "2m", "1m30s", "0", "15", None)] == [60, 120, 90, 0, 15, 60]


def test_the_environment_check_lists_every_dependency():
    import tomllib

    from ablate.cluster.envcheck import REQUIRED, problems

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {pip.split("[")[0] for _, pip in REQUIRED} == {re.split(r"[<>=\[ ;]", d)[0].lower() for d in deps}
    assert problems() == []  # this interpreter can run ablate


def test_a_cluster_python_without_ablates_dependencies_fails_in_one_line(head, tmp_path):
    from ablate.cluster.jobs import META_MATRIX, META_RESULTS, bundle, entrypoint, runtime_env

    # A `python` with nothing installed first on the PATH of the job, as on a head started from a virtual
    # environment that is not on its PATH.
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(tiny("bare")))
    b = bundle(tmp_path / "m.yaml", str(tmp_path / "res"))
    with tempfile.TemporaryDirectory(prefix="ablate-job-") as wd:
        shutil.copyfile(tmp_path / "m.yaml", Path(wd) / b.matrix_rel)
        env = runtime_env(b, wd)  # exactly what `ablate submit` sends, plus the PATH
        env["env_vars"]["PATH"] = f"{bare / 'bin'}{os.pathsep}{head.env['PATH']}"
        job = head.client().submit_job(
            entrypoint=entrypoint(b), runtime_env=env, metadata={META_RESULTS: b.results, META_MATRIX: b.spec.name}
        )
    deadline = time.monotonic() + 240
    while str(head.client().get_job_status(job)) not in ("FAILED", "SUCCEEDED", "STOPPED"):
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(1)
    st = cli("status", "--job", job, "--address", head.url)
    assert job_state(st) == "FAILED", st.stdout
    line = st.stdout.splitlines()[1].strip()  # right under the job's state
    assert line.startswith(f"ablate: the cluster's python, {bare / 'bin' / 'python'}"), st.stdout
    for needed in ("lacks ablate's dependencies", "typer", "torch", "transformers", "ray start", "docker/README.md"):
        assert needed in line, (needed, line)
    logs = cli("logs", "--job", job, "--address", head.url).stdout
    assert line in logs and "Traceback" not in logs and "ModuleNotFoundError" not in logs


def test_bundle_layout_quoting_and_cluster_only_sources(project, tmp_path):
    import shlex

    from ablate.cluster.jobs import bundle, entrypoint, results_location, validate
    from ablate.errors import UserError

    b = bundle(project / "mat rices" / "m.yaml", "/shared/ablate/")
    assert set(b.files) == {"mat rices/m.yaml", "mat rices/heldout.jsonl", "data/train.jsonl"}
    assert b.matrix_rel == "mat rices/m.yaml" and b.results == "/shared/ablate/shipped" and not b.remote
    validate(project / "mat rices" / "m.yaml", b)
    assert results_location("s3://bucket/runs/", "x") == "s3://bucket/runs/x"

    # A hostile file name stays one argument; nothing from the matrix reaches the shell unquoted.
    evil = tmp_path / "a b" / "$(touch pwned); x.yaml"
    evil.parent.mkdir()
    evil.write_text(yaml.safe_dump(small_matrix()))
    b = bundle(evil, "/r o/o't")
    assert shlex.split(entrypoint(b)) == [
        "python",
        "-m",
        "ablate.cluster.envcheck",
        "&&",
        "python",
        "-m",
        "ablate",
        "run",
        "$(touch pwned); x.yaml",
        "--results",
        "/r o/o't",
    ]

    # Data by URI and a model directory that exists only on the cluster: not shipped, not checked here.
    m = small_matrix()
    m["model"]["path"] = "/cluster/models/llama"
    m["data"]["train"] = "s3://bucket/train.jsonl"
    (tmp_path / "remote.yaml").write_text(yaml.safe_dump(m))
    b = bundle(tmp_path / "remote.yaml", "gs://bucket/results")
    assert b.remote == {"model.path", "data.train"} and set(b.files) == {"remote.yaml"}
    assert any("s3://bucket/train.jsonl" in n for n in b.notes) and any("/cluster/models/llama" in n for n in b.notes)
    validate(tmp_path / "remote.yaml", b)
    m["data"]["heldout"] = "missing.jsonl"  # a relative file must be here to be shipped
    (tmp_path / "remote.yaml").write_text(yaml.safe_dump(m))
    with pytest.raises(UserError, match="missing.jsonl: no such file"):
        validate(tmp_path / "remote.yaml", bundle(tmp_path / "remote.yaml", "/r"))
