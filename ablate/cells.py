"""Expand a MatrixSpec into cells, each with a content-hashed id.

A cell's id hashes everything that changes its result: resolved parameters, training settings,
model identity, data content hashes and the package version. Same inputs → same id, on any machine.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .spec import MatrixSpec

# Per-objective knobs; a list in `objectives.<name>` adds an axis to that objective's cells only.
OBJECTIVE_KNOBS = {"dpo": ("beta",), "simpo": ("beta", "gamma"), "orpo": ("lambda",)}


@dataclass(frozen=True)
class Cell:
    id: str
    params: dict[str, Any]  # objective, lora_rank, seed, lr, epochs + the objective's knobs
    config: dict[str, Any] = field(repr=False)  # everything run_cell needs, and exactly what is hashed
    label_keys: tuple[str, ...] = ()  # lr / epochs, named in the label when the matrix varies them

    @property
    def label(self) -> str:
        return cell_label(self.params, self.label_keys)


def cell_label(p: dict[str, Any], extra: tuple[str, ...] = ()) -> str:
    parts = [str(p["objective"]), f"r{p['lora_rank']}"]
    for k, sym in (("beta", "β"), ("gamma", "γ"), ("lambda", "λ")):
        if p.get(k) is not None and p[k] == p[k]:  # skip None and NaN (absent knobs read back from Parquet)
            parts.append(f"{sym}{p[k]:g}")
    parts += [f"{'lr' if k == 'lr' else 'ep'}{p[k]:g}" for k in extra]
    parts.append(f"s{p['seed']}")
    return " ".join(parts)


def stable_hash(obj: Any, n: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def _objective_variants(spec: MatrixSpec, objective: str) -> list[dict[str, Any]]:
    o = spec.objectives
    if objective == "dpo":
        return [{"beta": b} for b in o.dpo.beta]
    if objective == "orpo":
        return [{"lambda": lam} for lam in o.orpo.lambda_]
    s = o.simpo
    if s.gamma_beta_ratio is not None:
        return [
            {"beta": b, "gamma": round(r * b, 12), "gamma_beta_ratio": r}
            for b, r in itertools.product(s.beta, s.gamma_beta_ratio)
        ]
    return [{"beta": b, "gamma": g} for b, g in itertools.product(s.beta, s.gamma if s.gamma is not None else [0.5])]


def _excluded(params: dict[str, Any], spec: MatrixSpec) -> bool:
    return any(all(params.get(k) == v for k, v in ex.items()) for ex in spec.exclude)


# Train settings that change speed or resilience but not results: not part of a cell's identity.
RUNTIME_FIELDS = {"checkpoint_every_steps", "gradient_checkpointing", "attention", "compile", "share_prompt"}


def expand(spec: MatrixSpec, model_identity: dict[str, Any], data_hashes: dict[str, str]) -> list[Cell]:
    """The product of the matrix axes (with per-objective knobs), minus exclusions, in a stable order."""
    ax = spec.matrix
    train = spec.train.model_dump(mode="json", exclude=RUNTIME_FIELDS)
    cells: list[Cell] = []
    for objective, rank, seed, lr, epochs in itertools.product(
        ax.objective, ax.lora_rank, ax.seed, ax.lr or [None], ax.epochs or [None]
    ):
        for knobs in _objective_variants(spec, objective):
            params = {"objective": objective, "lora_rank": rank, "seed": seed, **knobs}
            params["lr"] = lr if lr is not None else spec.train.lr
            params["epochs"] = epochs if epochs is not None else spec.train.epochs
            if _excluded(params, spec):
                continue
            hashed_params = {k: v for k, v in params.items() if k != "gamma_beta_ratio"}  # γ is already resolved
            cell_train = {**train, "lr": params["lr"], "epochs": params["epochs"]}
            config = {
                "params": hashed_params,
                "train": cell_train,
                "model": model_identity,
                "data": {
                    "hashes": data_hashes,
                    "max_length": spec.data.max_length,
                    "prompt_budget": spec.data.prompt_budget,
                },
                "ablate_version": __version__,
            }
            varied = tuple(k for k in ("lr", "epochs") if getattr(ax, k) is not None)
            cells.append(Cell(id=stable_hash(config), params=params, config=config, label_keys=varied))
    return cells


def baseline_cells(cells: list[Cell], spec: MatrixSpec) -> list[Cell]:
    """Cells matching `decision.baseline` (all seeds); default: the first objective and rank listed."""
    base = dict(spec.decision.baseline) or {
        "objective": spec.matrix.objective[0],
        "lora_rank": spec.matrix.lora_rank[0],
    }
    return [c for c in cells if all(c.params.get(k) == v for k, v in base.items())]
