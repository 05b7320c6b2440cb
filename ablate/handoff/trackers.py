"""Mirror an ablation into the team's experiment tracker (`report_to: [mlflow, tensorboard, wandb]`).

The driver logs each cell when it finishes, reading its files back from the results store, and the decision
once the report is written; workers never talk to a tracker. Each cell is one run in a group named after the
matrix (MLflow: child runs of a parent run in an experiment; W&B: a group; TensorBoard: one directory per cell
under `<logdir>/<matrix>/`), with the cell's parameters, its training and held-out curves under the names
TRL's own integrations use, its summary row and (MLflow, W&B) the adapter. The parent run gets the decision,
report.md and the tables. A tracker that raises is switched off for the rest of the run and reported once:
it never fails a cell, and the results directory is never touched by it.

Configuration is the trackers' own environment, as with TRL: MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME,
WANDB_PROJECT / WANDB_MODE / WANDB_DIR, and ABLATE_TENSORBOARD_DIR (default: <results>/tensorboard).
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..results.storage import Store, read_jsonl
from .backends import OPEN, CellRun, Decided, number
from .packages import PACKAGES, tracker_problems  # noqa: F401 - tracker_problems re-exported


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


class Trackers:
    """The trackers of one `ablate run`; every call is guarded, and a failing tracker is dropped, reported once."""

    def __init__(self, name: str, results: Store, names: list[str], cells: dict[str, Any], warn: Callable[[str], None]):
        self.name, self.results, self.warn = name, results, warn
        self.labels = {cid: (c.label, c.config_label) for cid, c in cells.items()}
        self.active: dict[str, Any] = {}
        self.failed: dict[str, str] = {}
        ctx = {"name": name, "results": results}
        for n in names:
            self._guard(n, functools.partial(self._open, n, ctx))

    @classmethod
    def for_plan(cls, plan, warn: Callable[[str], None]) -> Trackers:
        return cls(plan.spec.name, plan.results, list(plan.spec.report_to), {c.id: c for c in plan.cells}, warn)

    def _open(self, n: str, ctx: dict) -> None:
        self.active[n] = OPEN[n](**ctx)

    def _guard(self, n: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a tracker must never fail a cell or the run
            self.active.pop(n, None)
            if n not in self.failed:
                self.failed[n] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                self.warn(
                    f"report_to {n} failed ({self.failed[n]}); nothing more goes to {n} in this run. "
                    "Cells and results are unaffected."
                )

    def log_cell(self, out: dict) -> None:
        if not self.active:
            return
        run = self._cell_run(out)
        for n, t in list(self.active.items()):
            self._guard(n, functools.partial(t.cell, run))

    def log_decision(self, report) -> None:
        if not self.active:
            return
        d = _decided(self.name, self.results, report)
        for n, t in list(self.active.items()):
            self._guard(n, functools.partial(t.decision, d))

    def close(self, ok: bool = True) -> None:
        for n, t in list(self.active.items()):
            self._guard(n, functools.partial(t.close, ok))
        self.active.clear()

    def _cell_run(self, out: dict) -> CellRun:
        from ..results.collect import METRIC_COLUMNS

        cid = out["id"]
        label, config = self.labels.get(cid, (out.get("label", cid), out.get("label", cid)))
        cfg = out.get("config", {})
        params = {
            **_flat(out.get("params", {})),
            **_flat(cfg.get("train", {}), "train."),
            **_flat(cfg.get("model", {}), "model."),
            **_flat(cfg.get("data", {}), "data."),
            "cell_id": cid,
            "config": config,
            "ablate_version": cfg.get("ablate_version"),
        }
        params = {k: v for k, v in params.items() if not k.startswith("model.files.")}  # hashes: in cell.json
        summary = {k: out.get(k) for k in METRIC_COLUMNS if out.get(k) is not None}
        events: list[tuple[int, dict[str, float]]] = []
        if out.get("status") == "done":
            for log in ("train_log.jsonl", "eval_log.jsonl"):
                for row in read_jsonl(self.results, f"cells/{cid}/{log}"):
                    events.append((int(row["step"]), {k: v for k, v in row.items() if k != "step" and number(v)}))
        events.sort(key=lambda e: e[0])  # stable: at one step the training row stays before the eval row
        adapter = self._adapter(cid) if out.get("status") == "done" else None
        return CellRun(
            cid, label, config, out.get("status", "done"), params, summary, events, adapter, out.get("error")
        )

    def _adapter(self, cid: str) -> Path | None:
        rel = f"cells/{cid}/adapter"
        if self.results.local:
            p = self.results.local_path(rel)
            return p if p.is_dir() else None
        tmp = Path(tempfile.mkdtemp(prefix=f"ablate-adapter-{cid}-"))
        root = self.results.path(rel) + "/"
        for info in self.results.listdir(rel, recursive=True):
            if info.is_file:
                (tmp / info.path[len(root) :]).parent.mkdir(parents=True, exist_ok=True)
                (tmp / info.path[len(root) :]).write_bytes(self.results.read_bytes(f"{rel}/{info.path[len(root) :]}"))
        return tmp


def _decided(name: str, results: Store, report) -> Decided:
    d = report.decision
    params: dict[str, Any] = {"matrix": name, "results": results.uri}
    metrics: dict[str, float] = {}
    tags = {"ablate.role": "matrix"}
    if d is not None:
        params.update(rule=d.rule, alpha=d.alpha, baseline=d.baseline, heldout_pairs=d.heldout_pairs, seeds=d.seeds)
        tags.update({"ablate.winner": d.winner, "ablate.switch": str(d.switch), "ablate.decision": d.reason})
        metrics["mde"] = d.mde
        for r in d.comparisons.itertuples():
            metrics[f"accuracy/{r.config}"] = r.accuracy
            if not r.is_baseline and number(r.p_adjusted):
                metrics[f"p_adjusted/{r.config}"] = r.p_adjusted
    files = {"report.md": report.markdown.encode()}
    for rel in ["cells.parquet", "pairs.parquet", *report.plots]:
        if results.is_file(rel):
            files[rel] = results.read_bytes(rel)
    return Decided(name, params, {k: v for k, v in metrics.items() if number(v)}, tags, report.markdown, files)
