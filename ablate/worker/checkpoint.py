"""Mid-cell checkpoints: everything needed to continue a cell exactly where it stopped.

A checkpoint holds the adapter weights, optimizer, scheduler, every RNG (Python, torch, CUDA and the
data-order generator), the data position and the logs so far. It lives in the results store
(checkpoints/<cell id>.pt), so a cell retried on another node after its node was lost resumes there.
On CPU a resumed cell ends with exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import io
import random

import torch

from ..results.storage import Store, checkpoint_key
from .recipe import Recipe, TrainState


class Checkpointer:
    def __init__(self, store: Store, cell_id: str, every: int | None):
        self.store, self.key, self.every = store, checkpoint_key(cell_id), every

    def due(self, step: int) -> bool:
        return self.every is not None and self.every > 0 and step % self.every == 0

    def save(self, recipe: Recipe, state: TrainState) -> None:
        blob = {
            "adapter": {n: p.detach().cpu() for n, p in recipe.adapter_params().items()},
            "optimizer": recipe.opt.state_dict(),
            "scheduler": recipe.sched.state_dict(),
            "rng": {
                "python": random.getstate(),
                "torch": torch.get_rng_state(),
                "data": recipe.gen.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "state": state.state_dict(),
        }
        buf = io.BytesIO()
        torch.save(blob, buf)
        self.store.write_bytes(self.key, buf.getvalue())

    def restore(self, recipe: Recipe) -> TrainState | None:
        """Load the last checkpoint into the recipe's model, optimizer, scheduler and RNGs; return its training
        state, or None if there is none."""
        try:
            raw = self.store.read_bytes(self.key)
        except FileNotFoundError:
            return None
        opt, sched, gen = recipe.opt, recipe.sched, recipe.gen
        blob = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        params = recipe.adapter_params()
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
        return TrainState.from_state_dict(blob["state"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
