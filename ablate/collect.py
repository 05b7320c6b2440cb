"""Collect cell directories into two tables: cells.parquet (one row per cell) and pairs.parquet.

Reads only the results directory (plan.json + cells/), so it works from a laptop on results a
cluster wrote, and never needs the matrix file.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from .plan import read_plan
from .storage import atomic_write_bytes, cell_dir, cell_status, read_cell_json

PARAM_COLUMNS = ["objective", "lora_rank", "seed", "beta", "gamma", "gamma_beta_ratio", "lambda", "lr", "epochs"]
METRIC_COLUMNS = [
    "heldout_accuracy", "heldout_correct", "heldout_pairs", "heldout_margin", "heldout_loss",
    "train_margin_first", "train_margin_last", "train_loss_last", "train_pairs",
    "truncated_train_pairs", "truncated_heldout_pairs", "steps", "stopped_early", "train_seconds", "tokens_per_second",
    "peak_memory_mb", "trainable_params", "device",
]


def collect(results: str | Path, write: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    results = Path(results)
    plan = read_plan(results)
    baseline = set(plan["baseline_ids"])
    rows, pair_frames = [], []
    for c in plan["cells"]:
        status = cell_status(results, c["id"])
        info = read_cell_json(results, c["id"]) or {}
        row = {"cell_id": c["id"], "label": c["label"], "status": status, "is_baseline": c["id"] in baseline}
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
            pairs = pd.read_parquet(cell_dir(results, c["id"]) / "pairs.parquet")
            row["heldout_correct"] = int(pairs["correct"].sum())
            pairs.insert(0, "cell_id", c["id"])
            pair_frames.append(pairs)
        rows.append(row)
    cells = pd.DataFrame(rows)
    for col in ("heldout_correct", "heldout_pairs", "steps", "trainable_params", "train_pairs"):
        cells[col] = cells[col].astype("Int64")
    pairs = pd.concat(pair_frames, ignore_index=True) if pair_frames else pd.DataFrame({"cell_id": pd.Series(dtype=str)})
    if write:
        for name, df in (("cells.parquet", cells), ("pairs.parquet", pairs)):
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            atomic_write_bytes(results / name, buf.getvalue())
    return cells, pairs


def read_logs(results: str | Path, cell_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A cell's train_log.jsonl and eval_log.jsonl as DataFrames (TRL metric names)."""
    d = cell_dir(Path(results), cell_id)
    read = lambda n: pd.read_json(d / n, lines=True) if (d / n).is_file() and (d / n).stat().st_size else pd.DataFrame()  # noqa: E731
    return read("train_log.jsonl"), read("eval_log.jsonl")
