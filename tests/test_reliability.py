"""Failure tests on real Ray with the real trainer: a cell that raises, a killed driver, Ctrl-C, a second
run on the same results, a lost worker, OOM, mid-cell checkpoints. A lost node (and random worker kills on a
two-node cluster) is in test_chaos.py; fail fast in test_end_to_end.py; a full or read-only disk in
test_storage.py.

Faults are injected through test hooks in ablate/worker/faults.py (ABLATE_TEST_*), read from the environment
by the Ray workers; nothing of Ray or the trainer is mocked. Every wait is on an event (a file, a heartbeat,
a process exit) with a generous explicit deadline, never on a guess of how long something takes.
"""

import hashlib
import json
import re
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ablate.cluster.runner import run_plan
from ablate.matrix.plan import make_plan
from ablate.results.collect import collect

from conftest import ablate_cli as ablate
from conftest import ablate_start as start
from conftest import small_matrix, train_directly


def slow_matrix(**train) -> dict:
    """Four cells long enough (tens of steps) to be interrupted in the middle."""
    m = small_matrix(name="rel")
    m["data"]["train"]["n"] = 32
    m["train"].update(
        {"batch_size": 8, "max_steps": 24, "logging_steps": 5, "eval_steps": 20, "checkpoint_every_steps": 5, **train}
    )
    m["matrix"]["lora_rank"] = [4, 8]
    # One cell at a time on a 2-core machine: room to interrupt; cells unpacked, so each holds at its own gate
    # (packed cells stop and resume together: tests/test_pack.py).
    m["resources"] = {"cpus_per_cell": 2, "pack": "off"}
    return m


def write(tmp_path: Path, m: dict) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m, sort_keys=False))
    return p


