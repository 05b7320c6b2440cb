"""Run a plan's unfinished cells as Ray tasks: local in-process Ray by default, or an existing cluster.

Finished cells (DONE on disk under their content-hashed id) are skipped, so a second run trains
nothing and a re-run after failures trains only what is missing.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from . import storage
from .plan import Plan

Callback = Callable[[dict], None]


def _cell_task(cell_id, config, model_spec, train_rows, heldout_rows, results, threads):
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(max(1, threads))
    from .train import run_cell

    return run_cell(cell_id, config, model_spec, train_rows, heldout_rows, results)


def init_ray(address: str | None, num_cpus: int | None = None, dashboard: bool = False) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a laptop
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set inside a Ray Job: join that cluster
    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        # Dashboard off by default; when on, loopback only.
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)


def run_plan(plan: Plan, address: str | None = None, on_start: Callable[[int], None] | None = None,
             on_done: Callback | None = None, num_cpus: int | None = None) -> list[dict]:
    """Train every cell not yet done; return the cell.json of each cell run now."""
    import ray

    plan.results.mkdir(parents=True, exist_ok=True)
    plan.write()
    status = plan.status()
    todo = [c for c in plan.cells if status[c.id] != "done"]
    if on_start:
        on_start(len(todo))
    if not todo:
        return []
    init_ray(address, num_cpus)
    res = plan.spec.resources
    task = ray.remote(_cell_task).options(
        num_cpus=res.cpus_per_cell, num_gpus=res.gpus_per_cell, max_retries=res.max_retries,
        retry_exceptions=False, name="ablate-cell",
    )
    train_ref, held_ref = ray.put(plan.train_rows), ray.put(plan.heldout_rows)
    model_spec = plan.spec.model.model_dump(mode="json")
    refs = {
        task.remote(c.id, c.config, model_spec, train_ref, held_ref, str(plan.results.resolve()),
                    int(res.cpus_per_cell)): c
        for c in todo
    }
    finished: list[dict] = []
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                cell = refs[ref]
                try:
                    out = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a lost worker after its retries
                    out = {"id": cell.id, "params": cell.params, "config": cell.config, "status": "failed",
                           "error_type": type(e).__name__, "error": (str(e).splitlines() or [""])[0]}
                    storage.publish_failure(plan.results, cell.id, out, f"{type(e).__name__}: {e}\n")
                out["label"] = cell.label
                finished.append(out)
                if on_done:
                    on_done(out)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return finished


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
