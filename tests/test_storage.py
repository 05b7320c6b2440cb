"""Results on shared storage: a local path, a file:// URI, and an S3-compatible object store (moto's server
mode on loopback, through pyarrow.fs.S3FileSystem) — run, resume and report, plus the store's own rules."""

import json
import os
import time

import pandas as pd
import pytest
import yaml

from ablate.errors import UserError
from ablate.results.lock import ResultsLock
from ablate.results.storage import DONE, Store, cell_states, join, publish_cell, write_running

from conftest import ROOT, ablate_cli, small_matrix
from conftest import ablate_cli as ablate
from s3server import FAKE_AWS_ENV, s3_filesystem, s3_server, s3_uri


@pytest.fixture(scope="module")
def s3():
    old = {k: os.environ.get(k) for k in FAKE_AWS_ENV}
    os.environ.update(FAKE_AWS_ENV)  # the Ray workers started by the CLI inherit these; never real keys
    try:
        with s3_server() as endpoint:
            s3_filesystem(endpoint).create_dir("bucket")
            yield endpoint
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_join_keeps_a_uri_query_last():
    assert join("s3://b/x?endpoint_override=h:1&scheme=http", "t") == "s3://b/x/t?endpoint_override=h:1&scheme=http"
    assert join("results/", "t") == "results/t"


def test_run_resume_report_on_s3(tmp_path, s3):
    m = small_matrix()
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m))
    root = s3_uri(s3, "bucket/ablate")
    # First run: the SimPO cell hits bad data mid-training; the DPO cell finishes, straight into the bucket.
    r = ablate("run", p, "--results", root, ABLATE_TEST_RAISE_AT="simpo@2")
    assert r.returncode == 1, r.stderr
    assert not (ROOT / "results" / "t").exists() and not (tmp_path / "results").exists()  # nothing local
    fs = s3_filesystem(s3)
    store = Store(join(root, "t"))
    states = cell_states(store)
    assert sorted(states.values()) == ["done", "failed"]
    done = next(c for c, s in states.items() if s == "done")
    keys = {
        i.path.rsplit("/", 1)[-1]
        for i in fs.get_file_info(
            __import__("pyarrow.fs", fromlist=["FileSelector"]).FileSelector(
                f"bucket/ablate/t/cells/{done}", recursive=True
            )
        )
    }
    assert {
        "cell.json",
        "pairs.parquet",
        "train_log.jsonl",
        "eval_log.jsonl",
        DONE,
        "adapter_model.safetensors",
    } <= keys
    before = store.read_bytes(f"cells/{done}/pairs.parquet")

    # Resume from the laptop side: only the failed cell trains, the done one is untouched.
    r = ablate("resume", p, "--results", root)
    assert r.returncode == 0, r.stderr
    assert "training 1 cell(s)" in r.stdout
    assert store.read_bytes(f"cells/{done}/pairs.parquet") == before

    # Report straight from the bucket: tables and report.md land there too.
    r = ablate("report", join(root, "t"))
    assert r.returncode == 0, r.stderr
    assert "Switch" in r.stdout or "Keep" in r.stdout
    cells = pd.read_parquet(__import__("io").BytesIO(store.read_bytes("cells.parquet")))
    assert (cells["status"] == "done").all() and len(cells) == 2
    assert "# " in store.read_bytes("report.md").decode()
    assert not store.listdir("running") and not store.listdir("checkpoints")


def test_run_and_report_on_file_uri(tmp_path, local_ray):
    import ablate

    m = small_matrix()
    m["matrix"]["objective"] = ["simpo"]
    m["decision"]["baseline"] = {"objective": "simpo", "lora_rank": 4}
    m["matrix"]["lora_rank"] = [4, 8]
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m))
    root = f"file://{tmp_path}/shared"
    cells, _ = ablate.run(p, results=root)  # the Python API, on the suite's Ray
    assert (cells["status"] == "done").all() and len(cells) == 2
    assert (tmp_path / "shared" / "t" / "cells.parquet").is_file() and (
        tmp_path / "shared" / "t" / "report.md"
    ).is_file()
    r = ablate_cli("status", f"{root}/t")
    assert r.returncode == 0 and "2 done" in r.stdout


