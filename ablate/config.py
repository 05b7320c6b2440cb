"""What the driver hands a worker: typed, frozen settings instead of dicts.

`CellConfig` is everything that decides a cell's numbers, and exactly what its id hashes. `Runtime` is how
a cell runs (device, threads, attention kernel, checkpoints, OOM retries): it changes speed or resilience,
never the numbers beyond float rounding, so it is not part of the id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Literal

from .schema import GenerateSpec, TrainRecipe


def stable_hash(obj: Any, n: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


@dataclass(frozen=True)
class DataConfig:
    hashes: dict[str, str]  # content hashes of the train and held-out rows
    max_length: int
    prompt_budget: int

    def to_json(self) -> dict[str, Any]:
        return {"hashes": dict(self.hashes), "max_length": self.max_length, "prompt_budget": self.prompt_budget}


@dataclass(frozen=True)
class CellConfig:
    params: dict[str, Any]  # objective, lora_rank, seed, lr, epochs and the objective's knobs (γ resolved)
    train: TrainRecipe  # with this cell's lr and epochs
    model: dict[str, Any]  # model identity: builtin name + init seed, local file hashes, or hub id + revision
    data: DataConfig
    ablate_version: str
    generate: GenerateSpec | None = None  # eval.generate: what the cell writes is one of its outputs

    @property
    def objective(self) -> str:
        return self.params["objective"]

    @property
    def seed(self) -> int:
        return int(self.params["seed"])

    @property
    def rank(self) -> int:
        return int(self.params["lora_rank"])

    @property
    def truncate(self) -> str:
        return self.params.get("truncate", "none")  # left out of params (and the id) at "none"

    def to_json(self) -> dict[str, Any]:
        """The hashed form (also stored in cell.json): the same layout since 0.1, so ids stay stable; `generate`
        is there only when the matrix asks for generations."""
        out = {
            "params": dict(self.params),
            "train": self.train.model_dump(mode="json"),
            "model": dict(self.model),
            "data": self.data.to_json(),
            "ablate_version": self.ablate_version,
        }
        if self.generate is not None:
            out["generate"] = self.generate.model_dump(mode="json")
        return out

    @property
    def id(self) -> str:
        return stable_hash(self.to_json())

    def reference_key(self, runtime: Runtime) -> str:
        """What the reference log-probs depend on: the base model, the data, and how it is cut and batched
        (not rank, β or seed), so one computation serves every cell that needs them."""
        return stable_hash(
            {
                "model": self.model,
                "data": self.data.to_json(),
                "share_prompt": runtime.shares_prompt,
                "ablate_version": self.ablate_version,
                "attention": runtime.attention,
                "eval_batch_size": self.train.eval_batch_size,
                # POET cells score truncated training pairs, so their reference differs (key unchanged otherwise)
                **({"truncate": self.truncate} if self.truncate != "none" else {}),
            }
        )

    def pack_key(self, runtime: Runtime) -> str | None:
        """Cells with the same key can train in one forward pass (worker/pack.py): they differ at most in
        objective, its knobs, rank, seed, lr and epochs. None for a cell that trains alone: one with LoRA dropout
        (one random stream for every cell's masks), compiled or gradient-checkpointed training, and the
        two-rows-per-pair layout (its padding mask takes another attention path when a lone batch has no padding:
        not the same numbers)."""
        t, rt = self.train, runtime
        if t.lora.dropout > 0 or rt.compile or rt.gradient_checkpointing:
            return None
        if not rt.shares_prompt:
            return None
        return stable_hash(
            {
                "reference": self.reference_key(runtime),
                "train": t.model_dump(mode="json", exclude={"lr", "epochs"}),
                "truncate": self.truncate,
                "generate": None if self.generate is None else self.generate.model_dump(mode="json"),
            }
        )


@dataclass(frozen=True)
class Runtime:
    device: Literal["cpu", "cuda", "auto"] = "auto"  # cpu when the cell asked Ray for no GPU
    threads: int = 1
    attention: str = "sdpa"
    compile: bool = False
    share_prompt: bool = True
    gradient_checkpointing: bool = False
    checkpoint_every_steps: int | None = None
    max_oom_retries: int = 2
    eval_batch_size: int | None = None  # halved with the micro-batch after an OOM; None: the recipe's
    keep_base: bool = False  # a long-lived trainer keeps the base model and data between cells (worker/bases.py)
    run_token: str | None = None  # the results lock of the driver that launched the cell (worker/cell.py)

    @property
    def shares_prompt(self) -> bool:
        """The [prompt, chosen, rejected] layout needs a 4-D mask, which flash-attention kernels do not take."""
        return self.share_prompt and self.attention != "flash_attention_2"

    def with_(self, **changes: Any) -> Runtime:
        return replace(self, **changes)
