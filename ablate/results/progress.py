"""Where a run is: cells done / running / pending / failed, each running cell's step, last training loss
and margin and elapsed time (its worker's heartbeat, running/<id>.json), and an ETA from the finished
cells' step rates.

One snapshot feeds the live view of `ablate run` (RunProgress, fed by the runner) and `ablate status`
(`snapshot`, read from the results alone). Cells may join a run after it started (more seeds for a few
configurations): `RunProgress.add` with the new cells grows the total.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .storage import STALE_AFTER_S, Store, as_store, read_cell_json

STATES = ("done", "running", "pending", "failed")
RATE_SAMPLE = 32  # finished cells read for the step rate by `ablate status` (one small read each)


@dataclass(frozen=True)
class CellProgress:
    """One running cell as its heartbeat last reported it (None: not reported yet)."""

    cell_id: str
    label: str
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    margin: float | None = None
    elapsed_s: float | None = None

    def parts(self) -> list[str]:
        return [
            f"step {self.step or 0}/{self.total}" if self.total else "setting up",
            "" if self.loss is None else f"loss {self.loss:.4f}",
            "" if self.margin is None else f"margin {self.margin:+.3f}",
            "" if self.elapsed_s is None else duration(self.elapsed_s),
        ]

    def line(self) -> str:
        """`dpo r8 s0: step 12/24, loss 0.6121, margin +0.310, 1m05s`."""
        return f"{self.label}: {', '.join(p for p in self.parts() if p)}"


@dataclass(frozen=True)
class Snapshot:
    counts: dict[str, int]
    running: list[CellProgress] = field(default_factory=list)
    eta_s: float | None = None  # None until a finished cell gives a step rate
    elapsed_s: float | None = None  # since the run started (live view only)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def left(self) -> int:
        return self.counts["running"] + self.counts["pending"]

    def eta(self) -> str:
        return "" if not self.left else "ETA estimating" if self.eta_s is None else f"ETA {duration(self.eta_s)}"

    def line(self) -> str:
        """`3/16 done, 2 running, 10 pending, 1 failed; ETA 4m10s`."""
        c = self.counts
        text = f"{c['done']}/{self.total} done, {c['running']} running, {c['pending']} pending, {c['failed']} failed"
        if self.elapsed_s is not None:
            text += f"; {duration(self.elapsed_s)} elapsed"
        return f"{text}; {self.eta()}" if self.left else text

    def key(self) -> tuple:
        """What a plain-line view compares to skip printing an unchanged state (the clock aside)."""
        return tuple(self.counts.values()), tuple((r.cell_id, r.step) for r in self.running)


def duration(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _num(x) -> float | None:
    try:
        v = None if x is None else float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v else None  # NaN: not reported


def from_heartbeat(cell_id: str, label: str, marker: dict, now: float) -> CellProgress:
    step, total, started = _num(marker.get("step")), _num(marker.get("total_steps")), _num(marker.get("started"))
    return CellProgress(
        cell_id,
        label,
        None if step is None else int(step),
        None if total is None else int(total),
        _num(marker.get("loss")),
        _num(marker.get("margin")),
        None if started is None else now - started,
    )


def step_rate(cell_json: dict) -> float | None:
    """Steps per wall-clock second of a finished cell, its setup included (the next cell pays it too)."""
    steps = _num(cell_json.get("steps"))
    t0, t1 = _num(cell_json.get("started_at")), _num(cell_json.get("finished_at"))
    secs = t1 - t0 if t0 is not None and t1 is not None else _num(cell_json.get("train_seconds"))
    return steps / secs if steps and secs and secs > 0 else None


def eta_seconds(rates: list[float], running: list[CellProgress], pending: int, totals: list[int]) -> float | None:
    """The steps left (each running cell's rest, and each pending cell's usual total) over the finished cells'
    median step rate times the cells training side by side. None while no cell has finished."""
    known = totals + [r.total for r in running if r.total]
    if not rates or (pending and not known):
        return None
    usual = statistics.median(known) if known else 0
    left = sum(max(0, (r.total or usual) - (r.step or 0)) for r in running) + pending * usual
    return left / (statistics.median(rates) * max(1, len(running)))


def running_markers(store: Store, now: float) -> dict[str, dict]:
    """Live heartbeats by cell id: one listing of running/ and one small read per marker."""
    out = {}
    for info in store.listdir("running"):
        if not info.base_name.endswith(".json"):
            continue
        cid = info.base_name[: -len(".json")]
        marker = store.read_json(f"running/{cid}.json")
        if marker and now - float(marker.get("heartbeat", 0)) < STALE_AFTER_S:
            out[cid] = marker
    return out


def snapshot(results: str | Store, cells: list[tuple[str, str, str]]) -> Snapshot:
    """The progress of a results directory from its files alone: `cells` is (id, label, state) per cell, as
    `ablate status` already has them. The ETA's rate comes from up to RATE_SAMPLE finished cells."""
    store, now = as_store(results), time.time()
    markers = running_markers(store, now)
    counts = dict.fromkeys(STATES, 0)
    running, rates, totals = [], [], []
    for cid, label, state in cells:
        counts[state] += 1
        if state == "running" and cid in markers:
            running.append(from_heartbeat(cid, label, markers[cid], now))
    for cid, _, _ in [c for c in cells if c[2] == "done"][:RATE_SAMPLE]:
        info = read_cell_json(store, cid) or {}
        rate = step_rate(info)
        if rate:
            rates.append(rate)
            totals.append(int(info["steps"]))
    return Snapshot(counts, running, eta_seconds(rates, running, counts["pending"], totals))


