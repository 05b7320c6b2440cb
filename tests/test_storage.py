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

from conftest import ROOT, small_matrix
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


def test_run_and_report_on_file_uri(tmp_path):
    m = small_matrix()
    m["matrix"]["objective"] = ["simpo"]
    m["decision"]["baseline"] = {"objective": "simpo", "lora_rank": 4}
    m["matrix"]["lora_rank"] = [4, 8]
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m))
    root = f"file://{tmp_path}/shared"
    r = ablate("run", p, "--results", root)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "shared" / "t" / "cells.parquet").is_file()
    r = ablate("status", f"{root}/t")
    assert r.returncode == 0 and "2 done" in r.stdout


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
