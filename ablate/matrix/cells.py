"""Expand a MatrixSpec into cells, each with a content-hashed id, and name them.

A cell's id hashes everything that changes its result (ablate/config.py CellConfig): resolved parameters,
training settings, model identity, data content hashes and the package version. Same inputs → same id,
on any machine. A *configuration* is a cell's parameters without its seed; its label and id are made
here, once, written to plan.json, and read back as columns by everything downstream.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .. import __version__, objectives
from ..config import CellConfig, DataConfig, stable_hash
from ..schema import MatrixSpec, yaml_number_hint

AXES = ("objective", "lora_rank", "seed", "lr", "epochs", "truncate")
# Axis values that train exactly as before the axis existed: left out of the id, so older cells keep theirs.
NEUTRAL_AXES = {"truncate": "none"}
MAX_CELLS = 10_000  # per matrix unless ABLATE_MAX_CELLS says otherwise (README, "Matrix reference")
KEYS = (*AXES, *objectives.knob_columns())  # what exclude and decision.baseline may name


@dataclass(frozen=True)
class Cell:
    config: CellConfig
    params: dict[str, Any]  # as the matrix lists them (γ/β kept beside γ); config.params is what is hashed
    label_keys: tuple[str, ...] = ()  # lr / epochs, named in labels when the matrix varies them
    replicated: bool = False  # added by adaptive replication, not listed in the matrix

    @cached_property  # hashed once per cell: plan.json, status and the runner all ask
    def id(self) -> str:
        return self.config.id

    @property
    def label(self) -> str:
        return cell_label(self.params, self.label_keys)

    @property
    def config_label(self) -> str:
        return config_label(self.params, self.label_keys)

    @cached_property
    def config_id(self) -> str:
        return config_id(self.config.to_json())


def with_seed(cell: Cell, seed: int) -> Cell:
    """The same configuration trained with another seed (adaptive replication): a new cell with its own id."""
    config = dataclasses.replace(cell.config, params={**cell.config.params, "seed": seed})
    return Cell(config, {**cell.params, "seed": seed}, cell.label_keys, replicated=True)


def config_label(p: dict[str, Any], extra: tuple[str, ...] = ()) -> str:
    """`simpo r8 β2 γ0.5` (plus lr…/ep… when the matrix varies them): a configuration's name."""
    parts = [str(p["objective"]), f"r{p['lora_rank']}"]
    for k, sym in objectives.symbols().items():
        # skip None and NaN (absent knobs read back from Parquet) and knobs at their neutral value
        if p.get(k) is not None and p[k] == p[k] and not objectives.is_neutral(p["objective"], k, p[k]):
            parts.append(f"{sym}{p[k]:g}")
    if p.get("truncate") == "equal":
        parts.append("poet")
    parts += [f"{'lr' if k == 'lr' else 'ep'}{p[k]:g}" for k in extra]
    return " ".join(parts)


def cell_label(p: dict[str, Any], extra: tuple[str, ...] = ()) -> str:
    return f"{config_label(p, extra)} s{p['seed']}"


def config_id(hashed: dict[str, Any]) -> str:
    """The id of a cell's configuration: its hashed config without the seed, so seeds of one recipe share it."""
    return stable_hash({**hashed, "params": {k: v for k, v in hashed["params"].items() if k != "seed"}})


def matches(params: dict[str, Any], keys: dict[str, Any]) -> bool:
    """True when a cell's parameters have every key's value (exclude entries and decision.baseline)."""
    return all(params.get(k) == v for k, v in keys.items())


def max_cells() -> int:
    """The cell-count limit: MAX_CELLS, or ABLATE_MAX_CELLS from the environment (not the matrix, so a shared
    file cannot raise its own limit)."""
    raw = os.environ.get("ABLATE_MAX_CELLS", "").strip()
    if not raw:
        return MAX_CELLS
    if not raw.isdigit() or int(raw) < 1:
        from ..errors import UserError

        raise UserError([f"ABLATE_MAX_CELLS={raw!r}: must be a positive whole number of cells, e.g. 50000"])
    return int(raw)


