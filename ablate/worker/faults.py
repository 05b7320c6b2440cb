"""Fault injection for the failure tests, read from the environment once per cell; never set in normal use.

ABLATE_TEST_KILL_AT_STEP=N    the worker dies like a preempted node (no cleanup, no exception) at step N of a
                              cell's first attempt, so a retry resumes from its checkpoint
ABLATE_TEST_RAISE_AT=obj@N    cells of objective `obj` raise at step N, like bad data found mid-training
ABLATE_TEST_OOM_ABOVE=M       a micro-batch above M raises torch.OutOfMemoryError, as a GPU would
ABLATE_TEST_GATE=PATH         after each step a cell waits while the file PATH exists (holds cells mid-training),
                              unless PATH-<cell id> exists too (a pass that releases that one cell)
ABLATE_TEST_BARRIER=DIR:N     after step 1 a cell checks in under DIR and waits until N cells have (they run
                              side by side, or the cell fails after BARRIER_S)
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

BARRIER_S = GATE_S = 300.0  # generous: a test waits on the event, never on a guess of how long it takes


@dataclass(frozen=True)
class Faults:
    kill_at_step: int | None = None
    raise_objective: str | None = None
    raise_at_step: int | None = None
    oom_above: int | None = None
    gate: str | None = None
    barrier: str | None = None

    @classmethod
    def from_env(cls) -> Faults:
        env = os.environ
        target, _, at = env.get("ABLATE_TEST_RAISE_AT", "").partition("@")
        num = lambda k: int(env[k]) if env.get(k) else None  # noqa: E731
        return cls(
            num("ABLATE_TEST_KILL_AT_STEP"),
            target or None,
            int(at) if at else None,
            num("ABLATE_TEST_OOM_ABOVE"),
            env.get("ABLATE_TEST_GATE") or None,
            env.get("ABLATE_TEST_BARRIER") or None,
        )

    def before_batch(self, micro: int) -> None:
        if self.oom_above is not None and micro > self.oom_above:
            import torch

            raise torch.OutOfMemoryError(f"simulated CUDA out of memory at micro-batch {micro} (ABLATE_TEST_OOM_ABOVE)")

    def after_step(self, step: int, objective: str, resumed: bool, cell_id: str = "") -> None:
        if self.kill_at_step is not None and step == self.kill_at_step and not resumed:
            os._exit(137)
        if objective == self.raise_objective and step == self.raise_at_step:
            raise ValueError(f"simulated bad batch at step {step} (ABLATE_TEST_RAISE_AT)")
        deadline = time.monotonic() + GATE_S
        gate, release = self.gate, f"{self.gate}-{cell_id}"
        while gate and os.path.exists(gate) and not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.barrier and step == 1 and not resumed:
            where, _, n = self.barrier.rpartition(":")
            open(os.path.join(where, f"{os.getpid()}-{uuid.uuid4().hex[:6]}"), "w").close()
            while len(os.listdir(where)) < int(n):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ABLATE_TEST_BARRIER: {len(os.listdir(where))} of {n} cells ran side by side")
                time.sleep(0.05)
