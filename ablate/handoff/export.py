"""`ablate export`: a finished cell as a folder the team's tools load directly.

    DIR/  adapter_config.json adapter_model.safetensors   the LoRA adapter as PEFT saves it, base_model_name_or_path
          tokenizer files (+ chat template)                set, so AutoPeftModelForCausalLM.from_pretrained(DIR) works
          README.md                                        model card: recipe, data hashes, identity, evidence
          ablate_cell.json                                 the cell's own record, as in the results
          base/     (builtin base models only)             the base weights, so the export loads stand-alone
          merged/   (--merge)                              merge_and_unload() in the base's dtype, safetensors

`--winner` exports the configuration the decision picked (the baseline when nothing beat it); with several seeds
it takes the seed whose held-out accuracy is the median (a typical draw of the recipe, not the luckiest), and
`--seed-pool` exports every seed to DIR/seed-<n>/ instead. Reads the results through the store, so a cluster's
s3:// results export from a laptop; the base model must load here (a builtin, the same local directory, or a hub id).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..results.storage import Store, as_store, read_cell_json, read_plan
from ..schema import ModelSpec


@dataclass
class Exported:
    cell_id: str
    label: str
    path: Path
    merged: Path | None
    bytes: int
    merge_seconds: float | None


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _check_out(out: Path) -> None:
    if "://" in str(out):
        raise UserError([f"--out {out}: export writes a local folder; give a path (copy it to object storage after)"])
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError([f"--out {out}: exists and is not an empty folder; choose a new folder (nothing was written)"])


def _pick(cells, cell: str | None, winner: bool, decision) -> tuple[Any, Any]:
    """(the chosen cell's row, the rows of its configuration's finished seeds)."""
    done = cells[cells["status"] == "done"]
    if cell is not None:
        hit = cells[cells["cell_id"].str.startswith(cell)]
        if len(hit) != 1:
            known = ", ".join(f"{r.cell_id} ({r.label})" for r in cells.itertuples())
            what = "matches no cell" if hit.empty else f"matches {len(hit)} cells"
            raise UserError([f"--cell {cell}: {what}; cells here: {known}"])
        row = hit.iloc[0]
        if row["status"] != "done":
            raise UserError(
                [f"--cell {cell}: {row['label']} is {row['status']}, not done; only a finished cell can be exported"]
            )
        return row, done[done["config"] == row["config"]]
    if decision is None:
        raise UserError(["--winner: there is no decision yet (the baseline has no finished cell); use --cell ID"])
    pool = done[done["config"] == decision.winner].sort_values(["heldout_accuracy", "seed"])
    # The median draw (lower median, then the lower seed): picking the best seed would overstate the recipe.
    return pool.iloc[(len(pool) - 1) // 2], pool


def export(
    results: str | Path | Store,
    out: str | Path,
    cell: str | None = None,
    winner: bool = False,
    merge: bool = False,
    seed_pool: bool = False,
    log=print,
) -> list[Exported]:
    """Export one cell (or every seed of its configuration) as adapter + tokenizer + card (+ merged weights)."""
    if (cell is None) == (not winner):
        raise UserError(["export: give exactly one of --cell ID or --winner"])
    out = Path(out)
    _check_out(out)
    store = as_store(results)
    plan = read_plan(store)
    from ..verdict.report import build_report

    rep = build_report(store, write=False, plots=False)
    row, pool = _pick(rep.cells, cell, winner, rep.decision)
    chosen = list(pool.itertuples()) if seed_pool else [row]
    done = []
    for r in chosen:
        r = r._asdict() if hasattr(r, "_asdict") else r.to_dict()
        target = out / f"seed-{r['seed']}" if seed_pool else out
        done.append(export_cell(store, plan, rep, r, target, merge, log))
    if seed_pool:
        (out / "README.md").write_text(_pool_index(plan, rep, pool, done))
    return done


def export_cell(store: Store, plan: dict, rep, row: dict, target: Path, merge: bool, log) -> Exported:
    from .card import model_card

    cid = row["cell_id"]
    info = read_cell_json(store, cid) or {}
    spec = ModelSpec.model_validate(info.get("model_spec") or plan["model"])
    _check_same_base(spec, info.get("config", {}).get("model", {}), cid)
    target.mkdir(parents=True, exist_ok=True)
    _copy_adapter(store, cid, target)
    tok = _tokenizer(spec)
    tok.save_pretrained(target)
    base_path, revision = spec.path, spec.revision
    if spec.path.startswith("builtin:"):
        base_path = _save_builtin_base(spec, tok, target / "base")
    _point_adapter_at(target, base_path, revision)
    (target / "ablate_cell.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    (target / "README.md").write_text(model_card(plan, rep, row, info, spec, variant="adapter"))
    merged, seconds = None, None
    if merge:
        t0 = time.perf_counter()
        merged = _merge(spec, target, tok)
        seconds = time.perf_counter() - t0
        (merged / "README.md").write_text(model_card(plan, rep, row, info, spec, variant="merged"))
    size = _size(target)
    log(f"exported {row['label']} ({cid}) → {target}  ({size / 1e6:.1f} MB)")
    if merged is not None:
        log(f"  merged weights ({spec.dtype}) → {merged}  ({_size(merged) / 1e6:.1f} MB, merged in {seconds:.1f}s)")
    return Exported(cid, row["label"], target, merged, size, seconds)


def _check_same_base(spec: ModelSpec, trained: dict, cid: str) -> None:
    """An adapter on other base weights is another model: a local base must still be the one trained on."""
    if spec.path.startswith("builtin:") or "files" not in trained:  # builtin, or a hub id at its revision
        return
    if not Path(spec.path).is_dir():
        raise UserError([f"cell {cid}: its base model {spec.path} is not a directory here; export where it is"])
    from ..inputs.models import model_identity

    now = model_identity(spec).get("files", {})
    changed = sorted(k for k in set(now) | set(trained["files"]) if now.get(k) != trained["files"].get(k))
    if changed:
        raise UserError(
            [
                f"cell {cid}: the base model at {spec.path} changed since the cell was trained "
                f"({', '.join(changed[:5])} differ); the adapter belongs to the original weights"
            ]
        )


def _copy_adapter(store: Store, cid: str, target: Path) -> None:
    rel = f"cells/{cid}/adapter"
    root = store.path(rel) + "/"
    files = [i for i in store.listdir(rel, recursive=True) if i.is_file]
    if not files:
        raise UserError([f"cell {cid}: no adapter in {store.uri}/{rel}; the cell's files are incomplete"])
    for info in files:
        name = info.path[len(root) :]
        if name == "README.md":  # PEFT's placeholder card; ours replaces it
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(store.read_bytes(f"{rel}/{name}"))


def _tokenizer(spec: ModelSpec):
    from ..inputs.models import load_tokenizer

    return load_tokenizer(spec)  # what training used: its pad token, its chat template


def _save_builtin_base(spec: ModelSpec, tok, where: Path) -> str:
    """The builtin model exists only in code: save its (fixed-seed) weights so the export needs no ablate."""
    import torch

    from ..inputs.models import builtin_model

    model = builtin_model(spec.path.removeprefix("builtin:"), getattr(torch, spec.dtype))
    model.save_pretrained(where)
    tok.save_pretrained(where)
    return str(where.resolve())


def _point_adapter_at(target: Path, base: str, revision: str | None) -> None:
    """Set base_model_name_or_path (null for a builtin base, as trained) and the hub revision when there is one."""
    cfg_path = target / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base
    if revision:
        cfg["revision"] = revision
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _merge(spec: ModelSpec, adapter: Path, tok) -> Path:
    """Base + adapter, merged (merge_and_unload) in the base's dtype and saved as safetensors."""
    import torch
    from peft import PeftModel

    from ..inputs.models import load_model

    base = load_model(spec, torch.device("cpu"))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    where = adapter / "merged"
    merged.save_pretrained(where, safe_serialization=True)
    tok.save_pretrained(where)
    return where


def _pool_index(plan: dict, rep, pool, done: list[Exported]) -> str:
    acc = ", ".join(f"seed {r.seed}: {r.heldout_accuracy:.3f}" for r in pool.itertuples())
    lines = [
        f"# {plan['name']}: {pool['config'].iloc[0]}, every seed",
        "",
        f"One export per seed of the configuration (held-out accuracy {acc}). Each folder is a complete export "
        "with its own model card; load one with `AutoPeftModelForCausalLM.from_pretrained('<folder>')`.",
        "",
    ]
    lines += [f"- [`{e.path.name}`]({e.path.name}/README.md): {e.label} (`{e.cell_id}`)" for e in done]
    return "\n".join(lines) + "\n"
