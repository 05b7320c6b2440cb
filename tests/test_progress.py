"""Progress and failure bookkeeping without Ray: what the live view and `ablate status` compute from heartbeats
and finished cells (checked against hand computations), how the plain view bounds its rate, the masking that
makes two failures "the same", and `resources.fail_fast` as a matrix field."""

import io
import json
import time
from types import SimpleNamespace

import pytest
import yaml
from rich.console import Console

from ablate.cluster.runner import failure_signature
from ablate.errors import UserError
from ablate.live import RunView, summary_line
from ablate.matrix.yamlfile import load_matrix
from ablate.results.progress import RunProgress, duration, snapshot
from ablate.results.storage import Store, dump_json

from conftest import small_matrix


def cell(i):
    return SimpleNamespace(id=f"c{i:011d}", label=f"dpo r{4 * (i + 1)} β0.1 s0")


def beat(store, c, step, total, age=1.0, loss=0.6931, margin=0.0125, started_ago=65.0):
    now = time.time()
    info = {"step": step, "total_steps": total, "loss": loss, "margin": margin, "started": now - started_ago}
    store.write_text(f"running/{c.id}.json", json.dumps({**info, "heartbeat": now - age}))


def test_live_progress_counts_heartbeats_eta_and_grows_when_cells_are_added(tmp_path):
    store = Store(tmp_path / "r")
    cells = [cell(i) for i in range(4)]
    shown = []
    prog = RunProgress(store, shown.append, poll_s=0)
    beat(store, cells[1], 5, 20)
    beat(store, cells[2], 9, 20, age=3600)  # a heartbeat an hour old: its worker is gone, the cell is pending
    prog.add(cells, {cells[0].id: "done"})
    snap = shown[-1]
    assert snap.counts == {"done": 1, "running": 1, "pending": 2, "failed": 0} and snap.total == 4
    assert snap.eta_s is None and snap.line().endswith("ETA estimating")
    assert snap.running[0].line() == f"{cells[1].label}: step 5/20, loss 0.6931, margin +0.013, 1m05s"

    # A cell of this run finishes: 20 steps in 10 s of wall time (setup included) is 2 steps/s. Left: 15 steps
    # of the running cell and 20 of the one pending cell, at 2 steps/s with one cell training: 17.5 s.
    t0 = time.time()
    prog.finished({"id": cells[3].id, "status": "done", "steps": 20, "started_at": t0 - 10, "finished_at": t0})
    snap = prog.tick(force=True)
    assert snap.counts == {"done": 2, "running": 1, "pending": 1, "failed": 0}
    assert snap.eta_s == pytest.approx(17.5) and "ETA 18s" in snap.line()

    # More seeds after the first round: the total grows, known cells keep their state, the ETA grows with it.
    more = [cell(i) for i in range(4, 6)]
    prog.add([*cells, *more], {})
    snap = shown[-1]
    assert snap.total == 6 and snap.counts == {"done": 2, "running": 1, "pending": 3, "failed": 0}
    assert snap.eta_s == pytest.approx((15 + 3 * 20) / 2)
    prog.finished({"id": more[0].id, "status": "failed", "error_type": "ValueError", "error": "x"})
    assert shown[-1].counts["failed"] == 1


def test_status_snapshot_reads_heartbeats_and_finished_cells(tmp_path):
    store = Store(tmp_path / "r")
    cells = [cell(i) for i in range(3)]
    t0 = time.time()
    store.write_text(
        f"cells/{cells[0].id}/cell.json", dump_json({"steps": 30, "started_at": t0 - 20, "finished_at": t0})
    )
    beat(store, cells[1], 10, 30, loss=None, margin=None)
    snap = snapshot(
        store,
        [
            (cells[0].id, cells[0].label, "done"),
            (cells[1].id, cells[1].label, "running"),
            (cells[2].id, cells[2].label, "pending"),
        ],
    )
    # 1.5 steps/s: 20 steps left for the running cell and 30 for the pending one
    assert snap.eta_s == pytest.approx(50 / 1.5)
    assert summary_line(snap) == "1 done, 1 running, 1 pending, 0 failed; ETA 33s"
    assert snap.running[0].line() == f"{cells[1].label}: step 10/30, 1m05s"
    assert (
        summary_line(snapshot(store, [(cells[0].id, cells[0].label, "done")]))
        == "1 done, 0 running, 0 pending, 0 failed"
    )
    assert [duration(s) for s in (0.4, 59.6, 61, 3600 * 2 + 65)] == ["0s", "1m00s", "1m01s", "2h01m"]


