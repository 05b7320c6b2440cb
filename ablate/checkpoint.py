"""Mid-cell checkpoints: everything needed to continue a cell exactly where it stopped.

A checkpoint holds the adapter weights, optimizer, scheduler, every RNG (Python, torch, CUDA and the
data-order generator), the data position and the logs so far. It lives in the results store
(checkpoints/<cell id>.pt), so a cell retried on another node after its node was lost resumes there.
On CPU a resumed cell ends with exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import io
import random
from typing import Callable

import torch

from .storage import Store, checkpoint_key


class Checkpointer:
    def __init__(self, store: Store, cell_id: str, every: int | None,
                 on_progress: Callable[[int, int], None] | None = None):
        self.store, self.key, self.every, self.on_progress = store, checkpoint_key(cell_id), every, on_progress

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def progress(self, step: int, total: int) -> None:
        if self.on_progress:
            self.on_progress(step, total)

    def save(self, model, opt, sched, gen: torch.Generator, state: dict) -> None:
        blob = {
            "adapter": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": {"python": random.getstate(), "torch": torch.get_rng_state(), "data": gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "state": state,
        }
        buf = io.BytesIO()
        torch.save(blob, buf)
        self.store.write_bytes(self.key, buf.getvalue())

    def restore(self, model, opt, sched, gen: torch.Generator, state: dict) -> int | None:
        """Load the last checkpoint into the given objects; return its step, or None if there is none."""
        try:
            raw = self.store.read_bytes(self.key)
        except FileNotFoundError:
            return None
        blob = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in blob["adapter"].items():
                params[n].copy_(v)
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        rng = blob["rng"]
        random.setstate(_as_tuple(rng["python"]))
        torch.set_rng_state(rng["torch"])
        gen.set_state(rng["data"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        state.update(blob["state"])
        return state["step"]


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
