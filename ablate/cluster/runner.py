"""Run a plan's unfinished cells on Ray: local in-process Ray by default, or an existing cluster.

Finished cells (DONE under their content-hashed id) are skipped, so a second run trains nothing and a
re-run after failures trains only what is missing. One driver per results directory (lock.py). Cells run on
long-lived trainer actors that keep the base model loaded, or with `resources.actors: off` as one Ray task each
(cluster/trainers.py). DPO's reference log-probs are computed once, before the cells that need them, and every
DPO cell takes them as an argument.

A run stops early on Ctrl-C / SIGTERM, on `resources.fail_fast` identical failures before any success, or
when the results cannot be written; each way the unfinished cells are asked to stop through the results
(never through ray.cancel, see _stop) and every finished cell stays as it is.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from .. import objectives
from ..config import Runtime
from ..errors import UserError
from ..matrix.plan import Plan
from ..results import storage
from ..results.lock import ResultsLock
from ..results.storage import HEARTBEAT_S
from ..schema import RUNTIME_FIELDS, MatrixSpec
from . import trainers
from .raysetup import check_schedulable, init_ray, shutdown, task_resources, wants

__all__ = ["RunStopped", "init_ray", "run_plan", "runtime_for", "shutdown", "task_resources"]

Callback = Callable[[dict], None]


def runtime_for(spec: MatrixSpec) -> Runtime:
    """How cells run: the matrix's runtime settings and resources (none of it is part of a cell id)."""
    res = spec.resources
    return Runtime(
        device="cuda" if res.gpus_per_cell > 0 else "cpu",
        threads=max(1, int(res.cpus_per_cell)),
        max_oom_retries=res.max_oom_retries,
        **{k: getattr(spec.train, k) for k in RUNTIME_FIELDS},
    )


class RunStopped(UserError):
    """The run stopped itself before every cell ran: the same failure kept repeating (resources.fail_fast),
    or the results cannot be written. Finished cells are kept; the CLI adds how to resume and exits 1."""

    one_line = True

    def __init__(self, problems: list[str] | str):
        super().__init__(problems, code=1)


class Progress(Protocol):
    """What the runner tells a live view (ablate/results/progress.py RunProgress): the cells of each plan it
    runs (a later call may add more), each finished cell, and a tick about once a second."""

    def add(self, cells: list, states: dict[str, str]) -> None: ...
    def finished(self, out: dict) -> None: ...
    def tick(self) -> object: ...


STOP_GRACE_S = 10.0  # how long stopping cells get to drop their staging folder and heartbeat


def run_plan(
    plan: Plan,
    address: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callback | None = None,
    num_cpus: int | None = None,
    progress: Progress | None = None,
    session: trainers.Session | None = None,
) -> list[dict]:
    """Train every cell not yet done; return the cell.json of each cell run now. Call it again with more
    cells (a plan with added seeds) and the same `progress` to grow the live view's total, and the same
    `session` to train them on the same warm trainer actors (the caller closes it)."""
    with ResultsLock(plan.results) as lock:
        try:
            # Under the lock no other driver is training here, so a running/ marker and a cells/.tmp-* staging
            # folder are left over from a killed run.
            _clear_markers(plan)
            storage.clean_staging(plan.results)
            storage.clear_stop(plan.results)
            plan.write()
        except OSError as e:
            raise _unwritable(plan, e) from None
        status = plan.status()
        todo = [c for c in plan.cells if status[c.id] != "done"]
        if on_start:
            on_start(len(todo))
        if progress is not None:
            progress.add(plan.cells, status)
        if not todo:
            return []
        with _sigterm_as_interrupt():
            finished = _run_cells(plan, todo, address, on_done, num_cpus, lock, progress, session)
        _clear_markers(plan, done=[o["id"] for o in finished if o["status"] == "done"])
        return finished


def _clear_markers(plan: Plan, done: Sequence[str] = ()) -> None:
    """Drop running/ markers (and the checkpoints of `done` cells). Under the lock every one is stale: left by
    a killed driver's worker, which can outlive it by seconds and writes until it sees the lock change hands."""
    try:
        for info in plan.results.listdir("running"):
            plan.results.delete(f"running/{info.base_name}")
        for cid in done:
            plan.results.delete(storage.checkpoint_key(cid))
    except OSError:
        pass  # read-only results: the markers go stale by themselves


def _unwritable(plan: Plan, e: BaseException) -> BaseException:
    """A RunStopped naming why the results cannot be written, or `e` itself when it is another error."""
    reason = storage.unwritable(plan.results, e)
    if reason is None:
        return e
    return RunStopped(
        [
            f"cannot write the results at {plan.results.uri}: {reason}. The run stopped; free space or make the "
            "results writable"
        ]
    )


