"""How a run's progress reads: redrawn in place on a terminal, plain lines at a bounded rate anywhere else
(a log file, `ablate logs --follow`, CI), and the cell table of `ablate status` / `status --job`.

Snapshots come from ablate/results/progress.py; nothing here reads the results itself.
"""

from __future__ import annotations

import os
import time

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from .results.progress import Snapshot, duration

PLAIN_EVERY_S = 30.0  # a plain progress block at most this often (ABLATE_PROGRESS_EVERY_S overrides)
COLORS = {"done": "green", "failed": "red", "pending": "yellow", "running": "cyan"}


def interactive(console: Console) -> bool:
    return console.is_terminal and not console.is_dumb_terminal


class RunView:
    """The live part of `ablate run`'s output. `cell_line` prints a finished cell's line at once; `show`
    takes every snapshot and redraws (terminal) or prints a plain block when due and changed."""

    def __init__(self, console: Console, every_s: float | None = None):
        self.console = console
        self.live: Live | None = None
        self.every_s = (
            every_s if every_s is not None else float(os.environ.get("ABLATE_PROGRESS_EVERY_S", PLAIN_EVERY_S))
        )
        self._printed_at = float("-inf")
        self._printed_key: tuple | None = None
        self._last: Snapshot | None = None

    def start(self) -> None:
        if interactive(self.console) and self.live is None:
            self.live = Live(console=self.console, transient=True, refresh_per_second=4)
            self.live.start()
            if self._last is not None:
                self.live.update(self._render(self._last))

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def print(self, *args, **kwargs) -> None:
        """A line above the live area (or just a line)."""
        self.console.print(*args, **kwargs)

    def show(self, snap: Snapshot) -> None:
        self._last = snap
        if self.live is not None:
            self.live.update(self._render(snap))
            return
        if interactive(self.console):
            return  # before start() / after stop(): nothing to draw
        now = time.monotonic()
        if snap.key() == self._printed_key or now - self._printed_at < self.every_s:
            return
        self._printed_at, self._printed_key = now, snap.key()
        lines = [f"progress: {snap.line()}"] + [f"  running {r.line()}" for r in snap.running]
        self.console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)

    @staticmethod
    def _render(snap: Snapshot):
        head = Spinner("dots", Text(snap.line()), style="cyan")
        if not snap.running:
            return head
        table = Table(box=None, show_header=True, header_style="dim", pad_edge=False)
        for col in ("running", "step", "loss", "margin", "elapsed"):
            table.add_column(col, justify="left" if col == "running" else "right")
        for r in snap.running:
            table.add_row(r.label, *(p or "" for p in r.parts()))
        return Group(head, table)


def status_table(cells, snap: Snapshot | None, title) -> Table:
    """`ablate status`'s table: one row per cell, with the heartbeat's step, loss, margin and elapsed time
    for a running cell and the held-out accuracy, training seconds or error once it ended."""
    live = {r.cell_id: r for r in (snap.running if snap else [])}
    table = Table(title=title, title_justify="left")
    for c in ("cell id", "cell", "status", "step", "loss", "margin", "elapsed", "held-out acc", "train s", "error"):
        table.add_column(c)
    for r in cells.to_dict("records"):
        st = r["status"]
        run = live.get(r["cell_id"])
        step = loss = margin = elapsed = ""
        if run is not None:
            step, loss, margin, elapsed = (p or "" for p in run.parts())
            step = step.removeprefix("step ")
        elif st == "done" and _present(r.get("steps")):
            step = f"{int(r['steps'])}"
        table.add_row(
            Text(r["cell_id"]),
            Text(r["label"]),
            Text(st, style=COLORS.get(st, "white")),
            step,
            loss,
            margin,
            elapsed,
            f"{r['heldout_accuracy']:.3f}" if _present(r.get("heldout_accuracy")) else "",
            f"{r['train_seconds']:.1f}" if _present(r.get("train_seconds")) else "",
            Text(f"{r.get('error_type')}: {r.get('error')}" if st == "failed" else ""),
        )
    return table


def _present(x) -> bool:
    import pandas as pd

    return x is not None and not pd.isna(x)


def summary_line(snap: Snapshot) -> str:
    """The last line of `ablate status`: `3 done, 1 running, 12 pending, 0 failed; ETA 4m10s`."""
    c = snap.counts
    text = ", ".join(f"{c[k]} {k}" for k in ("done", "running", "pending", "failed"))
    return f"{text}; {snap.eta()}" if snap.left else text


__all__ = ["RunView", "status_table", "summary_line", "interactive", "duration"]