def cell_count(spec: MatrixSpec) -> tuple[int, str]:
    """How many cells the axes make before `exclude`, and the product that makes them, computed without
    building one: '2 lora_rank × 5000 seed × (dpo: 1 + simpo: 1)'."""
    ax = spec.matrix
    shared = [(k, len(getattr(ax, k))) for k in AXES[1:] if getattr(ax, k) is not None]
    per: list[tuple[str, int, str]] = []
    for name in ax.objective:
        settings = getattr(spec.objectives, name)
        # every listed knob multiplies (SimPO's gamma and gamma_beta_ratio are never both given)
        fields = [(f.alias or n, getattr(settings, n)) for n, f in type(settings).model_fields.items()]
        lists = [(k, len(v) if isinstance(v, list) else 1) for k, v in fields if v is not None]
        per.append((name, math.prod(n for _, n in lists), " × ".join(f"{n:,} {k}" for k, n in lists if n > 1)))
    total = math.prod(n for _, n in shared) * sum(n for _, n, _ in per)
    objectives_part = " + ".join(f"{name}: {how or 1}" for name, _, how in per)
    parts = [f"{n:,} {k}" for k, n in shared if n > 1] + [f"({objectives_part})" if len(per) > 1 else objectives_part]
    return total, " × ".join(parts)


def size_problems(spec: MatrixSpec) -> list[tuple[tuple, str]]:
    """A matrix above the cell limit, refused before a single cell is built."""
    total, how = cell_count(spec)
    limit = max_cells()
    if total <= limit:
        return []
    return [
        (
            ("matrix",),
            f"makes {total:,} cells ({how}, before exclude); ablate runs at most {limit:,} cells per matrix. "
            f"Shorten the longest axes, or raise the limit with the environment variable ABLATE_MAX_CELLS={total} "
            "if you mean it",
        )
    ]


def _or_none(axis: list | None) -> list:
    """An optional axis: its values, or one None (the train block's value) when the matrix does not vary it."""
    return list(axis) if axis is not None else [None]


def _expand_all(spec: MatrixSpec, model_identity: dict[str, Any], data_hashes: dict[str, str]) -> list[Cell]:
    ax = spec.matrix
    data = DataConfig(dict(data_hashes), spec.data.max_length, spec.data.prompt_budget)
    varied = tuple(k for k in ("lr", "epochs") if getattr(ax, k) is not None)
    cells: list[Cell] = []
    recipes: dict[tuple, Any] = {}  # one validated recipe per (lr, epochs), not one per cell: 10,000 cells stay fast
    for objective, rank, seed, lr, epochs, truncate in itertools.product(
        ax.objective, ax.lora_rank, ax.seed, _or_none(ax.lr), _or_none(ax.epochs), ax.truncate or ["none"]
    ):
        for knobs in getattr(spec.objectives, objective).variants():
            params = {
                "objective": objective,
                "lora_rank": rank,
                "seed": seed,
                **knobs,
                "lr": lr if lr is not None else spec.train.lr,
                "epochs": epochs if epochs is not None else spec.train.epochs,
                "truncate": truncate,
            }
            hashed = {
                k: v
                for k, v in params.items()
                if (k in AXES or k in objectives.get(objective).knobs)
                and NEUTRAL_AXES.get(k, ...) != v
                and not objectives.is_neutral(objective, k, v)
            }
            key = (params["lr"], params["epochs"])
            if key not in recipes:
                recipes[key] = spec.train.recipe(lr=params["lr"], epochs=params["epochs"])
            config = CellConfig(
                hashed,
                recipes[key],
                dict(model_identity),
                data,
                __version__,
                spec.eval.generate,
            )
            cells.append(Cell(config, params, varied))
    return cells


def expand(spec: MatrixSpec, model_identity: dict[str, Any], data_hashes: dict[str, str]) -> list[Cell]:
    """The product of the matrix axes (with per-objective knobs), minus exclusions, in a stable order."""
    return [
        c
        for c in _expand_all(spec, model_identity, data_hashes)
        if not any(matches(c.params, ex) for ex in spec.exclude)
    ]


