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
    plan = make_plan(matrix, results)
    run_matrix(plan, address=address, num_cpus=num_cpus)  # with adaptive replication when the matrix asks
    rep = build_report(plan.results)  # collects once, writes both tables and report.md
    return rep.cells, rep.pairs
