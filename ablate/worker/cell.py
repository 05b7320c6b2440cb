"""What runs on a Ray worker around the recipe: a heartbeat, OOM retries at a smaller micro-batch,
checkpoints, and writing and publishing the cell (or its failure) to the results store.

Exceptions from user data or code are recorded, not re-raised, so Ray's retries are spent only on lost
workers and nodes; a retried cell resumes from its last checkpoint.
"""

from __future__ import annotations

import gc
import io
import json
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from ..config import CellConfig, Runtime
from ..results import storage
from ..results.lock import LOCK
from ..results.storage import UNTRAINED, Store
from ..schema import ModelSpec
from .checkpoint import Checkpointer
from .faults import Faults
from .generate import CellGeneration
from .logps import reference_logps
from .recipe import CellResult, Recipe, TrainState

T = TypeVar("T")


class OutOfMemory(Exception):
    def __init__(self, size: int, halvings: int):
        self.size, self.halvings = size, halvings
        super().__init__(f"out of GPU memory at batch size {size} after {halvings} halving(s)")


def halving_on_oom(attempt: Callable[[int], T], size: int, max_halvings: int) -> tuple[T, int, int]:
    """attempt(size); on a CUDA out-of-memory error free the memory and try again at half the size, up to
    `max_halvings` times (and never below 1). Returns (result, the size that worked, halvings)."""
    halvings = 0
    while True:
        try:
            return attempt(size), size, halvings
        except torch.OutOfMemoryError as e:
            if halvings >= max_halvings or size == 1:
                raise OutOfMemory(size, halvings) from e  # the traceback keeps the CUDA error
            size, halvings = max(1, size // 2), halvings + 1
            _free_memory()


def shared_reference(
    results: str, cell: CellConfig, model_spec: ModelSpec, train_rows, heldout_rows, runtime: Runtime
) -> dict:
    """The reference log-probs for the cell's reference key, computed once per matrix and kept in refcache/."""
    store = Store(results)
    rel = f"refcache/{cell.reference_key(runtime)}.pt"
    try:
        ref = torch.load(io.BytesIO(store.read_bytes(rel)), weights_only=True)
        if not store.exists(UNTRAINED):
            write_untrained(store, ref["heldout"])
        return ref
    except FileNotFoundError:
        pass
    # An OOM here would fail every cell that needs it: retry at half the batch, down to 1.
    ref, _, _ = halving_on_oom(
        lambda bs: reference_logps(cell, model_spec, train_rows, heldout_rows, runtime.with_(eval_batch_size=bs)),
        runtime.eval_batch_size or cell.train.eval_batch_size,
        max_halvings=64,
    )
    buf = io.BytesIO()
    torch.save(ref, buf)
    store.write_bytes(rel, buf.getvalue())
    write_untrained(store, ref["heldout"])
    return ref


def write_untrained(store: Store, held: dict) -> None:
    """The base model's own held-out log-probs, one row per pair: the report's `base (untrained)` row."""
    import pandas as pd

    df = pd.DataFrame({
        "pair": range(len(held["c_sum"])),
        "chosen_logp_sum": held["c_sum"].numpy(), "rejected_logp_sum": held["r_sum"].numpy(),
        "chosen_logp_avg": held["c_avg"].numpy(), "rejected_logp_avg": held["r_avg"].numpy(),
        "chosen_len": held["c_len"].numpy().astype("int64"), "rejected_len": held["r_len"].numpy().astype("int64"),
    })  # fmt: skip
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    store.write_bytes(UNTRAINED, buf.getvalue())


class StopRequested(BaseException):
    """The driver is stopping the run (results/STOP): end this cell now, unpublished. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` records it as the cell's failure."""


class Heartbeat:
    """Keeps running/<cell id>.json fresh so `ablate status` can tell a training cell from a dead one, and
    watches for the driver's STOP marker. Progress is written at most once a second, the marker at least
    every HEARTBEAT_S; STOP is looked for every second (every 5 s on an object store: one request each).

    It also watches the results lock: a worker can outlive its killed driver for a few seconds (longer on a
    shared cluster), and once another driver holds the lock this cell is an orphan. It then writes nothing
    more (no marker, no checkpoint, no result) and ends as if stopped: the new driver trains it."""

    def __init__(self, store: Store, cell_id: str, info: dict, run_token: str | None = None):
        self.store, self.cell_id, self.info, self.run_token = store, cell_id, dict(info), run_token
        self.orphaned = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"heartbeat-{cell_id}")
        self._written, self._changed = 0.0, False
        self.stop_requested, self._looked, self._look_every = False, 0.0, 1.0 if store.local else 5.0

    def start(self) -> Heartbeat:
        self._write()
        self._look_for_stop()
        self._thread.start()
        return self

    def _look_for_stop(self) -> None:
        self._looked = time.time()
        try:
            self.stop_requested = self.stop_requested or self.store.exists(storage.STOP)
            if self.run_token and not self.orphaned:
                holder = self.store.read_json(LOCK)
                self.orphaned = isinstance(holder, dict) and holder.get("token") not in (None, self.run_token)
                self.stop_requested = self.stop_requested or self.orphaned
        except OSError:
            pass  # a transient store error; the next look retries

    def progress(self, step: int, total: int, last: dict | None = None) -> None:
        """Step, total steps, and the last logged training loss and margin (for `ablate status`)."""
        self.info.update(step=step, total_steps=total)
        if last:
            self.info.update(loss=last.get("loss"), margin=last.get("rewards/margins"))
        self._changed = True

    def _write(self) -> None:
        if self._stop.is_set() or self.orphaned:  # never resurrect a marker after stop() removed it
            return
        self._changed, self._written = False, time.time()
        try:
            storage.write_running(self.store, self.cell_id, self.info)
        except OSError:
            pass  # a transient store error; the next beat retries

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            if time.time() - self._looked >= self._look_every:  # first: an orphan must not write once more
                self._look_for_stop()
            if self._changed or time.time() - self._written >= storage.HEARTBEAT_S:
                self._write()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.orphaned:  # the marker, if any, is the new driver's now
            return
        try:
            storage.clear_running(self.store, self.cell_id)
        except OSError:
            pass  # a stale marker expires by itself; it must not turn a published cell into a failure


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - informational only
        return None


