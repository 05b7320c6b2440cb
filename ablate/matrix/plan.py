"""Turn a matrix file into a runnable plan, or into one list of every problem — before Ray or a model.

The plan holds the validated spec, the data rows and their hashes, the model identity and the cells.
Its `plan.json` in the results directory lets `status` and `report` work without the matrix file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..handoff.provenance import provenance
from ..handoff.trackers import tracker_problems
from ..inputs.data import _display, check_leakage, load_rows, rows_hash
from ..inputs.models import check_model_spec, load_tokenizer, model_identity
from ..inputs.split import split_from_train
from ..inputs.tokenize import encode
from ..results.storage import Store, cell_states, check_results_dir, is_uri, join, write_plan
from ..schema import BuiltinData, DatasetSource, MatrixSpec, SplitFromTrain
from .cells import Cell, baseline_cells, expand, selection_problems
from .yamlfile import load_matrix


@dataclass
class Plan:
    spec: MatrixSpec
    cells: list[Cell]
    baseline_ids: list[str]
    train_rows: list[dict]
    heldout_rows: list[dict]
    results: Store
    split: dict | None = None  # data.heldout.split_from_train: how the held-out pairs were carved out of train

    def status(self) -> dict[str, str]:
        return cell_states(self.results, [c.id for c in self.cells])

    def to_json(self) -> dict[str, Any]:
        hashes = self.cells[0].config.data.hashes if self.cells else {}
        return {
            "name": self.spec.name,
            "decision": self.spec.decision.model_dump(mode="json"),
            "baseline_ids": self.baseline_ids,
            "cells": [
                {"id": c.id, "label": c.label, "config": c.config_label, "config_id": c.config_id, "params": c.params}
                for c in self.cells
            ],
            "model": self.spec.model.model_dump(mode="json"),
            "data": {
                "train": hashes.get("train"),
                "heldout": hashes.get("heldout"),
                "sources": {s: _source_name(getattr(self.spec.data, s)) for s in ("train", "heldout")},
            },
            "ablate": provenance(),  # version and commit of the code that planned (and shipped) the run
            **({"split": self.split} if self.split else {}),
        }

    def write(self) -> None:
        write_plan(self.results, self.to_json())


def _source_name(src) -> str:
    if isinstance(src, BuiltinData):
        return f"builtin:{src.builtin}"
    if isinstance(src, SplitFromTrain):
        return f"split_from_train {src.split_from_train:g} (seed {src.seed})"
    return _display(src.display() if isinstance(src, DatasetSource) else str(src))  # no keys from a URI's query


def results_location(spec: MatrixSpec, results: str | Path | None) -> str | Path:
    root = str(results if results is not None else spec.storage)
    return join(root, spec.name) if is_uri(root) else Path(root) / spec.name


def make_plan(matrix: str | Path | MatrixSpec, results: str | Path | None = None, check_tokens: bool = True) -> Plan:
    """Validate a matrix and its data completely; raise one UserError listing every problem."""
    spec = matrix if isinstance(matrix, MatrixSpec) else load_matrix(matrix)
    where = str(matrix) if not isinstance(matrix, MatrixSpec) else spec.name
    problems: list[str] = []
    if isinstance(matrix, MatrixSpec):  # built in code: the file loader's cross-field checks did not run
        problems += [f"{where}: {'.'.join(map(str, loc))}: {msg}" for loc, msg in selection_problems(spec)]
    problems += [f"{where}: {p}" for p in check_model_spec(spec.model)]

    rows: dict[str, list[dict]] = {}
    for split in ("train", "heldout"):
        if isinstance(getattr(spec.data, split), SplitFromTrain):
            continue
        try:
            rows[split] = load_rows(getattr(spec.data, split), split)
        except UserError as e:
            problems += e.problems
    split_record = None
    if isinstance(spec.data.heldout, SplitFromTrain) and "train" in rows:  # carved out of train: ablate/inputs/split.py
        try:
            rows["train"], rows["heldout"], split_record = split_from_train(
                rows["train"], spec.data.heldout, _source_name(spec.data.train)
            )
        except UserError as e:
            problems += [f"{where}: {p}" for p in e.problems]
    problems += [f"{where}: {p}" for p in tracker_problems(spec.report_to)]
    if len(rows) == 2:
        problems += check_leakage(rows["train"], rows["heldout"], f"{where}: data")

    results_dir = results_location(spec, results)
    problems += [f"{where}: {p}" for p in check_results_dir(results_dir)]

    if check_tokens and len(rows) == 2 and not problems and _tokenizer_is_local(spec):
        tok = load_tokenizer(spec.model)
        for split in ("train", "heldout"):
            try:
                encode(
                    rows[split],
                    tok,
                    spec.data.max_length,
                    spec.data.prompt_budget,
                    f"{where}: data.{split} ({_source_name(getattr(spec.data, split))})",
                )
            except UserError as e:
                problems += e.problems
    if problems:
        raise UserError(problems)

    hashes = {"train": rows_hash(rows["train"]), "heldout": rows_hash(rows["heldout"])}
    cells = expand(spec, model_identity(spec.model), hashes)
    base = baseline_cells(cells, spec)
    return Plan(spec, cells, [c.id for c in base], rows["train"], rows["heldout"], Store(results_dir), split_record)


def _tokenizer_is_local(spec: MatrixSpec) -> bool:
    return spec.model.path.startswith("builtin:") or Path(spec.model.path).is_dir()
