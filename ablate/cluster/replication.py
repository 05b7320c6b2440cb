"""Adaptive replication: one seed is not enough to claim a recipe.

After the matrix's own cells are done, the decision rule looks at them. When a challenger looks better
than the baseline, the baseline and every challenger still in contention (only those) get further seeds
up to `decision.replicate.max_seeds`, trained in the same run; then one recipe-level look decides. The new
cells are ordinary content-hashed cells (resumable, visible in `status`), marked `replicated` in plan.json,
and a re-run recomputes the same request from the same first-round results, so a killed run resumes.
"""

from __future__ import annotations

from collections.abc import Callable

from ..matrix.plan import Plan
from ..results.collect import collect, read_judgements
from ..schema import RewardModelJudge
from ..verdict.decide import decide
from ..verdict.winrate import win_pairs
from . import runner  # looked up at call time, so a test's patch of runner.run_plan applies here too
from .judging import judge_matrix
from .runner import Callback
from .trainers import Session

OnReplicate = Callable[[list, str], None]


def replication_request(plan: Plan) -> tuple[dict[str, int], str]:
    """(config_id → more seeds, why) from the finished first round; ({}, "") when settled or off."""
    d = plan.spec.decision
    if d.max_seeds is None:
        return {}, ""
    cells, pairs = collect(plan.results, write=False)
    if (cells["status"] != "done").any():  # failures or pending cells: nothing to decide yet
        return {}, ""
    if d.metric == "win_rate":  # the judge's verdicts on the first round decide who gets seeds
        judgements, error = read_judgements(plan.results, plan.to_json()["judge"]["key"])
        if error or judgements is None or judgements.empty:
            return {}, ""
        pairs = win_pairs(judgements, cells)
    dec = decide(cells, pairs, d.rule, d.alpha, d.tolerance_pairs, max_seeds=d.max_seeds, metric=d.metric)
    if not dec.replicate:
        return {}, ""
    labels = cells.drop_duplicates("config_id").set_index("config_id")["config"]
    contenders = [labels[c] for c in dec.replicate if labels[c] != dec.baseline]
    on = "the judge's verdicts" if d.metric == "win_rate" else "the held-out pairs"
    why = (
        f"{' and '.join(contenders)} look{'s' if len(contenders) == 1 else ''} better than {dec.baseline} with "
        f"{dec.seeds} seed(s) (exact test on {on}); a verdict about recipes needs {d.max_seeds} seeds of each"
    )
    return dec.replicate, why


def run_matrix(
    plan: Plan,
    address: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callback | None = None,
    num_cpus: int | None = None,
    on_replicate: OnReplicate | None = None,
    progress=None,
) -> list[dict]:
    """Train every cell not yet done, then the seeds adaptive replication asks for (at most one round); with a
    judge, judge the generations after each round (a win-rate decision needs the first round's verdicts). The
    same `progress` (results/progress.py) sees both rounds, so the live view's total grows with the new cells."""
    session = Session()  # both rounds train on the same warm actors
    kw = dict(address=address, on_start=on_start, on_done=on_done, num_cpus=num_cpus, progress=progress)
    try:
        finished = runner.run_plan(plan, **kw, session=session)
        if isinstance(plan.spec.judge, RewardModelJudge):  # its scoring task needs the slots the actors hold
            session.close()
        judge_matrix(plan, address, num_cpus)
        more, why = replication_request(plan)
        if not more:
            return finished
        added = plan.add_seeds(more, why)
        if on_replicate:
            on_replicate(added, why)
        finished += runner.run_plan(plan, **kw, session=session)
    finally:
        session.close()
    judge_matrix(plan, address, num_cpus)
    return finished