def baseline_keys(spec: MatrixSpec) -> dict[str, Any]:
    """`decision.baseline`, or by default the first objective and rank listed."""
    return dict(spec.decision.baseline) or {
        "objective": spec.matrix.objective[0],
        "lora_rank": spec.matrix.lora_rank[0],
    }


def baseline_cells(cells: list[Cell], spec: MatrixSpec) -> list[Cell]:
    """Cells of the baseline configuration (all its seeds)."""
    base = baseline_keys(spec)
    return [c for c in cells if matches(c.params, base)]


def selection_problems(spec: MatrixSpec) -> list[tuple[tuple, str]]:
    """exclude and decision.baseline against the cells the matrix really has, as (field location, message)."""
    problems: list[tuple[tuple, str]] = []
    for i, ex in enumerate(spec.exclude):
        bad = sorted(set(ex) - set(KEYS))
        if bad:
            problems.append((("exclude", i, bad[0]), f"unknown keys {bad}; allowed: {', '.join(KEYS)}"))
        elif not ex:
            problems.append(
                (("exclude", i), f"an empty entry would exclude every cell; give keys among {', '.join(KEYS)}")
            )
    base = dict(spec.decision.baseline)
    bad = sorted(set(base) - set(KEYS))
    if bad:
        problems.append((("decision", "baseline", bad[0]), f"unknown keys {bad}; allowed: {', '.join(KEYS)}"))
    if problems:
        return problems
    problems = size_problems(spec)  # before building millions of cells
    if problems:
        return problems

    every = _expand_all(spec, {}, {})
    everything = [c.params for c in every]
    kept = [c for c in every if not any(matches(c.params, ex) for ex in spec.exclude)]
    if not kept:
        return [(("exclude",), f"removes every cell of the matrix ({len(everything)}); keep at least one cell to run")]

    default = not base
    base = baseline_keys(spec)
    mine = [p for p in everything if p["objective"] == base.get("objective")]
    for key, val in base.items():  # a value no cell has (of the baseline's objective, for its knobs)
        pool, whose = (mine, f"the {base['objective']} cells") if key not in AXES and mine else (everything, "any cell")
        values = sorted({p[key] for p in pool if key in p}, key=str)
        if val in values:
            continue
        hint = yaml_number_hint(val)
        if key in AXES and getattr(spec.matrix, key) is not None:
            msg = f"{val!r} is not in matrix.{key} {getattr(spec.matrix, key)}{hint}"
        elif not values:
            owners = sorted({p["objective"] for p in everything if key in p})
            msg = (
                f"{key} does not apply to {whose} ({key} belongs to {', '.join(owners)})"
                if owners
                else f"no cell has {key}: no objective in this matrix uses it"
                + (f" ({key} belongs to {', '.join(objectives.owners(key))})" if objectives.owners(key) else "")
            )
        else:
            msg = f"{val!r} is not a {key} of {whose}; allowed: {values}{hint}"
        problems.append((("decision", "baseline", key), msg))
    if problems:
        return problems

    what = f"the default baseline {base} (first objective and rank listed)" if default else str(base)
    named = [p for p in everything if matches(p, base)]
    chosen = [c for c in kept if matches(c.params, base)]
    configs = list(dict.fromkeys(c.config_label for c in chosen))
    choices = ", ".join(list(dict.fromkeys(c.config_label for c in kept[:1000]))[:6])  # a few examples suffice
    if not named:
        problems.append(
            (("decision", "baseline"), f"{what} matches no cell of the matrix; choose a baseline among: {choices}")
        )
    elif not chosen:
        by = sorted({i for i, ex in enumerate(spec.exclude) for p in named if matches(p, ex)})
        problems.append(
            (
                ("decision", "baseline"),
                f"{what}: {', '.join(f'exclude[{i}]' for i in by)} removes every cell it names; "
                f"choose a baseline among the cells that run: {choices}",
            )
        )
    elif len(configs) > 1:
        problems.append(
            (
                ("decision", "baseline"),
                f"{what} matches {len(configs)} configurations ({'; '.join(configs[:6])}); "
                "add keys such as beta until it names one",
            )
        )
    return problems