def test_plain_view_prints_changes_at_a_bounded_rate_without_spinner_frames(tmp_path):
    store = Store(tmp_path / "r")
    cells = [cell(i) for i in range(2)]
    buf = io.StringIO()
    view = RunView(Console(file=buf, width=200), every_s=3600)  # not a terminal: plain lines
    view.start()
    prog = RunProgress(store, view.show, poll_s=0)
    prog.add(cells, {})  # the first state is always shown
    beat(store, cells[0], 1, 20)
    prog.tick()  # changed, but within the hour: not printed
    first = buf.getvalue()
    assert first.splitlines() == ["progress: 0/2 done, 0 running, 2 pending, 0 failed; 0s elapsed; ETA estimating"]
    view.every_s = 0
    prog.tick()
    prog.tick()  # unchanged: not printed again
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3 and lines[1].startswith("progress: 0/2 done, 1 running, 1 pending")
    assert lines[2].startswith(f"  running {cells[0].label}: step 1/20, loss 0.6931")
    assert "\r" not in buf.getvalue() and "\x1b" not in buf.getvalue()
    view.stop()


def test_failures_that_differ_only_in_numbers_paths_or_ids_are_the_same():
    def sig(t, m):
        return failure_signature({"error_type": t, "error": m})

    assert sig("ValueError", "simulated bad batch at step 2") == sig("ValueError", "simulated bad batch at step 13")
    assert sig("OSError", "no file /data/a/b1.jsonl (errno 2)") == sig("OSError", "no file /tmp/x.jsonl (errno 5)")
    assert sig("RayTaskError", "worker 0a1b2c3d4e5f died at 0x7f3a") == sig("RayTaskError", "worker ffee99 died at 0x1")
    assert sig("ValueError", "bad batch") != sig("TypeError", "bad batch")
    assert sig("ValueError", "bad batch") != sig("ValueError", "bad prompt")


@pytest.mark.parametrize(
    "value, expect", [("off", None), (False, None), (2, 2), (5, 5), (0, "resources.fail_fast"), ("sometimes", "off")]
)
def test_fail_fast_is_a_number_or_off(tmp_path, value, expect):
    m = small_matrix()
    m["resources"] = {"fail_fast": value}
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m).replace("fail_fast: 'off'", "fail_fast: off"))
    if expect is None or isinstance(expect, int):
        assert load_matrix(p).resources.fail_fast == expect
    else:
        with pytest.raises(UserError) as e:
            load_matrix(p)
        assert "resources.fail_fast" in str(e.value) and expect in str(e.value) and "m.yaml:" in str(e.value)


def test_terminal_view_redraws_a_table_of_running_cells(tmp_path):
    store = Store(tmp_path / "r")
    cells = [cell(i) for i in range(2)]
    buf = io.StringIO()
    view = RunView(Console(file=buf, width=120, force_terminal=True))
    view.start()
    prog = RunProgress(store, view.show, poll_s=0)
    prog.add(cells, {})
    beat(store, cells[0], 7, 20)
    prog.tick()
    view.print("  ✓ a finished cell's line")  # printed above the live area, kept
    view.stop()
    out = buf.getvalue()
    assert "0/2 done, 1 running, 1 pending, 0 failed" in out and "a finished cell's line" in out
    for text in (cells[0].label, "7/20", "0.6931", "+0.013", "1m05s"):
        assert text in out, text