_MASKS = [
    (re.compile(r"\S*[/\\]\S*"), "<path>"),  # file paths and URLs
    (re.compile(r"\b[0-9a-f]{8,}\b"), "<n>"),  # cell, task and node ids, even without a digit
    (re.compile(r"\w*\d\w*"), "<n>"),  # numbers, and words with digits in them (0x7f3a, ids, ports)
]


def failure_signature(out: dict) -> tuple[str, str]:
    """A failure's type and first message line with numbers, paths and ids masked: two cells that failed
    "the same way" (step 2 vs step 3, one cell's folder vs another's) get the same signature."""
    msg = str(out.get("error") or "")
    for pattern, repl in _MASKS:
        msg = pattern.sub(repl, msg)
    return str(out.get("error_type") or ""), " ".join(msg.split())


def _test_hooks() -> dict | None:
    """ABLATE_TEST_* fault hooks set for this driver travel with each cell task, so they reach workers that were
    started before they were set (the test suite's one Ray, a shared cluster). None in normal use."""
    return {k: v for k, v in os.environ.items() if k.startswith("ABLATE_TEST_")} or None


def _run_cells(
    plan: Plan, todo, address, on_done, num_cpus, lock: ResultsLock, progress=None, session=None
) -> list[dict]:
    import ray

    init_ray(address, num_cpus)
    res = plan.spec.resources
    on_cluster = bool(address or os.environ.get("RAY_ADDRESS"))
    check_schedulable(res, float(os.environ.get("ABLATE_NODE_WAIT_S", 30)) if on_cluster else 0.0)
    opts = dict(task_resources(res), max_retries=res.max_retries, retry_exceptions=False)
    launch = session.launch if session is not None and session.launch is not None else None
    if launch is None or launch.plan is not plan:
        launch = trainers.launcher(plan, opts)
        if session is not None:
            session.close()
            session.launch = launch
    model_spec, results = plan.spec.model, plan.results.uri
    runtime = runtime_for(plan.spec).with_(run_token=lock.token)  # a cell outliving this driver stops itself
    hooks = _test_hooks()
    n_slots = trainers.slots(wants(res))
    groups = trainers.packs(todo, runtime, n_slots, launch.actors and res.pack == "auto")
    launch.grow(min(len(groups), n_slots))  # never more actors than packs (or lone cells)

    # One reference job per distinct (model, data, lengths), usually exactly one, first in the queue; also when no
    # cell needs it: the report's `base (untrained)` row reads it.
    firsts: dict = {}
    for c in todo:
        firsts.setdefault(c.config.reference_key(runtime), c)
    queue: list[tuple[str, tuple]] = [("reference", (c,)) for c in firsts.values()] + [("cell", g) for g in groups]
    references: dict[str, object] = {}  # reference key -> its object ref
    ready_refs: set = set()
    jobs: dict = {}  # object ref -> its queue item
    refs: dict = {}  # object ref of a cell -> the cell
    lost: Counter = Counter()  # (kind, cell id) -> times its trainer actor was lost under it
    finished: list[dict] = []
    pending: list = []
    failures: Counter = Counter()  # failure signature -> cells that failed so
    succeeded = False  # once a cell of this run is done the setup works: a later failure is the cell's own

    def needs(c) -> bool:
        return objectives.get(c.config.objective).reference

    def waits(item) -> bool:  # cells whose reference is still being computed (actors start other cells first)
        kind, g = item
        key = g[0].config.reference_key(runtime)  # the same for a pack's cells
        return kind == "cell" and any(needs(c) for c in g) and references[key] not in ready_refs

    def retry(item) -> bool:  # as Ray retries a task whose worker was lost, unless the cell published first
        kind, c = item
        return lost[kind, c.id] < res.max_retries and (
            kind == "reference" or storage.cell_status(plan.results, c.id) != "done"
        )

    ok = False
    try:
        while pending or queue:
            while queue and launch.free():
                i = next((j for j, item in enumerate(queue) if not waits(item)), 0) if launch.actors else 0
                kind, g = queue.pop(i)
                key = g[0].config.reference_key(runtime)
                if kind == "reference":
                    references[key] = ref = launch.reference(results, g[0].config, model_spec, runtime)
                    jobs[ref] = (kind, g[0])
                    pending.append(ref)
                    continue
                shared = [references[key] if needs(c) else None for c in g]
                if len(g) == 1:
                    new = [launch.cell(g[0].config, model_spec, results, runtime, shared[0], hooks)]
                else:
                    new = launch.pack([c.config for c in g], model_spec, results, runtime, shared, hooks)
                for ref, c in zip(new, g):
                    refs[ref], jobs[ref] = c, (kind, c)
                    pending.append(ref)
            # A short wait when a live view is watching: it reads the heartbeats about once a second.
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0 if progress is not None else HEARTBEAT_S)
            if lock.lost:
                raise UserError(
                    [
                        f"{plan.results.uri}: another ablate run took over these results after this one "
                        "was silent for a minute; stopping so the two never train the same cell"
                    ]
                )
            for ref in ready:
                item = jobs.pop(ref)
                if launch.done(ref) and retry(item):  # its trainer actor was lost, and replaced: go again (alone)
                    lost[item[0], item[1].id] += 1
                    queue.insert(0, (item[0], (item[1],)))
                    continue
                if ref not in refs:  # a reference job: its cells get it directly; a failure fails them, not this
                    ready_refs.add(ref)
                    continue
                out = _outcome(plan, refs[ref], ref)
                if out["status"] == "stopped":  # a STOP left by an earlier driver: the cell stays pending
                    continue
                if out["status"] == "unpacked":  # its pack could not train together (worker/pack.py): alone
                    queue.insert(0, ("cell", (refs[ref],)))
                    continue
                finished.append(out)
                if on_done:
                    on_done(out)
                if progress is not None:
                    progress.finished(out)
                succeeded = succeeded or out["status"] == "done"
                if out["status"] == "failed" and not succeeded and res.fail_fast:
                    sig = failure_signature(out)
                    failures[sig] += 1
                    left = len(pending) + len(queue)
                    if failures[sig] >= res.fail_fast and left:
                        raise _fail_fast(plan, [o for o in finished if o["status"] == "failed"], sig, left)
            if progress is not None:
                progress.tick()
        ok = True
    except (KeyboardInterrupt, UserError):  # Ctrl-C / SIGTERM, fail fast, unwritable results, a lost lock
        _stop(plan, pending)
        for c in todo:  # cells that could not stop in time leave a marker; it must not read as running
            try:
                storage.clear_running(plan.results, c.id)
            except OSError:
                pass  # read-only results: the markers go stale by themselves
        raise
    finally:
        if session is None or not ok:  # a stopped or failed run keeps nothing
            launch.close()
            if session is not None:
                session.launch = None
    return finished


