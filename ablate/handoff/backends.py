"""The trackers themselves (MLflow, TensorBoard, W&B), behind one small interface: `cell(CellRun)`,
`decision(Decided)`, `close(ok)`. ablate/handoff/trackers.py builds the records from the results store and
guards every call; each class here only speaks its tracker's API. Metric names follow what TRL's own
integrations write to each tracker, so dashboards built for TRL runs read ablate's cells.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import stable_hash
from ..results.storage import Store


def trl_name(key: str) -> str:
    """transformers' `rewrite_logs`, which W&B and TensorBoard runs of TRL show: eval_x → eval/x, x → train/x."""
    return f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"


@dataclass
class CellRun:
    """What one finished (or failed) cell gives a tracker."""

    cell_id: str
    label: str
    config: str  # the configuration's label: the cell without its seed
    status: str
    params: dict[str, Any]  # flat: the cell's parameters, every training setting, model and data identity
    summary: dict[str, Any]  # the cell's numbers and strings as cells.parquet has them
    events: list[tuple[int, dict[str, float]]]  # (step, TRL-named metrics), training rows before eval rows
    adapter: Path | None
    error: str | None = None


@dataclass
class Decided:
    """What the parent run gets once the report is written."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    markdown: str
    files: dict[str, bytes] = field(default_factory=dict)  # report.md, cells.parquet, pairs.parquet, PNGs


def number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- MLflow ------------------------------------------------------------------------------------------------


def _chunks(xs: list, n: int):
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


class _MLflow:
    """An experiment (MLFLOW_EXPERIMENT_NAME, default the matrix name) with one parent run per results directory
    (found again on a later `ablate run`) and a child run per cell. Metric names as TRL's MLflowCallback logs them."""

    def __init__(self, name: str, results: Store):
        # A dead server would otherwise be retried for minutes per call; the user's settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        from mlflow import MlflowClient

        self.client = MlflowClient()
        exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or name
        exp = self.client.get_experiment_by_name(exp_name)
        self.exp = exp.experiment_id if exp else self.client.create_experiment(exp_name)
        self.name, self.key = name, stable_hash(results.uri)
        self._parent: str | None = None

    def parent(self) -> str:
        if self._parent is None:
            found = self.client.search_runs(
                [self.exp], f"tags.`ablate.results_id` = '{self.key}' and tags.`ablate.role` = 'matrix'", max_results=1
            )
            if found:
                self._parent = found[0].info.run_id
                self.client.update_run(self._parent, status="RUNNING")
            else:
                tags = {"ablate.results_id": self.key, "ablate.role": "matrix"}
                self._parent = self.client.create_run(self.exp, run_name=self.name, tags=tags).info.run_id
        return self._parent

    def _log(self, run_id: str, params: dict, metrics: list[tuple[str, float, int]], tags: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ps = [Param(k, str(v)[:6000]) for k, v in params.items() if v is not None]
        ms = [Metric(re.sub(r"[^\w./ -]", "_", k), float(v), now, int(s)) for k, v, s in metrics]
        ts = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for chunk in _chunks(ps, 100):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks(ms, 1000):
            self.client.log_batch(run_id, metrics=chunk)
        if ts:
            self.client.log_batch(run_id, tags=ts)

    def cell(self, c: CellRun) -> None:
        tags = {
            "mlflow.parentRunId": self.parent(),
            "ablate.cell_id": c.cell_id,
            "ablate.config": c.config,
            "ablate.role": "cell",
            "ablate.status": c.status,
        }
        run_id = self.client.create_run(self.exp, run_name=c.label, tags=tags).info.run_id
        last = c.events[-1][0] if c.events else 0
        metrics = [(k, v, s) for s, row in c.events for k, v in row.items()]
        metrics += [(k, v, last) for k, v in c.summary.items() if number(v)]
        self._log(run_id, c.params, metrics, {"ablate.error": c.error} if c.error else {})
        if c.adapter is not None:
            self.client.log_artifacts(run_id, str(c.adapter), "adapter")
        self.client.set_terminated(run_id, "FINISHED" if c.status == "done" else "FAILED")

    def decision(self, d: Decided) -> None:
        run_id = self.parent()
        tags = {**d.tags, "mlflow.note.content": d.markdown}  # shown as the run's description in the MLflow UI
        self._log(run_id, d.params, [(k, v, 0) for k, v in d.metrics.items()], tags)
        with tempfile.TemporaryDirectory() as tmp:
            for rel, data in d.files.items():
                (Path(tmp) / rel).write_bytes(data)
            self.client.log_artifacts(run_id, tmp)

    def close(self, ok: bool) -> None:
        if self._parent is not None:
            self.client.set_terminated(self._parent, "FINISHED" if ok else "KILLED")


# -- TensorBoard -------------------------------------------------------------------------------------------


class _TensorBoard:
    """Event files written with TensorBoard's own writer and protos (no TensorFlow, no torch in the driver):
    `<logdir>/<matrix>/<cell>-<id>/` per cell, scalars named as TRL's TensorBoardCallback names them."""

    def __init__(self, name: str, results: Store):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401 - fail early if absent

        base = os.environ.get("ABLATE_TENSORBOARD_DIR")
        if base:
            self.root = Path(base) / name
        else:
            self.root = results.local_path("tensorboard") if results.local else Path("tensorboard") / name

    @staticmethod
    def _write(logdir: Path, summaries: list[tuple[int, Any]]) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        w = EventFileWriter(str(logdir))
        try:
            for step, summary in summaries:
                w.add_event(event_pb2.Event(summary=summary, step=step, wall_time=time.time()))
        finally:
            w.close()

    @staticmethod
    def _scalar(tag: str, v: float):
        from tensorboard.compat.proto import summary_pb2

        return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(v))])

    @staticmethod
    def _text(tag: str, text: str):
        import numpy as np
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.text import metadata
        from tensorboard.util import tensor_util

        meta = metadata.create_summary_metadata(display_name=tag, description="")
        tensor = tensor_util.make_tensor_proto(np.array(text.encode()))
        return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor)])

    def cell(self, c: CellRun) -> None:
        from tensorboard.plugins.hparams import summary_v2 as hp

        if c.status != "done":
            return  # nothing to plot; the failure is in the results and the other trackers
        last = c.events[-1][0] if c.events else 0
        out = [(s, self._scalar(trl_name(k), v)) for s, row in c.events for k, v in row.items()]
        out += [(last, self._scalar(f"summary/{k}", v)) for k, v in c.summary.items() if number(v)]
        hparams = {k: v for k, v in c.params.items() if isinstance(v, (int, float, str, bool))}
        out.append((0, hp.hparams_pb(hparams, trial_id=c.cell_id)))
        slug = re.sub(r"[^\w.=-]+", "_", c.label)  # `dpo r4 β0.1 s0` → dpo_r4_β0.1_s0
        self._write(self.root / f"{slug}-{c.cell_id}", out)

    def decision(self, d: Decided) -> None:
        out = [(0, self._text("report", d.markdown))]
        out += [(0, self._scalar(f"decision/{k}", v)) for k, v in d.metrics.items()]
        self._write(self.root / "decision", out)

    def close(self, ok: bool) -> None:
        pass