def test_stale_staging_is_cleaned_on_the_next_run_and_finished_cells_are_untouched(tmp_path):
    from ablate.cluster.runner import run_plan
    from ablate.matrix.plan import make_plan

    from conftest import train_directly

    m = small_matrix()
    m["matrix"]["objective"] = ["simpo"]
    m["decision"]["baseline"] = {"objective": "simpo"}
    m["train"]["max_steps"] = 2
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m))
    plan = make_plan(p, results=tmp_path / "r")
    [cell] = plan.cells
    assert train_directly(plan, cell)["status"] == "done"
    cells = tmp_path / "r" / "t" / "cells"
    before = {f: f.read_bytes() for f in (cells / cell.id).rglob("*") if f.is_file()}
    for name in (f".tmp-{cell.id}-0badf00d", ".tmp-0123456789ab-deadbeef"):  # as interrupted workers leave them
        (cells / name / "adapter").mkdir(parents=True)
        (cells / name / "train_log.jsonl").write_text("{}\n")
    (cells / "notes.txt").write_text("mine")  # anything not named .tmp-* is not ablate's to remove

    assert run_plan(plan) == []  # nothing to train: no Ray is started, the leftovers are cleaned all the same
    assert sorted(p.name for p in cells.iterdir()) == sorted([cell.id, "notes.txt"])
    assert {f: f.read_bytes() for f in (cells / cell.id).rglob("*") if f.is_file()} == before


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs of its own for the results, so that it can really fill up or turn read-only mid-run."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"needs permission to mount a small filesystem: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _tree(d):
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("trouble", ["full", "read-only"])
def test_results_disk_full_or_read_only_mid_run_stops_cleanly_and_keeps_finished_cells(
    tmp_path, small_disk, local_ray, trouble
):
    import subprocess
    import threading

    from ablate.cluster.runner import RunStopped, run_plan
    from ablate.matrix.plan import make_plan

    m = small_matrix(name="disk")
    m["matrix"] = {"objective": ["simpo"], "lora_rank": [4, 8, 16], "seed": [0]}
    m["decision"]["baseline"] = {"objective": "simpo", "lora_rank": 4}
    m["train"].update(batch_size=8, max_steps=16, checkpoint_every_steps=2, eval_steps=8)
    # One cell at a time (unpacked: a pack publishes its cells together): the trouble lands while the next trains.
    m["resources"] = {"cpus_per_cell": 2, "pack": "off"}
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m))
    plan = make_plan(p, results=small_disk)
    res = small_disk / "disk"
    snapshot = {}

    def make_trouble():
        deadline = time.monotonic() + 300
        while not list(res.glob("cells/*/DONE")):
            assert time.monotonic() < deadline, "no cell finished"
            time.sleep(0.05)
        for d in res.glob("cells/*/DONE"):
            snapshot[d.parent.name] = _tree(d.parent)
        if trouble == "full":
            with open(small_disk / "filler", "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 2**20)
                        f.flush()
                except OSError:
                    pass
        else:  # a short write may be in flight at this moment: the remount waits for it
            while subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True).returncode:
                assert time.monotonic() < deadline, "could not remount read-only"
                time.sleep(0.05)

    t = threading.Thread(target=make_trouble, daemon=True)
    t.start()
    with pytest.raises(RunStopped) as stopped:
        run_plan(plan)
    t.join(timeout=60)
    msg = str(stopped.value)
    assert f"cannot write the results at {res}" in msg
    assert ("No space left on device" if trouble == "full" else "Read-only file system") in msg, msg
    assert stopped.value.code == 1 and len(snapshot) in (1, 2), snapshot

    # Nothing half-published: every cell folder is finished and complete, none was recorded failed.
    published = [d for d in (res / "cells").iterdir() if not d.name.startswith(".tmp-")]
    assert sorted(d.name for d in published if (d / "DONE").is_file()) == sorted(d.name for d in published)
    for cid, files in snapshot.items():
        assert _tree(res / "cells" / cid) == files

    # The disk is fixed: the next run trains the rest and never touches what was finished.
    if trouble == "full":
        (small_disk / "filler").unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    out = run_plan(make_plan(p, results=small_disk))
    assert [o["status"] for o in out] == ["done"] * (3 - len(snapshot))
    for cid, files in snapshot.items():
        assert _tree(res / "cells" / cid) == files
    assert not list((res / "cells").glob(".tmp-*")) and not list((res / "running").glob("*"))


def test_object_store_cell_states_publish_and_lease_lock(tmp_path, s3):
    store = Store(s3_uri(s3, "bucket/unit"))
    staging = tmp_path / "stage"
    (staging / "adapter").mkdir(parents=True)
    (staging / "cell.json").write_text(json.dumps({"status": "done"}))
    (staging / "adapter" / "w.bin").write_bytes(b"\0" * 10)
    assert cell_states(store, ["abc"]) == {"abc": "pending"}
    write_running(store, "abc", {"pid": 1})
    assert cell_states(store, ["abc"]) == {"abc": "running"}
    assert publish_cell(store, "abc", staging)
    store.delete("running/abc.json")
    assert cell_states(store, ["abc"]) == {"abc": "done"}
    assert store.read_bytes("cells/abc/adapter/w.bin") == b"\0" * 10
    # A second publisher of the same cell does not overwrite the finished one.
    (staging2 := tmp_path / "stage2").mkdir()
    (staging2 / "cell.json").write_text("{}")
    assert not publish_cell(store, "abc", staging2)
    assert json.loads(store.read_bytes("cells/abc/cell.json")) == {"status": "done"}

    # Lease lock: a live lease refuses a second driver; a stale one (no heartbeat) is taken over.
    first = ResultsLock(store).acquire()
    try:
        with pytest.raises(UserError, match="in use by another ablate run"):
            ResultsLock(store).acquire()
    finally:
        first.release()
    assert not store.exists("LOCK")
    store.write_text("LOCK", json.dumps({"pid": 9, "host": "gone", "token": "x", "heartbeat": time.time() - 3600}))
    ResultsLock(store).acquire().release()
