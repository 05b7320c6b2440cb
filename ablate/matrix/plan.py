"""Turn a matrix file into a runnable plan, or into one list of every problem — before Ray or a model's weights.

The plan holds the validated spec, the data rows and their hashes, the model identity and the cells.
Its `plan.json` in the results directory lets `status` and `report` work without the matrix file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..handoff.packages import tracker_problems
from ..handoff.provenance import provenance
from ..inputs.data import _display, check_leakage, load_rows, rows_hash
from ..inputs.models import load_tokenizer, model_identity, resolve_model
from ..inputs.split import split_from_train
from ..inputs.structure import context_problems, device_problems, lora_problems, model_structure, tokenizer_problems
from ..inputs.tokenize import encode, template_problem
from ..judges import check as check_judging
from ..judges import judge_info
from ..results.storage import Store, cell_states, check_results_dir, is_uri, join, write_plan
from ..schema import BuiltinData, DatasetSource, MatrixSpec, SplitFromTrain
from .cells import Cell, baseline_cells, expand, selection_problems, with_seed
from .yamlfile import load_matrix, locate


@dataclass
class Plan:
    spec: MatrixSpec
    cells: list[Cell]
    baseline_ids: list[str]
    train_rows: list[dict]
    heldout_rows: list[dict]
    results: Store
    replication: list[dict] = field(default_factory=list)  # rounds of adaptive replication: what was added, why
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
                {
                    "id": c.id,
                    "label": c.label,
                    "config": c.config_label,
                    "config_id": c.config_id,
                    "params": c.params,
                    "replicated": c.replicated,
                }
                for c in self.cells
            ],
            "replication": self.replication,
            "model": self.spec.model.model_dump(mode="json"),
            "data": {
                "train": hashes.get("train"),
                "heldout": hashes.get("heldout"),
                "sources": {s: _source_name(getattr(self.spec.data, s)) for s in ("train", "heldout")},
            },
            "ablate": provenance(),  # version and commit of the code that planned (and shipped) the run
            **({"split": self.split} if self.split else {}),
            "generate": g.model_dump(mode="json") if (g := self.spec.eval.generate) else None,
            "judge": judge_info(self.spec),
        }

    def write(self) -> None:
        write_plan(self.results, self.to_json())

    def add_seeds(self, more: dict[str, int], why: str = "") -> list[Cell]:
        """Cells with the next seeds (after the largest in matrix.seed) for the configurations in `more`
        (config_id → how many); returns the cells added, recorded in plan.json's replication history."""
        start = max(self.spec.matrix.seed) + 1
        have = {c.id for c in self.cells}
        added = []
        for cid, k in more.items():
            template = next(c for c in self.cells if c.config_id == cid)
            for seed in range(start, start + k):
                cell = with_seed(template, seed)
                if cell.id not in have:
                    added.append(cell)
                    have.add(cell.id)
        self.cells += added
        labels = {c.config_id: c.config_label for c in added}
        self.replication.append({"added": [{"config": labels[k], "config_id": k, "seeds": list(range(start, start + n))}
                                           for k, n in more.items() if k in labels], "why": why})  # fmt: skip
        return added


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
    """Validate a matrix, its model and its data completely; raise one UserError listing every problem."""
    spec = matrix if isinstance(matrix, MatrixSpec) else load_matrix(matrix)
    where = str(matrix) if not isinstance(matrix, MatrixSpec) else spec.name
    base = None if isinstance(matrix, MatrixSpec) else Path(matrix).resolve().parent
    problems: list[str] = []
    if isinstance(matrix, MatrixSpec):  # built in code: the file loader's cross-field checks did not run
        problems += [f"{where}: {'.'.join(map(str, loc))}: {msg}" for loc, msg in selection_problems(spec)]
    model_problems = [f"{where}: {p}" for p in resolve_model(spec.model, base)]
    problems += model_problems + locate(matrix, device_problems(spec))
    structure = None
    if not model_problems:  # the model's modules and sizes, without its weights
        try:
            structure = model_structure(spec.model)
        except UserError as e:
            problems += [f"{where}: {p}" for p in e.problems]
        else:
            problems += locate(matrix, lora_problems(spec, structure) + context_problems(spec, structure))

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
    problems += [f"{where}: {p}" for p in check_judging(spec, len(rows["heldout"]) if "heldout" in rows else None)]

    results_dir = results_location(spec, results)
    # The check names the matrix's `storage`; a root given on the command line is `--results`.
    named = (lambda p: "--results" + p.removeprefix("storage")) if results is not None else (lambda p: p)
    try:
        problems += [f"{where}: {named(p)}" for p in check_results_dir(results_dir)]
    except OSError as e:  # e.g. a name too long for the filesystem
        problems.append(f"{where}: {named('storage')}: cannot use {results_dir} ({e.strerror or e})")

    tok = None
    if check_tokens and structure is not None:
        try:
            tok = load_tokenizer(spec.model)
        except UserError as e:
            problems += [f"{where}: {p}" for p in e.problems]
        else:
            problems += locate(matrix, tokenizer_problems(tok, structure))
    if tok is not None and len(rows) == 2:
        no_template = template_problem(rows, tok, spec.model.path)
        problems += [no_template] if no_template else []
    if tok is not None and len(rows) == 2 and not problems:
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
    base_cells = baseline_cells(cells, spec)
    ids = [c.id for c in base_cells]
    return Plan(spec, cells, ids, rows["train"], rows["heldout"], Store(results_dir), split=split_record)