# -- Weights & Biases --------------------------------------------------------------------------------------


class _WandB:
    """One run per cell in the group named after the matrix (project WANDB_PROJECT, default `ablate`), with the
    step on `train/global_step` and metric names as TRL's WandbCallback logs them; the decision is a run of
    job_type `decision` in the same group. WANDB_MODE=offline writes runs to disk for a later `wandb sync`."""

    def __init__(self, name: str, results: Store):
        import wandb

        self.wandb, self.name = wandb, name
        self.project = os.environ.get("WANDB_PROJECT") or "ablate"

    def _init(self, run_name: str, job_type: str, config: dict):
        return self.wandb.init(
            project=self.project,
            group=self.name,
            name=run_name,
            job_type=job_type,
            config=config,
            reinit="create_new",  # never log into a run the caller has open
            settings=self.wandb.Settings(silent=True, console="off"),
        )

    def cell(self, c: CellRun) -> None:
        run = self._init(c.label, "cell", c.params)
        try:
            run.define_metric("train/global_step")
            run.define_metric("*", step_metric="train/global_step", step_sync=True)
            for step, row in c.events:
                run.log({**{trl_name(k): v for k, v in row.items()}, "train/global_step": step})
            run.summary.update({**c.summary, "status": c.status, **({"error": c.error} if c.error else {})})
            if c.adapter is not None:
                art = self.wandb.Artifact(f"adapter-{c.cell_id}", type="model", metadata={"label": c.label})
                art.add_dir(str(c.adapter))
                run.log_artifact(art)
        finally:
            run.finish(exit_code=0 if c.status == "done" else 1)

    def decision(self, d: Decided) -> None:
        run = self._init(f"{d.name} decision", "decision", d.params)
        try:
            run.summary.update({**d.metrics, **d.tags})
            art = self.wandb.Artifact(f"report-{re.sub(r'[^A-Za-z0-9_.-]', '_', d.name)}", type="report")
            for rel, data in d.files.items():
                with art.new_file(rel, mode="wb") as f:
                    f.write(data)
            run.log_artifact(art)
        finally:
            run.finish()

    def close(self, ok: bool) -> None:
        pass


OPEN: dict[str, Callable[..., Any]] = {"mlflow": _MLflow, "tensorboard": _TensorBoard, "wandb": _WandB}
