"""Collect cell directories into two tables: cells.parquet (one row per cell) and pairs.parquet.

Reads only the results directory (plan.json + cells/), so it works from a laptop on results a
cluster wrote, and never needs the matrix file. Each cell row carries its configuration's label
(`config`) and id (`config_id`), written once by the planner; everything downstream groups by them.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from .. import objectives
from .storage import UNTRAINED, Store, as_store, cell_states, read_cell_json, read_jsonl, read_parquet, read_plan

PARAM_COLUMNS = ["objective", "lora_rank", "seed", *objectives.knob_columns(), "lr", "epochs", "truncate"]
METRIC_COLUMNS = [
    "heldout_accuracy", "heldout_correct", "heldout_pairs", "heldout_margin", "heldout_loss",
    "train_margin_first", "train_margin_last", "train_loss_last", "train_pairs",
    "truncated_train_pairs", "truncated_heldout_pairs", "steps", "stopped_early", "train_seconds", "tokens_per_second",
    "peak_memory_mb", "trainable_params", "device",
    # how the cell got done: the micro-batch it ended with after OOM halvings, and where it resumed
    "micro_batch", "grad_accum", "oom_retries", "resumed_from_step", "node_id", "pack_size",
    "generation_seconds", "generated_tokens_per_second", "generation_backend",  # with eval.generate
]
GENERATIONS, JUDGEMENTS = "generations.parquet", "judgements.parquet"


def collect(results: str | Path | Store, write: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    store = as_store(results)
    plan = read_plan(store)
    baseline = set(plan["baseline_ids"])
    states = cell_states(store, [c["id"] for c in plan["cells"]])
    rows, pair_frames = [], []
    for c in plan["cells"]:
        status = states[c["id"]]
        info = (read_cell_json(store, c["id"]) or {}) if status in ("done", "failed") else {}
        row = {"cell_id": c["id"], "label": c["label"], "config": c.get("config") or _legacy_config(c),
               "config_id": c.get("config_id") or c.get("config") or _legacy_config(c),
               "status": status, "is_baseline": c["id"] in baseline, "replicated": bool(c.get("replicated"))}
        row.update({k: c["params"].get(k) for k in PARAM_COLUMNS})
        row.update({k: info.get(k) for k in METRIC_COLUMNS})
        cfg = info.get("config", {})
        row.update(
            error_type=info.get("error_type"), error=info.get("error"),
            train_data_hash=cfg.get("data", {}).get("hashes", {}).get("train", plan["data"]["train"]),
            heldout_data_hash=cfg.get("data", {}).get("hashes", {}).get("heldout", plan["data"]["heldout"]),
            model_path=plan["model"]["path"], model_dtype=plan["model"]["dtype"],
            ablate_version=cfg.get("ablate_version"),
        )
        if status == "done":
            pairs = read_parquet(store, f"cells/{c['id']}/pairs.parquet")
            row["heldout_correct"] = int(pairs["correct"].sum())
            pairs.insert(0, "cell_id", c["id"])
            pair_frames.append(pairs)
        rows.append(row)
    cells = pd.DataFrame(rows)
    for col in ("heldout_correct", "heldout_pairs", "steps", "trainable_params", "train_pairs"):
        cells[col] = cells[col].astype("Int64")
    pairs = pd.concat(pair_frames, ignore_index=True) if pair_frames else pd.DataFrame({"cell_id": pd.Series(dtype=str)})
    if write:
        gens = collect_generations(store, cells)
        tables = [("cells.parquet", cells), ("pairs.parquet", pairs)] + ([(GENERATIONS, gens)] if gens is not None else [])
        for name, df in tables:
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            store.write_bytes(name, buf.getvalue())
    return cells, pairs


def collect_generations(results: str | Path | Store, cells: pd.DataFrame) -> pd.DataFrame | None:
    """Every done cell's generations (eval.generate) with cell_id, config_id and seed; None when there are none."""
    store = as_store(results)
    frames = []
    for c in cells[cells["status"] == "done"].itertuples():
        if store.exists(f"cells/{c.cell_id}/{GENERATIONS}"):
            g = read_parquet(store, f"cells/{c.cell_id}/{GENERATIONS}")
            frames.append(g.assign(cell_id=c.cell_id, config_id=c.config_id, seed=c.seed))
    return pd.concat(frames, ignore_index=True) if frames else None


def read_judgements(results: str | Path | Store, key: str) -> tuple[pd.DataFrame | None, str | None]:
    """The judge's verdicts for the current cells (written by the judge step, ablate/cluster/judging.py) and
    the judge step's last error, if it failed."""
    store = as_store(results)
    err = store.read_json(f"judgements/{key}/error.json")
    df = read_parquet(store, JUDGEMENTS) if store.exists(JUDGEMENTS) else None
    if df is not None:
        df = df[df["judge_key"] == key]
    return df, (err or {}).get("error")


def read_untrained(results: str | Path | Store) -> pd.DataFrame | None:
    """The base model's per-pair held-out log-probs, or None when no reference pass has run here yet."""
    store = as_store(results)
    return read_parquet(store, UNTRAINED) if store.exists(UNTRAINED) else None


def read_logs(results: str | Path | Store, cell_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A cell's train_log.jsonl and eval_log.jsonl as DataFrames (TRL metric names)."""
    store = as_store(results)
    return tuple(pd.DataFrame(read_jsonl(store, f"cells/{cell_id}/{n}")) for n in ("train_log.jsonl", "eval_log.jsonl"))


def _legacy_config(c: dict) -> str:
    """plan.json written before configurations had their own fields: the label without its seed."""
    return c["label"].rsplit(" s", 1)[0]
