"""Decision rules: pure functions of the two tables (cells, pairs) → a Decision.

A *configuration* (a recipe: objective, rank, β, γ, …) is a cell's parameters without its seed; its
`config` label and `config_id` are columns of cells.parquet. Every rule compares each challenger
configuration with the baseline on the same held-out pairs, then parsimony picks among the winners.

- recipe (default): seeds are replicates. The held-out pairs and the training seeds are the two
  sources of noise; stats.py's seed-aware paired test (variance components, Holm across challengers,
  one-sided: only a better challenger can win) answers "is recipe C better than recipe B". With one
  seed per configuration the seed spread is unknown: the verdict is about these trained adapters
  (exact sign test) and asks for more seeds (`replicate`) for the baseline and the contenders.
- adapter_exact (alias paired_exact): the exact sign test on the pairs where the two differ (McNemar's
  exact test with one seed) — "does this adapter beat that one on these prompts".
- paired_bootstrap: pairs resampled jointly, seeds within each configuration; percentile interval at
  1 − α/m (Bonferroni).
- seed_rule: the rule teams use by hand (≥ 1 more pair right and cleaner margins); not a test. Its
  false-switch rate for this matrix is simulated and stated.

Parsimony: among significant challengers similar to the best (a sign test at α cannot tell them apart,
or within `tolerance_pairs`), prefer the baseline's objective, then lower rank, then fewer trainable
parameters. Otherwise the incumbent stays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import stats, winrate
from .diagnostics import margin_retention

RULES = ("recipe", "adapter_exact", "paired_bootstrap", "seed_rule")
ALIASES = {"paired_exact": "adapter_exact"}


@dataclass
class Decision:
    rule: str
    alpha: float
    unit: str  # "recipe": seeds and held-out pairs are the noise; "adapter": these trained adapters on these pairs
    baseline: str  # configuration labels such as `dpo r16 β0.1`
    winner: str
    switch: bool
    reason: str  # the headline sentence
    comparisons: pd.DataFrame  # one row per configuration
    mde: float  # smallest accuracy difference the rule applied detects with 80% power
    heldout_pairs: int
    seeds: int  # most seeds of any configuration
    notes: list[str] = field(default_factory=list)
    replicate: dict[str, int] = field(default_factory=dict)  # config_id → more seeds wanted (empty: settled)
    seed_sd: float = float("nan")  # pooled seed-to-seed SD of a cell's held-out accuracy (nan: unknown)
    planning: str = ""  # held-out pairs and seeds that would detect a 3-point difference
    untrained: dict = field(default_factory=dict)  # the base model's own preference, and who beat it
    metric: str = "heldout_accuracy"  # or win_rate: `accuracy` columns then hold win rates against the baseline


def _wide(pairs: pd.DataFrame, cell_ids: list[str]) -> pd.DataFrame:
    """0/1 held-out outcomes, one column per cell, one row per pair."""
    sub = pairs[pairs["cell_id"].isin(cell_ids)]
    return sub.pivot(index="pair", columns="cell_id", values="correct").sort_index().astype(float)


def _nanmean(xs: list[float]) -> float:
    a = np.asarray(xs, dtype=float)
    return float(a[np.isfinite(a)].mean()) if np.isfinite(a).any() else float("nan")


@functools.lru_cache(maxsize=32)
def seed_rule_rate(n_pairs: int, n_challengers: int, agreement: float, accuracy: float) -> float:
    return stats.seed_rule_false_switch(n_pairs, n_challengers, agreement, accuracy, reps=2000)


def _accuracy_interval(y: np.ndarray, tau2: float, alpha: float = 0.05) -> tuple[float, float]:
    """Interval on a configuration's expected held-out accuracy: pairs (this sample of prompts) plus the
    seed spread τ² when it is known."""
    n, s = y.shape
    v = y.mean(1).var(ddof=1) / n + (np.nan_to_num(tau2) / s)
    half = sps.norm.isf(alpha / 2) * np.sqrt(v)
    return float(y.mean() - half), float(y.mean() + half)


def decide(
    cells: pd.DataFrame,
    pairs: pd.DataFrame,
    rule: str = "recipe",
    alpha: float = 0.05,
    tolerance_pairs: int | None = None,
    logs: dict | None = None,
    max_seeds: int | None = None,
    assumed_seed_sd: float | None = None,
    untrained: pd.DataFrame | None = None,
    metric: str = "heldout_accuracy",
) -> Decision:
    """Pick the winner from the two Parquet tables.

    `logs` maps cell id → (train_log, eval_log) DataFrames (the seed rule judges margins with them);
    `max_seeds` turns on adaptive replication (the Decision's `replicate` says which configurations need
    more seeds); `assumed_seed_sd` (accuracy points) states the seed spread when every configuration has
    one seed; `untrained` holds the base model's per-pair held-out log-probs (collect's base table).
    metric="win_rate": `pairs` holds per-prompt outcomes against the baseline (verdict/winrate.py win_pairs),
    decided by the same tests; τ² is pooled over the challengers (the baseline's 0.5s carry no seed spread)."""
    rule, win = ALIASES.get(rule, rule), metric == "win_rate"
    untrained = None if win else untrained
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    configs, outcomes, first, base_id = _outcomes(cells, pairs)
    order = list(outcomes)  # the baseline first; challengers keep the table's order
    chal, m, n_pairs = order[1:], len(order) - 1, outcomes[base_id].shape[0]
    label = {c: configs[c]["config"].iloc[0] for c in order}
    replicated = bool(any(g["replicated"].astype(bool).any() for g in configs.values()))
    sc = stats.seed_components({c: y for c, y in outcomes.items() if not (win and c == base_id)})
    tau2 = float(sc["tau2"]) if sc["df"] else float("nan")
    if assumed_seed_sd is not None and not sc["df"]:
        tau2 = (assumed_seed_sd / 100) ** 2
    assumed = assumed_seed_sd is not None and not sc["df"]
    seed_known = bool(sc["df"]) or assumed

    rows = {c: _row(configs[c], outcomes[c], outcomes[base_id], c == base_id, logs, tau2) for c in order}
    added = {c: bool(configs[c]["replicated"].astype(bool).any()) for c in chal}  # seeds replication trained
    _evidence(rule, rows, outcomes, first, base_id, chal, alpha, replicated, tau2 if assumed else None, win, added)

    table = pd.DataFrame([rows[c] for c in order])
    unit = "recipe" if rule == "recipe" and seed_known else "adapter"
    winner, switch, notes = label[base_id], False, []
    cands = table[table["significant"]]
    if not cands.empty:
        winner, near = _parsimony(cands, table, outcomes, alpha, tolerance_pairs, rows[base_id]["objective"])
        switch = True
        if near > 1:
            how = "indistinguishable from" if tolerance_pairs is None else f"within {tolerance_pairs} pair(s) of"
            notes.append(
                f"{near} challengers {how} the best; parsimony chose {winner} (baseline objective first, then "
                "lower rank, then fewer trainable parameters)"
            )
    mde = float(table.loc[~table["is_baseline"], "mde"].max()) if m else float("nan")

    replicate: dict[str, int] = {}
    if rule == "recipe" and max_seeds and m and not replicated:
        need = stats.replication_needs(first, base_id, alpha, max_seeds)
        replicate = {c: int(k) for c, k in need.items() if int(k) > 0}

    notes += _caveats(rule, unit, switch, winner, table, outcomes, base_id, chal, n_pairs)
    untrained_info = _vs_untrained(untrained, table, outcomes, label, tau2, alpha) if untrained is not None else {}
    reason = (winrate.reason if win else _reason)(table, label[base_id], winner, switch, rule, alpha, n_pairs, unit)
    if untrained_info.get("nothing_learned"):
        reason = untrained_info["nothing_learned"] + " " + reason
        switch, winner = False, label[base_id]
    planning = _planning(outcomes, base_id, chal, table, tau2, alpha, m) if m else ""
    planning = (
        planning.replace("held-out pairs", "prompts").replace("difference", "win-rate difference") if win else planning
    )
    seeds = int(max(y.shape[1] for y in outcomes.values()))
    seed_sd = float(np.sqrt(tau2)) if np.isfinite(tau2) else float("nan")
    return Decision(
        rule,
        alpha,
        unit,
        label[base_id],
        winner,
        switch,
        reason,
        table,
        mde,
        n_pairs,
        seeds,
        notes,
        replicate,
        seed_sd,
        planning,
        untrained_info,
        metric,
    )


def _outcomes(cells: pd.DataFrame, pairs: pd.DataFrame):
    """(cells by configuration, outcome matrix [pairs, seeds] per configuration with the baseline first, the same
    for the first round only — the matrix's own seeds, before replication added any —, the baseline's id)."""
    done = cells[cells["status"] == "done"].copy()
    if "replicated" not in done:
        done["replicated"] = False
    base_rows = done[done["is_baseline"]]
    if base_rows.empty:
        raise ValueError("the baseline configuration has no finished cell; nothing to compare against")
    base_id = base_rows["config_id"].iloc[0]
    configs = {cid: g.sort_values("seed") for cid, g in done.groupby("config_id", sort=False)}
    configs = {base_id: configs[base_id], **{c: g for c, g in configs.items() if c != base_id}}
    wide = _wide(pairs, list(done["cell_id"]))
    outcomes = {cid: wide[list(g["cell_id"])].dropna().to_numpy() for cid, g in configs.items()}
    n_pairs = outcomes[base_id].shape[0]
    for cid, y in outcomes.items():
        if y.shape[0] != n_pairs or y.shape[0] != len(wide):
            raise ValueError(
                f"{configs[cid]['config'].iloc[0]} was evaluated on {y.shape[0]} held-out pairs, "
                f"the baseline on {n_pairs}"
            )
    first = {c: wide[list(g.loc[~g["replicated"].astype(bool), "cell_id"])].to_numpy() for c, g in configs.items()}
    return configs, outcomes, first, base_id


def _caveats(rule, unit, switch, winner, table, outcomes, base_id, chal, n_pairs) -> list[str]:
    """What the verdict cannot claim: one seed (adapters, not recipes) and the seed rule's real error rate."""
    notes = []
    if unit == "adapter" and rule == "recipe" and switch:
        sd = float(table.loc[table["config"] == winner, "overturning_seed_sd"].iloc[0])
        notes.append(
            f"With one seed per configuration this compares trained adapters, not recipes: a seed-to-seed spread "
            f"of held-out accuracy above {sd * 100:.1f} points (SD) would overturn it. More seeds of the contenders "
            "(decision.replicate) make it a claim about recipes."
        )
    m = len(chal)
    if rule == "seed_rule" and m:
        agree = float(np.mean([(outcomes[c][:, 0] == outcomes[base_id][:, 0]).mean() for c in chal]))
        acc = float(np.clip(outcomes[base_id].mean(), 0.05, 0.95))
        independent = 1 - 2 * acc * (1 - acc)  # the least two cells can agree at this accuracy (no shared difficulty)
        rate = seed_rule_rate(n_pairs, m, round(float(np.clip(agree, independent + 0.01, 0.99)), 2), round(acc, 2))
        notes.append(
            f"the seed rule switches {rate:.0%} of the time between truly equal configurations in a matrix like "
            f"this one ({m} challenger(s), {n_pairs} held-out pairs, simulated); use the recipe rule for a "
            "decision that is wrong at most α of the time"
        )
    return notes


def _evidence(rule, rows, outcomes, first, base_id, chal, alpha, replicated, assumed_tau2, win=False, added=None):
    """Fill each challenger's row with the evidence of `rule`: p-values, bounds, MDE, significance."""
    m = len(chal)
    if not m:
        return
    if rule == "recipe":
        eligible = stats.contenders(first, base_id, alpha) if replicated else None
        if replicated and win:  # first-round outcomes now average over every baseline seed: ask what replication did
            eligible = added
        res = stats.decide_recipes(
            outcomes, base_id, alpha, eligible=eligible, assumed_tau2=assumed_tau2, baseline_in_tau=not win
        )
        for j, c in enumerate(chal):
            rows[c].update(
                p_value=float(res["p"][j]),
                p_adjusted=float(res["p_adjusted"][j]),
                significant=bool(res["significant"][j]),
                mde=float(res["mde"][j]),
                seed_share=float(res["seed_share"][j]) if "seed_share" in res else 0.0,
                contender=bool(eligible[c]) if eligible else None,
            )
            if "se" in res:
                q = sps.t.isf(alpha / m, res["df"][j])  # the one-sided bound the test uses, at Holm's first step
                rows[c].update(ci_low=float(res["D"][j] - q * res["se"][j]))
            if "overturning_seed_sd" in res:
                rows[c].update(overturning_seed_sd=float(res["overturning_seed_sd"][j]))
    elif rule == "adapter_exact":
        for c in chal:
            r = stats.adapter_compare(outcomes[base_id], outcomes[c], alpha, m)
            rows[c].update(p_value=float(r["p"]), mde=float(r["mde"]))
        p_adj = stats.holm(np.array([rows[c]["p_value"] for c in chal]))
        for c, p in zip(chal, p_adj):
            rows[c].update(p_adjusted=float(p), significant=bool(p < alpha and rows[c]["diff"] > 0))
    elif rule == "paired_bootstrap":
        for j, c in enumerate(chal):
            lo, hi, p = stats.bootstrap_diff(outcomes[base_id], outcomes[c], 1 - alpha / m, seed=j + 1)
            mde = stats.mde(outcomes[base_id], outcomes[c], alpha=alpha, m=m, exact=False)
            rows[c].update(
                ci_low=lo, ci_high=hi, p_value=p, p_adjusted=min(1.0, p * m), significant=lo > 0, mde=float(mde)
            )
    else:  # seed_rule: ≥ 1 more pair right and margins at least as clean (no logs → no margin evidence → equal)
        base_ret = np.nan_to_num(rows[base_id]["retention"])
        for c in chal:
            r = stats.adapter_compare(outcomes[base_id], outcomes[c], alpha, m)
            ok = rows[c]["diff_pairs"] >= 1 and np.nan_to_num(rows[c]["retention"]) >= base_ret
            rows[c].update(significant=bool(ok), mde=float(r["mde"]))


def _row(g: pd.DataFrame, y: np.ndarray, base: np.ndarray, is_base: bool, logs, tau2: float) -> dict:
    d = y.mean(1) - base.mean(1)
    per_seed = y.mean(0)
    retention = [margin_retention(*(logs or {}).get(c, (pd.DataFrame(), pd.DataFrame()))) for c in g["cell_id"]]
    lo, hi = _accuracy_interval(y, tau2)
    return {
        "config": g["config"].iloc[0],
        "config_id": g["config_id"].iloc[0],
        "objective": g["objective"].iloc[0],
        "lora_rank": int(g["lora_rank"].iloc[0]),
        "trainable_params": int(g["trainable_params"].iloc[0]) if "trainable_params" in g else 0,
        "is_baseline": is_base,
        "seeds": y.shape[1],
        "seed_list": [int(s) for s in g["seed"]],
        "accuracy": float(y.mean()),
        "accuracy_seed_sd": float(per_seed.std(ddof=1)) if y.shape[1] > 1 else float("nan"),
        "acc_low": lo,
        "acc_high": hi,
        "correct": float(y.sum(0).mean()),
        "diff": float(d.mean()),
        "diff_pairs": float(d.sum()),
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
        "retention": _nanmean(retention),
        "p_value": np.nan,
        "p_adjusted": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
        "mde": np.nan,
        "seed_share": np.nan,
        "overturning_seed_sd": np.nan,
        "contender": None,
        "significant": False,
    }


def _parsimony(cands, table, outcomes, alpha, tolerance_pairs, base_objective) -> tuple[str, int]:
    best = cands.loc[cands["diff"].idxmax()]
    if tolerance_pairs is None:
        bd = outcomes[best["config_id"]].mean(1)

        def similar(cid):
            gap = bd - outcomes[cid].mean(1)
            return float(stats.sign_test_p((gap > 0).sum(), (gap < 0).sum())) >= alpha

        near = cands[[similar(c) for c in cands["config_id"]]].copy()
    else:
        near = cands[cands["diff_pairs"] >= best["diff_pairs"] - tolerance_pairs].copy()
    near["_not_base_obj"] = near["objective"] != base_objective
    near = near.sort_values(
        ["_not_base_obj", "lora_rank", "trainable_params", "diff_pairs"], ascending=[True, True, True, False]
    )
    return near["config"].iloc[0], len(near)


def _vs_untrained(untrained, table, outcomes, label, tau2, alpha) -> dict:
    """The base model's own preference on the held-out pairs (summed and per-token, the two ways the
    objectives score), and which configurations are significantly above it under their own scoring."""
    from .. import objectives

    u = untrained.sort_values("pair")
    base_acc = {
        "sum": (u["chosen_logp_sum"] > u["rejected_logp_sum"]).to_numpy(float),
        "avg": (u["chosen_logp_avg"] > u["rejected_logp_avg"]).to_numpy(float),
    }
    ps, above = [], {}
    for c, y in outcomes.items():
        scoring = objectives.get(table.set_index("config_id").at[c, "objective"]).scoring
        d = y.mean(1) - base_acc[scoring]
        v = d.var(ddof=1) / len(d) + np.nan_to_num(tau2) / y.shape[1]
        ps.append(float(sps.norm.sf(d.mean() / np.sqrt(v))) if v > 0 else float(d.mean() <= 0))
    adj = stats.holm(np.array(ps))
    for (c, y), p in zip(outcomes.items(), adj):
        above[label[c]] = bool(p < alpha and y.mean() > 0)
    near_chance = all(lo <= 0.5 <= hi for lo, hi in zip(table["acc_low"], table["acc_high"]))
    out = {"accuracy_sum": float(base_acc["sum"].mean()), "accuracy_avg": float(base_acc["avg"].mean()),
           "n": len(u), "above": above}  # fmt: skip
    if not any(above.values()):
        out["nothing_learned"] = (
            "No configuration learned the held-out preference beyond the base model (untrained: "
            f"{out['accuracy_sum']:.1%} summed, {out['accuracy_avg']:.1%} per token); check the learning rate, "
            "the epochs or the data."
        )
    elif near_chance:
        out["nothing_learned"] = (
            "Every configuration sits near chance on the held-out pairs (each interval includes 50%); "
            "check the learning rate, the epochs or the data."
        )
    return out


def _planning(outcomes, base_id, chal, table, tau2, alpha, m) -> str:
    """Held-out pairs and seeds that would detect a 3-point difference at 80% power under this rule."""
    ch = table[~table["is_baseline"]].sort_values("diff", ascending=False)
    top = ch["config_id"].iloc[0]
    opts = stats.plan_design(outcomes[base_id], outcomes[top], tau2=np.nan_to_num(tau2), alpha=alpha, m=m,
                             n_configs=len(outcomes))  # fmt: skip
    ok = [o for o in opts if o["n_pairs"] is not None][:3]
    if not ok:
        return "No design with up to 16 seeds per configuration detects a 3-point difference at 80% power."
    return (
        "To detect a 3-point difference at 80% power: "
        + ", or ".join(f"{o['n_pairs']:,} held-out pairs × {o['seeds']} seed(s)" for o in ok)
        + (" (seed spread assumed 0: one seed each)" if not np.isfinite(tau2) else "")
        + "."
    )


def _reason(table, base, winner, switch, rule, alpha, n, unit) -> str:
    what = "recipes" if unit == "recipe" else "these trained adapters"
    if switch:
        w = table[table["config"] == winner].iloc[0]
        m = int((~table["is_baseline"]).sum())
        if rule == "paired_bootstrap":
            ev = f"{1 - alpha / m:.1%} interval on the accuracy difference [{w['ci_low']:+.3f}, {w['ci_high']:+.3f}]"
        elif rule == "seed_rule":
            ev = "the seed rule"
        else:
            ev = f"p = {w['p_adjusted']:.2g} after Holm, one-sided"
        seeds = f" (mean of {w['seeds']} seeds)" if w["seeds"] > 1 else ""
        more = f"{w['diff'] * n:.1f}" if w["seeds"] > 1 else f"{w['diff'] * n:.0f}"
        return (
            f"Switch from {base} to {winner}: it gets {more} more of {n} held-out pairs right{seeds} "
            f"({w['diff']:+.1%}; {w['wins']} won, {w['losses']} lost; {ev}) — a verdict about {what}."
        )
    ch = table[~table["is_baseline"]]
    if ch.empty:
        return f"Keep {base}: there is no challenger to compare."
    top = ch.sort_values("diff", ascending=False).iloc[0]
    gap = top["diff"]
    if gap > 0 and gap < top["mde"]:
        pairs_ = f"{gap * n:+.0f}" if float(gap * n).is_integer() else f"{gap * n:+.1f}"
        return (
            f"Keep {base}: the best challenger, {top['config']}, is {pairs_} of {n} pairs ({gap:+.1%}), "
            f"below the {top['mde']:.1%} this design can detect — no decision possible at this size."
        )
    if gap > 0:
        return (
            f"Keep {base}: the best challenger, {top['config']}, is {gap:+.1%} but not significant under {rule} "
            f"at α = {alpha}."
        )
    return f"Keep {base}: no challenger gets more held-out pairs right (best: {top['config']}, {gap:+.1%})."