def _outcome(plan: Plan, cell, ref) -> dict:
    """The cell.json a finished task returned, or the failure record of a task that raised or lost its worker."""
    import ray

    try:
        out = ray.get(ref)
    except Exception as e:  # noqa: BLE001 - a lost worker after its retries, unwritable results, a failed reference
        stop = _unwritable(plan, e)
        if stop is not e:
            raise stop from None
        try:
            if storage.cell_status(plan.results, cell.id) == "done":  # it published, then its worker died
                return {**(storage.read_cell_json(plan.results, cell.id) or {}), "label": cell.label}
            cause = getattr(e, "cause", None) or e
            error_type, error = type(cause).__name__, (str(cause).splitlines() or [""])[0]
            if isinstance(e, ray.exceptions.RayActorError):  # a trainer actor lost while training it: as a task's
                error_type, error = "WorkerCrashedError", f"the trainer's worker died ({error_type}: {error})"
            out = {
                "id": cell.id,
                "params": cell.params,
                "config": cell.config.to_json(),
                "status": "failed",
                "error_type": error_type,
                "error": error,
            }
            storage.publish_failure(plan.results, cell.id, out, f"{type(e).__name__}: {e}\n")
            storage.clear_running(plan.results, cell.id)  # its worker died before clearing it
        except OSError as oe:
            raise _unwritable(plan, oe) from None
    out["label"] = cell.label
    return out


def _fail_fast(plan: Plan, failed: list[dict], sig: tuple[str, str], left: int) -> RunStopped:
    same = [o for o in failed if failure_signature(o) == sig]
    first = same[0]
    return RunStopped(
        [
            f"{len(same)} cells failed with the same error before any cell succeeded, so the run stopped "
            f"({left} cell(s) not finished; resources.fail_fast: {plan.spec.resources.fail_fast}, `off` runs "
            "every cell regardless):",
            f"  {first.get('error_type')}: {first.get('error')}",
            f"  cells: {', '.join(o['label'] for o in same)}; stack traces in {plan.results.uri}/cells/<id>/error.txt",
        ]
    )


def _stop(plan: Plan, refs: list) -> None:
    """Ask every unfinished cell to end (the STOP marker: a training cell ends after its current step and drops
    its staging folder and heartbeat, a queued one returns as it starts) and give them STOP_GRACE_S to do it.
    No ray.cancel, forced or not: cancelling a task in the moment it finishes or is dispatched aborts Ray's
    core worker in this process ("Tried to complete task that was not pending"), a C++ stack trace and exit
    1 instead of 130. A cell still busy after the grace period (e.g. loading a large model) dies with its
    job when the driver shuts Ray down; the next run removes what it was staging."""
    import ray

    if not refs:
        return
    try:
        storage.request_stop(plan.results)
    except OSError:
        pass  # unwritable results: the cells fail at their next write and end as quickly
    ray.wait(refs, num_returns=len(refs), timeout=STOP_GRACE_S)


class _sigterm_as_interrupt:
    """`ablate cancel` and schedulers stop a driver with SIGTERM: treat it like Ctrl-C (cancel, keep what's done)."""

    def __enter__(self):
        import threading

        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
