"""How cells reach Ray: one task per cell (resources.actors: off), or long-lived trainer actors (auto).

A trainer actor holds one resource slot (a GPU or a share of one, `cpus_per_cell` cores) for the whole run. It
imports torch, transformers and PEFT once, keeps the base model, the encoded pairs and the reference log-probs
(ablate/worker/bases.py), and trains the cells it is given one after another, each with a fresh LoRA, optimizer
and seeded RNGs, so a cell's numbers are those of a fresh process. With `resources.pack: auto` compatible cells
go as packs that share each forward pass (`packs`, ablate/worker/pack.py). There are as many actors as slots in
the cluster, never more than packs or lone cells; the runner hands the next one to whichever actor is free.

Failures keep their meaning (README, "When things fail"). A lost actor (killed worker, lost node) is replaced by
a new one, wherever Ray finds a slot, and each cell it was training goes back to the queue alone, up to
`resources.max_retries` times, resuming from its checkpoint. An OOM or an exception is handled inside the cell
(worker/cell.py), or hands a pack's cells back to train alone, and the actor goes on with the next job.
Stopping uses the STOP marker as tasks do; the actors are killed once their cells have returned, or when the
grace period ends.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

from ..config import Runtime


def quiet_torch(threads: int) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(max(1, threads))


@contextlib.contextmanager
def test_hooks(hooks: dict | None) -> Iterator[None]:
    """Fault hooks for the tests (ABLATE_TEST_*), set for one cell: a worker serves many."""
    saved = {k: os.environ.get(k) for k in hooks or {}}
    os.environ.update(hooks or {})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def _cell_task(cell, model_spec, train_rows, heldout_rows, results, runtime: Runtime, ref=None, hooks=None):
    quiet_torch(runtime.threads)
    from ..worker.cell import run_cell

    with test_hooks(hooks):
        return run_cell(cell, model_spec, train_rows, heldout_rows, results, runtime, ref)


def _reference_task(results, cell, model_spec, train_rows, heldout_rows, runtime: Runtime):
    quiet_torch(runtime.threads)
    from ..worker.cell import shared_reference

    return shared_reference(results, cell, model_spec, train_rows, heldout_rows, runtime)


class Trainer:
    """One slot's trainer process. Rows and the shared reference arrive as object references inside a dict or
    list, so Ray does not copy them into every call: the actor fetches each once (worker/bases.py)."""

    def train(self, cell, model_spec, rows: dict, results, runtime: Runtime, ref: list | None, hooks=None) -> dict:
        quiet_torch(runtime.threads)
        from ..worker import bases
        from ..worker.cell import run_cell

        train_rows, heldout_rows = bases.rows(rows)
        shared = bases.reference(cell.reference_key(runtime), ref)
        with test_hooks(hooks):
            try:
                return run_cell(cell, model_spec, train_rows, heldout_rows, results, runtime, shared)
            finally:
                bases.free_memory()

    def train_pack(self, cells, model_spec, rows: dict, results, runtime: Runtime, refs: list, hooks=None) -> tuple:
        """Several cells in one forward pass (worker/pack.py); one return per cell, so the runner sees each."""
        quiet_torch(runtime.threads)
        from ..worker import bases
        from ..worker.pack import UNPACKED, run_pack

        try:
            train_rows, heldout_rows = bases.rows(rows)
            shared = [bases.reference(c.reference_key(runtime), r) for c, r in zip(cells, refs)]
        except Exception as e:  # noqa: BLE001 - e.g. a failed reference job: each cell alone, failing only if it needs it
            return tuple({"id": c.id, "status": UNPACKED, "why": f"{type(e).__name__}: {e}"} for c in cells)
        with test_hooks(hooks):
            try:
                return tuple(run_pack(cells, model_spec, train_rows, heldout_rows, results, runtime, shared))
            finally:
                bases.free_memory()

    def reference(self, results, cell, model_spec, rows: dict, runtime: Runtime) -> tuple[str, dict]:
        quiet_torch(runtime.threads)
        from ..worker import bases
        from ..worker.cell import shared_reference

        ref = shared_reference(results, cell, model_spec, *bases.rows(rows), runtime)
        bases.keep_reference(cell.reference_key(runtime), ref)
        return "ok", ref  # the first return lets the driver see a lost actor without fetching the second

    def loads(self) -> int:
        """Base models this process loaded (tests: a second cell must not load again)."""
        from ..worker import bases

        return bases.CACHE.loads


def slots(want: dict[str, float]) -> int:
    """How many cells the alive nodes can hold side by side: per node, the fewest copies of the request that any
    one of its resources allows, summed over nodes."""
    import ray

    total = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node["Resources"]
            total += min(math.floor(have.get(k, 0) / v + 1e-9) for k, v in want.items()) if want else 1
    return total


PACK_LIMIT = 8  # cells per pack at most: the pass's rows (and activation memory) grow with each


def packs(cells: list, runtime: Runtime, slots: int, on: bool) -> list[tuple]:
    """The cells as they go to the trainers: packs of cells that can share a forward pass (CellConfig.pack_key),
    each pack's cells in plan order. Each set of compatible cells is split into as many packs as there are slots
    (every slot stays busy), at most PACK_LIMIT cells each; the rest go alone. Decided before anything runs, so the
    same cells on the same cluster always pack the same way."""
    if not on:
        return [(c,) for c in cells]
    groups: dict[str, list] = {}
    out: list[tuple] = []
    for c in cells:
        key = c.config.pack_key(runtime)
        if key is None:
            out.append((c,))
        else:
            groups.setdefault(key, []).append(c)
    for same in groups.values():
        n = max(min(len(same), slots), math.ceil(len(same) / PACK_LIMIT))
        size = math.ceil(len(same) / n)
        out += [tuple(same[i : i + size]) for i in range(0, len(same), size)]
    order = {c.id: i for i, c in enumerate(cells)}
    return sorted(out, key=lambda g: order[g[0].id])


class Session:
    """What one command keeps across its run_plan calls (adaptive replication's second round trains on the first
    round's actors, warm). The caller closes it; run_plan closes it itself when a run stops or fails."""

    def __init__(self) -> None:
        self.launch: Tasks | Actors | None = None

    def close(self) -> None:
        if self.launch is not None:
            self.launch.close()
        self.launch = None


def launcher(plan, opts: dict) -> Tasks | Actors:
    """Tasks or actors, as the plan's resources.actors says, with the rows put into Ray's object store once."""
    import ray

    data = (ray.put(plan.train_rows), ray.put(plan.heldout_rows))
    launch = Tasks(opts, data) if plan.spec.resources.actors == "off" else Actors(opts, data)
    launch.plan = plan
    return launch


class Tasks:
    """resources.actors: off. Every cell is a Ray task of its own, all submitted at once; Ray queues them."""

    actors = False
    plan = None

    def __init__(self, opts: dict, data: tuple):
        import ray

        self.cell_task = ray.remote(_cell_task).options(name="ablate-cell", **opts)
        self.reference_task = ray.remote(_reference_task).options(name="ablate-reference", **opts)
        self.train_ref, self.held_ref = data

    def grow(self, n: int) -> None:
        pass

    def free(self) -> bool:
        return True

    def reference(self, results, cell, model_spec, runtime):
        return self.reference_task.remote(results, cell, model_spec, self.train_ref, self.held_ref, runtime)

    def cell(self, cell, model_spec, results, runtime, shared, hooks):
        return self.cell_task.remote(cell, model_spec, self.train_ref, self.held_ref, results, runtime, shared, hooks)

    def pack(self, cells, model_spec, results, runtime, shared: list, hooks) -> list:
        return [self.cell(c, model_spec, results, runtime, s, hooks) for c, s in zip(cells, shared)]  # alone

    def done(self, ref) -> bool:
        return False  # Ray retries a task whose worker was lost by itself (max_retries)

    def close(self) -> None:
        pass


class Actors:
    """resources.actors: auto. `n` trainer actors; a cell or a pack goes to a free one."""

    actors = True
    plan = None

    def __init__(self, opts: dict, data: tuple):
        import ray

        task_opts = {k: v for k, v in opts.items() if k not in ("max_retries", "retry_exceptions")}
        # A lost actor is replaced and its cell requeued by the runner, which counts the cell's retries itself:
        # Ray's own actor-task retries spent several per lost node (each call to the unreachable actor failed at
        # once until the node was declared dead). Never named, so two runs on one cluster cannot collide.
        self.cls = ray.remote(Trainer).options(max_restarts=0, max_task_retries=0, **task_opts)
        self.idle: list = []
        self.busy: dict = {}  # object ref -> the actor computing it
        self.probes: dict = {}  # a reference job's result -> a small return that says whether its actor was lost
        self.lost: set[int] = set()  # actors found lost while the rest of their pack's refs are pending
        self.rows = {"train": data[0], "heldout": data[1]}

    def grow(self, n: int) -> None:
        """Up to `n` actors (at least one: check_schedulable found a node that can hold it)."""
        for _ in range(max(1, n) - len(self.idle) - len(self.busy)):
            self.idle.append(self.cls.remote())

    def free(self) -> bool:
        return bool(self.idle)

    def _call(self, method: str, *args):
        actor = self.idle.pop(0)
        ref = getattr(actor, method).remote(*args)
        self.busy[ref] = actor
        return ref

    def reference(self, results, cell, model_spec, runtime):
        actor = self.idle.pop(0)
        args = (results, cell, model_spec, self.rows, runtime.with_(keep_base=True))
        probe, ref = actor.reference.options(num_returns=2).remote(*args)
        self.busy[ref], self.probes[ref] = actor, probe
        return ref

    def cell(self, cell, model_spec, results, runtime, shared, hooks):
        ref = None if shared is None else [shared]
        return self._call("train", cell, model_spec, self.rows, results, runtime.with_(keep_base=True), ref, hooks)

    def pack(self, cells, model_spec, results, runtime, shared: list, hooks) -> list:
        """One object ref per cell of the pack; the actor is free again once all of them are done."""
        actor = self.idle.pop(0)
        refs = [None if s is None else [s] for s in shared]
        args = (cells, model_spec, self.rows, results, runtime.with_(keep_base=True), refs, hooks)
        out = actor.train_pack.options(num_returns=len(cells)).remote(*args)
        for ref in out:
            self.busy[ref] = actor
        return out

    def done(self, ref) -> bool:
        """Free the actor that computed `ref`. True when it was lost doing so (its worker died, its node is gone):
        it is killed for good and a new actor takes its place, wherever Ray finds a free slot."""
        import ray

        actor = self.busy.pop(ref, None)
        if actor is None:
            return False
        lost = False
        try:
            ray.get(self.probes.pop(ref, ref))  # a cell's small cell.json, or a reference job's probe
        except ray.exceptions.RayActorError:
            lost = True
        except Exception:  # noqa: BLE001 - the job's own error: the runner records it
            pass
        if lost:
            self.lost.add(id(actor))
        if any(a is actor for a in self.busy.values()):  # the rest of its pack: the last one frees or replaces it
            return lost
        if id(actor) in self.lost:
            self.lost.discard(id(actor))
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            self.idle.append(self.cls.remote())
        else:
            self.idle.append(actor)
        return lost

    def close(self) -> None:
        """Kill every actor: idle ones at once, busy ones after the runner's stop grace period (their cells have
        seen STOP or are past saving). The driver's Ray shutdown would end them too; killing here frees the slots
        for what follows in this process (the judge, replication's second round)."""
        import ray

        for actor in [*self.idle, *self.busy.values()]:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.idle, self.busy = [], {}