class RunProgress:
    """The live state of a run: the runner calls `add` (each plan's cells; a later call grows the total),
    `finished` (each cell's outcome) and `tick` (about once a second); every snapshot goes to `view`.
    Heartbeats are read at most every `poll_s` seconds (one listing of running/ and a read per marker)."""

    def __init__(self, results: str | Store, view: Callable[[Snapshot], None] | None = None, poll_s: float | None = None):
        self.store, self.view = as_store(results), view
        # an object store is polled less often: each look is a listing and a request per running cell
        self.poll_s = poll_s if poll_s is not None else 1.0 if self.store.local else 5.0
        self.labels: dict[str, str] = {}
        self.states: dict[str, str] = {}
        self.rates: list[float] = []
        self.totals: list[int] = []
        self.started = time.time()
        self._polled = float("-inf")
        self._running: list[CellProgress] = []

    def add(self, cells: Iterable, states: dict[str, str]) -> None:
        """Cells with .id and .label, and their states now; a cell already known keeps its state."""
        for c in cells:
            if c.id not in self.states:
                self.labels[c.id] = c.label
                # a cell is "running" only while this run trains it: the heartbeats say when
                self.states[c.id] = states.get(c.id, "pending") if states.get(c.id) in ("done", "failed") else "pending"
        self.tick(force=True)

    def finished(self, out: dict) -> None:
        """A cell's cell.json as its task returned it (done) or as the runner recorded it (failed)."""
        self.states[out["id"]] = "done" if out.get("status") == "done" else "failed"
        self.labels.setdefault(out["id"], out.get("label", out["id"]))
        rate = step_rate(out) if out.get("status") == "done" else None
        if rate:
            self.rates.append(rate)
            self.totals.append(int(out["steps"]))
        self._running = [r for r in self._running if r.cell_id != out["id"]]
        self.tick(force=True, poll=False)

    def tick(self, force: bool = False, poll: bool = True) -> Snapshot | None:
        now = time.time()
        due = now - self._polled >= self.poll_s
        if not (force or due):
            return None
        if poll and due:
            self._polled = now
            markers = running_markers(self.store, now)
            self._running = []
            for cid, state in self.states.items():
                if state in ("pending", "running"):
                    self.states[cid] = "running" if cid in markers else "pending"
                    if cid in markers:
                        self._running.append(from_heartbeat(cid, self.labels[cid], markers[cid], now))
        counts = dict.fromkeys(STATES, 0)
        for s in self.states.values():
            counts[s] += 1
        snap = Snapshot(
            counts,
            list(self._running),
            eta_seconds(self.rates, self._running, counts["pending"], self.totals),
            now - self.started,
        )
        if self.view is not None:
            self.view(snap)
        return snap
