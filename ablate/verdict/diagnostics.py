"""Diagnostics behind a decision: overoptimization (margins) and length bias. Pure functions of logs
and the pairs table.

Overoptimization, made precise: over the second half of training, the training margin rose by a
real amount (Δtrain > 0 and at least 25% of its final value) while held-out accuracy did not rise
(Δacc ≤ 0) and the held-out margin rose by less than a quarter as much (Δheld < Δtrain / 4).
"Cleaner margins" = higher retention: final held-out margin / final training margin (unit-free, so
comparable across objectives whose rewards are not).

Length bias: held-out pairs are split into quartiles of (chosen length − rejected length) in tokens;
a cell is length-biased when its accuracy in the top quartile (chosen much longer) and the bottom
quartile (chosen much shorter) differ by ≥ 0.3 — which answer is longer, not which is better,
drives its choices.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LENGTH_GAP_FLAG = 0.3


def margin_retention(train_log: pd.DataFrame, eval_log: pd.DataFrame) -> float:
    if train_log.empty or eval_log.empty:
        return float("nan")
    tm = float(train_log["rewards/margins"].iloc[-1])
    hm = float(eval_log["eval_rewards/margins"].iloc[-1])
    return hm / tm if tm > 0 else float("nan")


def _train_margin_at(train_log: pd.DataFrame, step: float) -> float:
    """Training margin smoothed over the logged rows up to `step` (the last few, to damp batch noise)."""
    upto = train_log[train_log["step"] <= step]["rewards/margins"]
    return float(upto.tail(3).mean()) if len(upto) else float("nan")


def overoptimization(train_log: pd.DataFrame, eval_log: pd.DataFrame) -> dict:
    """{'flag': bool, 'train_delta', 'heldout_margin_delta', 'heldout_accuracy_delta'} over the second half."""
    out = {"flag": False, "train_delta": np.nan, "heldout_margin_delta": np.nan, "heldout_accuracy_delta": np.nan}
    if train_log.empty or len(eval_log) < 2:
        return out
    last = float(eval_log["step"].iloc[-1])
    mid_rows = eval_log[eval_log["step"] <= last / 2]
    mid = mid_rows.iloc[-1] if len(mid_rows) else eval_log.iloc[0]
    end = eval_log.iloc[-1]
    t_mid, t_end = _train_margin_at(train_log, mid["step"]), _train_margin_at(train_log, last)
    dt = t_end - t_mid
    dh = float(end["eval_rewards/margins"] - mid["eval_rewards/margins"])
    da = float(end["eval_accuracy"] - mid["eval_accuracy"])
    flag = bool(dt > 0 and dt >= 0.25 * abs(t_end) and da <= 0 and dh < dt / 4)
    return {"flag": flag, "train_delta": dt, "heldout_margin_delta": dh, "heldout_accuracy_delta": da}


def length_quartiles(pairs: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per cell by quartile of chosen-minus-rejected length; columns Q1..Q4 (Q1: chosen shortest)."""
    if pairs.empty or pairs["pair"].nunique() < 4:
        return pd.DataFrame()
    one = pairs.drop_duplicates("pair").set_index("pair")
    diff = (one["chosen_len"] - one["rejected_len"]).astype(float)
    ranks = diff.rank(method="first")  # ties spread evenly, so four bins always exist
    bins = pd.qcut(ranks, 4, labels=["Q1", "Q2", "Q3", "Q4"])
    df = pairs.assign(quartile=pairs["pair"].map(bins))
    return df.pivot_table(index="cell_id", columns="quartile", values="correct", aggfunc="mean", observed=False)


def length_bias(quartiles: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the Q4 − Q1 accuracy gap and whether it crosses LENGTH_GAP_FLAG."""
    if quartiles.empty:
        return pd.DataFrame(columns=["length_gap", "length_flag"])
    gap = quartiles["Q4"] - quartiles["Q1"]
    return pd.DataFrame({"length_gap": gap, "length_flag": gap.abs() >= LENGTH_GAP_FLAG})


def length_summary(pairs: pd.DataFrame) -> dict:
    """Median completion lengths (tokens) of chosen vs rejected in the held-out data."""
    if pairs.empty:
        return {}
    one = pairs.drop_duplicates("pair")
    d = one["chosen_len"] - one["rejected_len"]
    return {
        "chosen_median": float(one["chosen_len"].median()),
        "rejected_median": float(one["rejected_len"].median()),
        "share_chosen_longer": float((d > 0).mean()),
        "share_chosen_shorter": float((d < 0).mean()),
    }
