"""Turn a matrix file into a runnable plan, or into one list of every problem — before Ray or a model.

The plan holds the validated spec, the data rows and their hashes, the model identity and the cells.
Its `plan.json` in the results directory lets `status` and `report` work without the matrix file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cells import Cell, baseline_cells, expand
from .data import check_leakage, encode, load_rows, rows_hash
from .models import check_model_spec, load_tokenizer, model_identity
from .spec import BuiltinData, MatrixError, MatrixSpec, load_matrix
from .storage import Store, as_store, cell_states, check_results_dir, dump_json, is_uri, join


@dataclass
class Plan:
    spec: MatrixSpec
    cells: list[Cell]
    baseline_ids: list[str]
    train_rows: list[dict]
    heldout_rows: list[dict]
    results: Store

    def status(self) -> dict[str, str]:
        return cell_states(self.results, [c.id for c in self.cells])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "decision": self.spec.decision.model_dump(mode="json"),
            "baseline_ids": self.baseline_ids,
            "cells": [{"id": c.id, "label": c.label, "params": c.params} for c in self.cells],
            "model": self.spec.model.model_dump(mode="json"),
            "data": {"train": self.cells[0].config["data"]["hashes"]["train"] if self.cells else None,
                     "heldout": self.cells[0].config["data"]["hashes"]["heldout"] if self.cells else None},
        }

    def write(self) -> None:
        self.results.write_text("plan.json", dump_json(self.to_json()))


def _source_name(src: BuiltinData | str) -> str:
    return f"builtin:{src.builtin}" if isinstance(src, BuiltinData) else src


def make_plan(matrix: str | Path | MatrixSpec, results: str | Path | None = None, check_tokens: bool = True) -> Plan:
    """Validate a matrix and its data completely; raise one MatrixError listing every problem."""
    spec = matrix if isinstance(matrix, MatrixSpec) else load_matrix(matrix)
    where = str(matrix) if not isinstance(matrix, MatrixSpec) else spec.name
    problems: list[str] = []
    problems += [f"{where}: {p}" for p in check_model_spec(spec.model)]

    rows: dict[str, list[dict]] = {}
    for split in ("train", "heldout"):
        try:
            rows[split] = load_rows(getattr(spec.data, split), split)
        except MatrixError as e:
            problems += e.problems
    if len(rows) == 2:
        problems += check_leakage(rows["train"], rows["heldout"], f"{where}: data")

    root = str(results if results is not None else spec.storage)
    results_dir = join(root, spec.name) if is_uri(root) else Path(root) / spec.name
    problems += [f"{where}: {p}" for p in check_results_dir(results_dir)]

    if check_tokens and len(rows) == 2 and not problems and _tokenizer_is_local(spec):
        tok = load_tokenizer(spec.model)
        for split in ("train", "heldout"):
            try:
                encode(rows[split], tok, spec.data.max_length, spec.data.prompt_budget,
                       f"{where}: data.{split} ({_source_name(getattr(spec.data, split))})")
            except MatrixError as e:
                problems += e.problems
    if problems:
        raise MatrixError(problems)

    hashes = {"train": rows_hash(rows["train"]), "heldout": rows_hash(rows["heldout"])}
    cells = expand(spec, model_identity(spec.model), hashes)
    if not cells:
        raise MatrixError([f"{where}: exclude removes every cell; nothing to run"])
    base = baseline_cells(cells, spec)
    configs = {json.dumps({k: v for k, v in c.params.items() if k != "seed"}, sort_keys=True) for c in base}
    if not base:
        problems.append(f"{where}: decision.baseline {dict(spec.decision.baseline)} matches no cell of the matrix")
    elif len(configs) > 1:
        problems.append(f"{where}: decision.baseline {dict(spec.decision.baseline)} matches {len(configs)} different "
                        "configurations; add keys (e.g. beta) until it names one")
    if problems:
        raise MatrixError(problems)
    return Plan(spec, cells, [c.id for c in base], rows["train"], rows["heldout"], Store(results_dir))


def _tokenizer_is_local(spec: MatrixSpec) -> bool:
    return spec.model.path.startswith("builtin:") or Path(spec.model.path).is_dir()


def read_plan(results: str | Path | Store) -> dict[str, Any]:
    try:
        store = as_store(results)
        plan = store.read_json("plan.json")
    except (OSError, ValueError) as e:  # an unreachable or malformed URI
        raise MatrixError([f"{results}: cannot read: {str(e).splitlines()[0]}"]) from None
    if plan is None:
        raise MatrixError([f"{results}: not an ablate results directory (no plan.json); run `ablate run` first"])
    return plan
