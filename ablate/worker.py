"""What runs on a Ray worker around the recipe: a heartbeat, OOM retries at a smaller micro-batch,
checkpoints, and publishing the cell (or its failure) to the results store.

Exceptions from user data or code are recorded, not re-raised, so Ray's retries are spent only on lost
workers and nodes; a retried cell resumes from its last checkpoint.
"""

from __future__ import annotations

import gc
import io
import threading
import time
import traceback

import torch

from . import storage
from .cells import stable_hash
from .checkpoint import Checkpointer
from .storage import Store
from .train import reference_logps, share_prompt, train_cell


def reference_key(config: dict, runtime: dict) -> str:
    """What DPO's reference log-probs depend on: the base model, the data and how it is cut and batched."""
    return stable_hash({"model": config["model"], "data": config["data"], "share_prompt": share_prompt(runtime),
                        "ablate_version": config.get("ablate_version"),
                        "attention": runtime.get("attention", "sdpa"),
                        "eval_batch_size": config["train"]["eval_batch_size"]})


def shared_reference(results: str, key: str, config: dict, model_spec: dict, train_rows, heldout_rows,
                     runtime: dict) -> dict:
    """The reference log-probs for `key`, computed once per matrix and kept in refcache/ beside the results."""
    store = Store(results)
    rel = f"refcache/{key}.pt"
    try:
        return torch.load(io.BytesIO(store.read_bytes(rel)), weights_only=True)
    except FileNotFoundError:
        pass
    eval_bs = config["train"]["eval_batch_size"]
    while True:  # an OOM here would fail every DPO cell: retry at half the batch, down to 1
        try:
            ref = reference_logps(model_spec, config, train_rows, heldout_rows, {**runtime, "eval_batch_size": eval_bs})
            break
        except torch.OutOfMemoryError:
            if eval_bs == 1:
                raise
            eval_bs = max(1, eval_bs // 2)
            _free_memory()
    buf = io.BytesIO()
    torch.save(ref, buf)
    store.write_bytes(rel, buf.getvalue())
    return ref


class Heartbeat:
    """Keeps running/<cell id>.json fresh so `ablate status` can tell a training cell from a dead one.
    Progress is written at most once a second, and the marker at least every HEARTBEAT_S."""

    def __init__(self, store: Store, cell_id: str, info: dict):
        self.store, self.cell_id, self.info = store, cell_id, dict(info)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"heartbeat-{cell_id}")
        self._written, self._changed = 0.0, False

    def start(self) -> Heartbeat:
        self._write()
        self._thread.start()
        return self

    def progress(self, step: int, total: int) -> None:
        self.info.update(step=step, total_steps=total)
        self._changed = True

    def _write(self) -> None:
        if self._stop.is_set():  # never resurrect a marker after stop() removed it
            return
        self._changed, self._written = False, time.time()
        try:
            storage.write_running(self.store, self.cell_id, self.info)
        except OSError:
            pass  # a transient store error; the next beat retries

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            if self._changed or time.time() - self._written >= storage.HEARTBEAT_S:
                self._write()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
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


def run_cell(cell_id: str, config: dict, model_spec: dict, train_rows: list[dict], heldout_rows: list[dict],
             results: str, runtime: dict | None = None, ref: dict | None = None) -> dict:
    """Train one cell and publish it; on an exception, publish the failure with its traceback.

    Returns the cell.json content. A CUDA out-of-memory error retries the cell at half the micro-batch and
    twice the gradient accumulation (same effective batch), up to `max_oom_retries` times.
    """
    runtime = runtime or {}
    store = Store(results)
    node = _node_id()
    cell_json = {"id": cell_id, "params": config["params"], "config": config, "model_spec": model_spec,
                 "status": "running", "torch_version": torch.__version__, "node_id": node,
                 "started_at": time.time()}
    beat = Heartbeat(store, cell_id, {**storage.host_info(), "node_id": node, "started": time.time()}).start()
    ckpt = Checkpointer(store, cell_id, runtime.get("checkpoint_every_steps"), on_progress=beat.progress)
    t = config["train"]
    micro, ooms, eval_bs = t["batch_size"] // t["grad_accum"], 0, t["eval_batch_size"]
    try:
        while True:
            staging = storage.new_cell_staging(store, cell_id)
            try:
                summary = train_cell(config, model_spec, train_rows, heldout_rows, staging, ref=ref,
                                     micro_batch=micro, checkpoint=ckpt,
                                     runtime={**runtime, "eval_batch_size": eval_bs})
                break
            except torch.OutOfMemoryError as e:
                _discard(staging)
                if ooms >= runtime.get("max_oom_retries", 2) or micro == 1:
                    cell_json.update(status="failed", error_type="OutOfMemoryError", oom_retries=ooms, micro_batch=micro,
                                     error=f"out of GPU memory at micro-batch {micro} after {ooms} halving(s) "
                                           f"(batch_size {t['batch_size']}); lower data.max_length or "
                                           "train.batch_size, set train.gradient_checkpointing, or ask for more GPU")
                    storage.publish_failure(store, cell_id, cell_json, traceback.format_exc())
                    return cell_json
                micro, eval_bs, ooms = max(1, micro // 2), max(1, eval_bs // 2), ooms + 1
                del e
            except Exception as e:  # noqa: BLE001 - every failure is recorded with its traceback
                _discard(staging)
                cell_json.update(status="failed", error_type=type(e).__name__,
                                 error=str(e).splitlines()[0] if str(e) else "")
                storage.publish_failure(store, cell_id, cell_json, traceback.format_exc())
                return cell_json
        cell_json.update(status="done", oom_retries=ooms, finished_at=time.time(), **summary)
        (staging / "cell.json").write_text(storage.dump_json(cell_json))
        if not storage.publish_cell(store, cell_id, staging):  # another attempt finished first: report theirs
            return storage.read_cell_json(store, cell_id) or cell_json
        return cell_json
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
