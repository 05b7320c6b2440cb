"""The Python API for notebooks and scripts: the same steps the CLI runs.

import ablate
cells, pairs = ablate.run("matrices/quickstart.yaml")
d = ablate.decide(cells, pairs)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .cluster.replication import run_matrix
from .matrix.plan import make_plan
from .verdict.report import build_report


def run(
    matrix, results: str | Path | None = None, address: str | None = None, num_cpus: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate `matrix` (a path or a MatrixSpec), train every unfinished cell on Ray, write
    cells.parquet / pairs.parquet / report.md, and return (cells, pairs) as DataFrames."""
    import warnings

    from .handoff.trackers import Trackers

    plan = make_plan(matrix, results)
    tracking = Trackers.for_plan(plan, warn=warnings.warn)  # report_to; a failing tracker only warns, once
    try:  # with adaptive replication when the matrix asks
        run_matrix(plan, address=address, num_cpus=num_cpus, on_done=tracking.log_cell)
    except BaseException:
        tracking.close(ok=False)
        raise
    rep = build_report(plan.results)  # collects once, writes both tables and report.md
    tracking.log_decision(rep)
    tracking.close()
    return rep.cells, rep.pairs