def wait_for(cond, timeout: float = 240, what: str = "condition", proc=None):
    """Poll `cond` until it holds (a generous deadline); fail at once, with its stderr, if `proc` ended first."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}:\n{proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def training(res: Path, min_step: int = 1) -> dict | None:
    """The heartbeat of a cell that has trained `min_step` steps, if one has."""
    for f in (res / "running").glob("*.json"):
        try:
            info = json.loads(f.read_text())
        except (OSError, ValueError):  # replaced while we read it
            continue
        if (info.get("step") or 0) >= min_step:
            return info
    return None


def staging(res: Path) -> list[Path]:
    return list((res / "cells").glob(".tmp-*"))


def done_cells(res: Path) -> list[Path]:
    return sorted(d for d in (res / "cells").glob("*") if (d / "DONE").is_file())


def tree_hashes(d: Path) -> dict[str, str]:
    return {
        str(f.relative_to(d)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.rglob("*")) if f.is_file()
    }


def summary(status_stdout: str) -> str:
    """The last line of `ablate status`: counts per state, e.g. '2 pending, 1 running, 1 done'."""
    return status_stdout.strip().splitlines()[-1]


def assert_complete(cell: Path) -> None:
    for name in (
        "cell.json",
        "train_log.jsonl",
        "eval_log.jsonl",
        "pairs.parquet",
        "adapter/adapter_model.safetensors",
    ):
        assert (cell / name).is_file(), f"{cell.name} has DONE but no {name}"
    assert json.loads((cell / "cell.json").read_text())["status"] == "done"


def test_cell_that_raises_is_recorded_others_finish_and_resume_reruns_only_it(tmp_path, local_ray):
    m = small_matrix()
    m["matrix"]["lora_rank"] = [4, 8]
    m["resources"] = {"fail_fast": False}  # `off` keeps running after identical failures: the other cells finish
    p = write(tmp_path, m)
    res = tmp_path / "r" / "t"
    r = ablate("run", p, "--results", tmp_path / "r", ABLATE_TEST_RAISE_AT="simpo@2")
    assert r.returncode == 1, r.stderr
    assert "2 cell(s) failed" in r.stderr and "simpo r4" in r.stderr and "simpo r8" in r.stderr
    assert "Traceback" not in r.stderr
    cells = pd.read_parquet(res / "cells.parquet")
    assert sorted(cells["status"]) == ["done", "done", "failed", "failed"]
    failed = cells[cells["status"] == "failed"]
    assert set(failed["objective"]) == {"simpo"} and set(failed["error_type"]) == {"ValueError"}
    for cid in failed["cell_id"]:
        text = (res / "cells" / cid / "error.txt").read_text()
        assert "Traceback" in text and "simulated bad batch at step 2" in text
    before = {d.name: tree_hashes(d) for d in done_cells(res)}

    # Resume (the same run_plan as `ablate resume`, on the suite's Ray): only the two failed cells train.
    out = run_plan(make_plan(p, results=tmp_path / "r"))
    assert sorted(o["id"] for o in out) == sorted(failed["cell_id"]) and all(o["status"] == "done" for o in out)
    cells, _ = collect(res)
    assert (cells["status"] == "done").all() and cells["cell_id"].is_unique
    for name, hashes in before.items():
        assert tree_hashes(res / "cells" / name) == hashes  # done cells untouched, byte for byte


def test_second_run_refuses_and_killed_driver_resumes_without_loss(tmp_path, local_ray):
    p = write(tmp_path, slow_matrix())
    res = tmp_path / "r" / "rel"
    gate = tmp_path / "gate"
    gate.touch()  # cells hold after each step while it exists: the run cannot finish before the kill
    a = start("run", p, "--results", tmp_path / "r", ABLATE_TEST_GATE=gate)
    try:
        wait_for(
            lambda: (res / "LOCK").is_file() and f'"pid": {a.pid}' in (res / "LOCK").read_text(),
            what="the lock",
            proc=a,
        )
        # Another run on the same results directory must refuse, before any training, and change nothing.
        b = ablate("run", p, "--results", tmp_path / "r")
        assert b.returncode == 2 and "in use by another ablate run" in b.stderr and "Traceback" not in b.stderr
        assert f"pid {a.pid}" in b.stderr
        held = wait_for(lambda: next((f.stem for f in (res / "running").glob("*.json")), None), what="a cell", proc=a)
        Path(f"{gate}-{held}").touch()  # that cell alone goes on; the next one holds at its first step
        wait_for(lambda: len(done_cells(res)) >= 1, what="a finished cell", proc=a)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
    finally:
        a.kill()
        gate.unlink()  # a worker outliving its driver goes on, and must stop itself once the resume holds the lock
    for cell in done_cells(res):
        assert_complete(cell)  # nothing counted done without its full outputs
    before = {d.name: tree_hashes(d) for d in done_cells(res)}
    assert len(before) < 4, "the driver finished before it was killed; the test proves nothing"

    r = ablate("status", res)
    assert r.returncode == 0 and "done" in summary(r.stdout)  # a killed run leaves a readable results directory
    (res / "cells" / ".tmp-leftover-0000").mkdir(exist_ok=True)  # as a worker killed mid-cell leaves it

    # Resources are not part of a cell's identity: resume (as `ablate resume` does, on the suite's Ray) may run
    # the rest two at a time.
    m = slow_matrix()
    m["resources"] = {"cpus_per_cell": 1}
    p = write(tmp_path, m)
    out = run_plan(make_plan(p, results=tmp_path / "r"))
    assert len(out) == 4 - len(before) and all(o["status"] == "done" for o in out)
    assert not staging(res)  # what the killed run was staging is gone; finished cells are checked below
    cells, pairs = collect(res)
    assert len(cells) == 4 and cells["cell_id"].is_unique and (cells["status"] == "done").all()
    assert not pairs.duplicated(["cell_id", "pair"]).any() and len(pairs) == 4 * 32
    for name, hashes in before.items():
        assert tree_hashes(res / "cells" / name) == hashes
    assert not list((res / "running").glob("*")) and not list((res / "checkpoints").glob("*"))


def test_a_cell_outliving_its_killed_driver_stops_writing_once_another_run_holds_the_lock(tmp_path):
    # A worker of a SIGKILLed driver can train on for seconds; once a new run holds the lock it must write no
    # marker (the new run's `running/` would show a ghost) and end as a stopped cell.
    from ablate.results.lock import ResultsLock
    from ablate.results.storage import Store
    from ablate.worker.cell import Heartbeat

    store = Store(str(tmp_path))
    with ResultsLock(store) as old:
        beat = Heartbeat(store, "c0ffee", {"host": "h"}, old.token).start()
        time.sleep(1.5)
        assert not beat.orphaned and (tmp_path / "running" / "c0ffee.json").is_file()
    with ResultsLock(store):  # the killed driver's flock is gone; a resume takes the lock and clears markers
        (tmp_path / "running" / "c0ffee.json").unlink()
        deadline = time.time() + 10
        while not beat.orphaned and time.time() < deadline:
            beat.progress(3, 10, {"loss": 0.5})
            time.sleep(0.2)
        assert beat.orphaned and beat.stop_requested
        (tmp_path / "running" / "c0ffee.json").unlink(missing_ok=True)  # as the new run does when it ends
        beat.progress(4, 10, {"loss": 0.4})
        time.sleep(1.5)
        assert not (tmp_path / "running" / "c0ffee.json").exists()
        (tmp_path / "running" / "c0ffee.json").write_text("{}")  # the new run's own marker for the same cell
        beat.stop()
        assert (tmp_path / "running" / "c0ffee.json").read_text() == "{}"


def test_ctrl_c_cancels_running_cells_keeps_finished_and_hints_resume(tmp_path):
    p = write(tmp_path, slow_matrix())
    res = tmp_path / "r" / "rel"
    gate = tmp_path / "gate"
    gate.touch()  # cells hold after their first step while this file exists
    a = start("run", p, "--results", tmp_path / "r", ABLATE_TEST_GATE=gate, ABLATE_PROGRESS_EVERY_S=0)
    try:
        # While a cell trains, status shows it running, with its step from the worker's heartbeat.
        wait_for(lambda: training(res), what="a cell holding at the gate after step 1", proc=a)
        r = ablate("status", res)
        assert r.returncode == 0 and summary(r.stdout).startswith("0 done, 1 running, 3 pending"), r.stdout
        assert "1/24" in r.stdout, r.stdout
        # Release that one cell only: the next one holds at its first step, so the run cannot finish (on a busy
        # machine the rest once did, before the signal came) and Ctrl-C always meets a running cell.
        held = next(f.stem for f in (res / "running").glob("*.json"))
        Path(f"{gate}-{held}").touch()
        wait_for(lambda: len(done_cells(res)) >= 1, what="a finished cell", proc=a)
        # Ctrl-C now, while the first cell's task is still returning: force-cancelling such a task aborted
        # Ray's core worker in the driver (exit 1, a C++ stack trace) instead of exit 130.
        a.send_signal(signal.SIGINT)
        wait_for(lambda: (res / "STOP").is_file(), what="the driver's STOP marker")  # it stays until the next run
        gate.unlink()  # the held cell, let go, sees STOP after its next step
        out, errs = a.communicate(timeout=120)
    finally:
        a.kill()
    assert a.returncode == 130, errs
    assert "ablate resume" in errs and "Traceback" not in errs, errs
    # Not a terminal: progress comes as plain lines (no spinner frames, no cursor movement), one of them with
    # the held cell's step, loss, margin and time from its heartbeat.
    assert re.search(r"^progress: 0/4 done, 1 running, 3 pending, 0 failed; \d+s elapsed; ETA estimating$", out, re.M)
    assert re.search(r"^  running \S+ r\d+ .*s0: step 1/24, loss \d\.\d{4}, margin [+-]\d\.\d{3}, \d+s$", out, re.M), (
        out
    )
    assert not re.search("[\r\x1b\u2800-\u28ff]", out)
    assert "Check failed" not in errs and "unexpected system state" not in errs and "*** " not in errs, errs
    kept = done_cells(res)
    assert 1 <= len(kept) < 4
    for cell in kept:
        assert_complete(cell)
    assert not staging(res)  # the cancelled cell dropped its staging folder itself
    assert not list((res / "running").glob("*.json"))
    r = ablate("status", res)
    s = summary(r.stdout)
    assert r.returncode == 0 and " 0 running" in s and "pending" in s and " 0 failed" in s, r.stdout


def test_oom_halves_micro_batch_with_same_effective_batch(tmp_path, local_ray, monkeypatch):
    m = small_matrix()
    m["matrix"]["objective"] = ["simpo"]
    m["decision"]["baseline"] = {"objective": "simpo"}
    m["train"].update(batch_size=4, max_steps=4)
    m["resources"] = {"max_oom_retries": 2}
    p = write(tmp_path, m)
    monkeypatch.setenv("ABLATE_TEST_OOM_ABOVE", "1")
    [row] = run_plan(make_plan(p, results=tmp_path / "oom"))
    monkeypatch.delenv("ABLATE_TEST_OOM_ABOVE")
    assert row["status"] == "done", row
    assert (row["micro_batch"], row["grad_accum"], row["oom_retries"]) == (1, 4, 2)

    # The same cell without OOMs, in-process: the same training up to float summation order.
    plan = make_plan(p, results=tmp_path / "plain")
    c = plan.cells[0]
    plain = train_directly(plan, c, plan.results.uri)
    assert (plain["micro_batch"], plain["grad_accum"], plain["oom_retries"]) == (4, 1, 0)
    assert row["heldout_margin"] == pytest.approx(plain["heldout_margin"], rel=1e-4, abs=1e-6)

    # Bounded: with one halving allowed, micro-batch 2 still "OOMs", and the cell fails with the reason.
    monkeypatch.setenv("ABLATE_TEST_OOM_ABOVE", "1")
    out = train_directly(plan, c, str(tmp_path / "bound"), max_oom_retries=1)
    assert out["status"] == "failed" and out["error_type"] == "OutOfMemoryError"
    assert "out of GPU memory at micro-batch 2 after 1 halving(s)" in out["error"]
    assert "OutOfMemoryError" in (tmp_path / "bound" / "cells" / c.id / "error.txt").read_text()


def _comparable(res: Path) -> dict:
    out = {}
    for d in done_cells(res):
        logs = [
            {k: v for k, v in json.loads(line).items()} for line in (d / "train_log.jsonl").read_text().splitlines()
        ]
        evals = (d / "eval_log.jsonl").read_text()
        out[d.name] = (logs, evals, pd.read_parquet(d / "pairs.parquet"))
    return out


def test_lost_worker_then_resume_from_checkpoint_equals_uninterrupted_run(tmp_path, local_ray, monkeypatch):
    m = slow_matrix(max_steps=12, checkpoint_every_steps=4)
    m["matrix"]["lora_rank"] = [4]
    m["resources"] = {"max_retries": 0}
    p = write(tmp_path, m)
    # Every worker dies at step 6 (after its step-4 checkpoint). With max_retries 0 Ray does not retry:
    # the cells are recorded failed as lost workers, with their checkpoints kept.
    monkeypatch.setenv("ABLATE_TEST_KILL_AT_STEP", "6")
    out = run_plan(make_plan(p, results=tmp_path / "k"))
    assert [o["status"] for o in out] == ["failed", "failed"], out
    assert all("Worker" in o["error_type"] or "Crash" in o["error_type"] or "Died" in o["error_type"] for o in out)
    assert len(list((tmp_path / "k" / "rel" / "checkpoints").glob("*.pt"))) == 2

    out = run_plan(make_plan(p, results=tmp_path / "k"))  # resume: a resumed cell is not killed again
    assert [(o["status"], o["resumed_from_step"]) for o in out] == [("done", 4), ("done", 4)], out
    monkeypatch.delenv("ABLATE_TEST_KILL_AT_STEP")

    # The uninterrupted run, in-process with the one torch thread a Ray worker of this matrix uses.
    import torch

    plan, threads = make_plan(p, results=tmp_path / "u"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for c in plan.cells:
            train_directly(plan, c, plan.results.uri)
    finally:
        torch.set_num_threads(threads)
    resumed, straight = _comparable(tmp_path / "k" / "rel"), _comparable(tmp_path / "u" / "rel")
    assert resumed.keys() == straight.keys() and len(resumed) == 2
    for cid in resumed:
        assert resumed[cid][0] == straight[cid][0]  # every logged training metric, step by step
        assert resumed[cid][1] == straight[cid][1]  # every held-out evaluation
        pd.testing.assert_frame_equal(resumed[cid][2], straight[cid][2])