class _Hooks:
    """What the worker does after each step: checkpoint, report progress, and (in tests) inject faults."""

    def __init__(self, checkpoint: Checkpointer, beat: Heartbeat, resumed: bool, gen: CellGeneration | None = None):
        self.checkpoint, self.beat, self.resumed, self.gen = checkpoint, beat, resumed, gen
        self.faults = Faults.from_env()

    def before_batch(self, micro: int) -> None:
        self.faults.before_batch(micro)

    def after_step(self, recipe: Recipe, state: TrainState, total_steps: int) -> None:
        if self.gen:  # generations at held-out evals go into the state, so a checkpoint keeps them
            self.gen.after_step(recipe, state)
        if self.beat.orphaned:  # another driver owns the results now: not even a checkpoint
            raise StopRequested
        if state.step < total_steps and not state.stopped_early and self.checkpoint.due(state.step):
            self.checkpoint.save(recipe, state)
        self.beat.progress(state.step, total_steps, state.train_log[-1] if state.train_log else None)
        if self.beat.stop_requested:
            raise StopRequested
        self.faults.after_step(state.step, recipe.cell.objective, self.resumed, recipe.cell.id)


def stage(result: CellResult, recipe: Recipe, staging: Path) -> None:
    """Write a trained cell's logs, per-pair rows and adapter into its staging folder."""
    (staging / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in result.train_log))
    (staging / "eval_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in result.eval_log))
    result.pairs.to_parquet(staging / "pairs.parquet", index=False)
    recipe.save_adapter(staging / "adapter")


def new_cell_json(cell: CellConfig, model_spec: ModelSpec, node: str | None) -> dict:
    return {
        "id": cell.id,
        "params": cell.params,
        "config": cell.to_json(),
        "model_spec": model_spec.model_dump(mode="json"),
        "status": "running",
        "torch_version": str(torch.__version__),
        "node_id": node,
        "started_at": time.time(),
    }


def publish_done(store: Store, cell_json: dict, staging: Path, summary: dict, ooms: int) -> dict:
    """Publish a trained cell (its staging folder becomes cells/<id>); returns its cell.json, or the one an
    earlier attempt published first."""
    cell_json.update(status="done", oom_retries=ooms, finished_at=time.time(), **summary)
    (staging / "cell.json").write_text(storage.dump_json(cell_json))
    if not storage.publish_cell(store, cell_json["id"], staging):  # another attempt finished first: theirs
        return storage.read_cell_json(store, cell_json["id"]) or cell_json
    return cell_json


def train_and_stage(
    cell: CellConfig,
    model_spec: ModelSpec,
    train_rows,
    heldout_rows,
    runtime: Runtime,
    staging: Path,
    micro: int,
    ref: dict | None,
    checkpoint: Checkpointer,
    beat: Heartbeat,
) -> CellResult:
    """Set up, train (from the last checkpoint if there is one) and evaluate; write the cell's files to staging."""
    recipe = Recipe(cell, model_spec, runtime, micro_batch=micro)
    try:
        recipe.setup(train_rows, heldout_rows, ref)
        state = checkpoint.restore(recipe)
        resumed_from = state.step if state else None
        gen = CellGeneration.maybe(cell, model_spec, heldout_rows)
        state = recipe.train(state or TrainState(), _Hooks(checkpoint, beat, resumed_from is not None, gen))
        result = recipe.finish(state, resumed_from)
        stage(result, recipe, staging)
        if gen:  # last: the final generation may merge the adapter into the weights
            result.summary.update(gen.finish(recipe, state, staging))
        return result
    finally:  # done, failed, out of memory or stopped: a kept base goes back as it was (worker/bases.py)
        recipe.release()


def run_cell(
    cell: CellConfig,
    model_spec: ModelSpec,
    train_rows: list[dict],
    heldout_rows: list[dict],
    results: str,
    runtime: Runtime | None = None,
    ref: dict | None = None,
) -> dict:
    """Train one cell and publish it; on an exception, publish the failure with its traceback.

    Returns the cell.json content. A CUDA out-of-memory error retries the cell at half the micro-batch and
    twice the gradient accumulation (same effective batch), up to `max_oom_retries` times.
    """
    runtime = runtime or Runtime()
    store, cell_id, t = Store(results), cell.id, cell.train
    node = _node_id()
    cell_json = new_cell_json(cell, model_spec, node)
    info = {**storage.host_info(), "node_id": node, "started": time.time()}
    beat = Heartbeat(store, cell_id, info, runtime.run_token).start()
    ckpt = Checkpointer(store, cell_id, runtime.checkpoint_every_steps)
    staged: list[Path] = []

    def attempt(micro: int) -> CellResult:
        staging = storage.new_cell_staging(store, cell_id)
        staged.append(staging)
        eval_bs = max(1, (runtime.eval_batch_size or t.eval_batch_size) >> (len(staged) - 1))  # halved with micro
        try:
            return train_and_stage(
                cell,
                model_spec,
                train_rows,
                heldout_rows,
                runtime.with_(eval_batch_size=eval_bs),
                staging,
                micro,
                ref,
                ckpt,
                beat,
            )
        except BaseException:
            _discard(staging)
            raise

    try:
        if beat.stop_requested:  # queued before the driver stopped the run: end before loading anything
            raise StopRequested
        try:
            result, micro, ooms = halving_on_oom(attempt, t.batch_size // t.grad_accum, runtime.max_oom_retries)
        except OutOfMemory as e:
            cell_json.update(
                status="failed",
                error_type="OutOfMemoryError",
                oom_retries=e.halvings,
                micro_batch=e.size,
                error=f"out of GPU memory at micro-batch {e.size} after {e.halvings} halving(s) "
                f"(batch_size {t.batch_size}); lower data.max_length or "
                "train.batch_size, set train.gradient_checkpointing, or ask for more GPU",
            )
            storage.publish_failure(store, cell_id, cell_json, traceback.format_exc())
            return cell_json
        except Exception as e:  # noqa: BLE001 - every failure is recorded with its traceback
            if storage.unwritable(store, e):
                raise  # the store refuses writes: the failure could not be recorded either (below)
            cell_json.update(
                status="failed", error_type=type(e).__name__, error=str(e).splitlines()[0] if str(e) else ""
            )
            storage.publish_failure(store, cell_id, cell_json, traceback.format_exc())
            return cell_json
        return publish_done(store, cell_json, staged[-1], result.summary, ooms)
    except StopRequested:  # its staging folder is gone already (attempt); the cell stays pending
        return {"id": cell_id, "status": "stopped"}
    except Exception as e:
        reason = storage.unwritable(store, e)
        if reason:  # full, read-only: nothing about this cell can be written; the driver stops the run
            raise storage.ResultsUnwritable(reason) from None
        raise
    finally:
        beat.stop()


def _discard(staging) -> None:
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    _free_memory()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
