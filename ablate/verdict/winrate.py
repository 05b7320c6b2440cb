"""Generation-level evidence per configuration: what its cells write (length, the share that hit the length
cap, repetition) and how often a judge prefers it to the baseline (win rate, its interval, a length-
controlled win rate), plus the flags `collapsed` and `verbose`.

Win rate against the baseline, as a paired outcome matrix. For challenger C, Y_C[i, s] is the mean outcome
(win 1, tie 0.5, loss 0) of C's seed s on prompt i over every baseline seed; the baseline's own matrix is
0.5 everywhere (it ties itself). `win_pairs` writes these as pairs-table rows (`pair` = prompt, `correct` =
outcome), so ablate/verdict/decide.py and stats.py run the same seed-aware test on them as on held-out
accuracy (decision.metric: win_rate): D = win rate − 0.5. The one adaptation: the seed variance τ² is pooled
over the challengers only, since the baseline's constant column says nothing about seeds; the baseline's
seed noise enters through k = 1/S_C + 1/S_B under the same equal-seed-variance assumption.

Length-controlled win rate (the idea of AlpacaEval 2's LC win rate, without its per-instruction term): a
logistic regression of each comparison's outcome on tanh(Δ chars / SD(Δ chars)), Δ = challenger − baseline
answer length; the LC win rate is σ(intercept), the win rate the fit predicts at equal lengths.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from . import stats

COLLAPSE_REPETITION = 0.5  # median seq-rep-4 above this: the answers repeat one phrase
SHRINK = 0.5  # median length at the last eval below this share of the first (every: eval): collapsing
VERBOSE_LENGTH = 1.25  # median length this many times the baseline's, with a win rate not above 50%


def win_pairs(judgements: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Pairs-table rows (cell_id, pair, correct) of per-prompt outcomes against the baseline: a challenger
    cell's outcome averaged over the baseline's cells, 0.5 for each baseline cell."""
    out = judgements.groupby(["cell_id", "prompt_index"], as_index=False)["outcome"].mean()
    out = out.rename(columns={"prompt_index": "pair", "outcome": "correct"})
    prompts = np.sort(judgements["prompt_index"].unique())
    done = cells[(cells["status"] == "done") & cells["is_baseline"]]
    base = [pd.DataFrame({"cell_id": c, "pair": prompts, "correct": 0.5}) for c in done["cell_id"]]
    return pd.concat([out, *base], ignore_index=True)


def length_controlled(outcome: np.ndarray, dlen: np.ndarray, scale: float) -> float:
    """σ(b0) of the fit outcome ~ σ(b0 + b1·tanh(dlen/scale)), outcomes in [0, 1] (ties 0.5); a small ridge
    on b1 keeps it finite when length separates the outcomes."""
    x = np.tanh(dlen / scale) if scale > 0 else np.zeros_like(dlen, dtype=float)

    def loss(b):
        z = b[0] + b[1] * x
        return float(np.mean(np.logaddexp(0, z) - outcome * z) + 1e-3 * b[1] ** 2)

    b = optimize.minimize(loss, np.zeros(2), method="BFGS").x
    return float(1 / (1 + np.exp(-b[0])))


def win_interval(y: np.ndarray, base_seeds: int, tau2: float, df_seed: float, s2, alpha: float = 0.05):
    """Two-sided interval on a challenger's expected win rate with the recipe test's SE and df (prompts and
    seeds, the baseline's seeds too), clipped to [0, 1]. Few seeds and noisy answers give few df: wide."""
    base = np.full((y.shape[0], base_seeds), 0.5)
    r = stats.recipe_compare(base, y, tau2, df_seed, s2=s2)
    half = sps.t.isf(alpha / 2, r["df"]) * r["se"] if r["se"] > 0 else 0.0
    return float(max(0.0, y.mean() - half)), float(min(1.0, y.mean() + half))


def _tau(wide: dict[str, np.ndarray]):
    sc = stats.seed_components(wide)
    if sc["df"]:
        return float(sc["tau2"]), sc["df"], float(sc["s2"])
    return 0.0, np.inf, None


def generation_table(cells: pd.DataFrame, gens: pd.DataFrame, judgements: pd.DataFrame | None,
                     max_new_tokens: int | None) -> pd.DataFrame:  # fmt: skip
    """One row per configuration (config_id): length, cap, repetition, win rate and flags."""
    done = cells[cells["status"] == "done"]
    final = gens[gens["final"]]
    rows: dict[str, dict] = {}
    for cid, g in final.groupby("config_id", sort=False):
        first, last = _eval_medians(gens[gens["config_id"] == cid])
        rows[cid] = {
            "config_id": cid,
            "gen_median_tokens": float(g["tokens"].median()),
            "gen_q1_tokens": float(g["tokens"].quantile(0.25)),
            "gen_q3_tokens": float(g["tokens"].quantile(0.75)),
            "gen_median_chars": float(g["chars"].median()),
            "at_cap": float((g["finish"] == "length").mean()),
            "repetition": float(g["repetition"].median()),
            "shrinking": bool(first and last < SHRINK * first),
            "win_rate": np.nan, "win_low": np.nan, "win_high": np.nan, "lc_win_rate": np.nan,
            "prompts": g["prompt_index"].nunique(),
        }  # fmt: skip
    if judgements is not None and not judgements.empty:
        pairs = win_pairs(judgements, cells)
        wide = pairs.pivot(index="pair", columns="cell_id", values="correct").sort_index()
        configs = done.groupby("config_id", sort=False)["cell_id"].apply(list)
        base_cfg = set(done.loc[done["is_baseline"], "config_id"])
        ys = {c: wide[[x for x in ids if x in wide]].to_numpy() for c, ids in configs.items()}
        ys = {c: y for c, y in ys.items() if y.shape[1] and c not in base_cfg}
        tau2, df_seed, s2 = _tau(ys)
        lens = judgements["challenger_chars"] - judgements["baseline_chars"]
        scale = float(lens.std(ddof=1)) if len(lens) > 1 else 0.0
        by_cfg = judgements.merge(done[["cell_id", "config_id"]], on="cell_id")
        for c, y in ys.items():
            lo, hi = win_interval(y, int(done["is_baseline"].sum()), tau2, df_seed, s2)
            j = by_cfg[by_cfg["config_id"] == c]
            dlen = (j["challenger_chars"] - j["baseline_chars"]).to_numpy(float)
            lc = length_controlled(j["outcome"].to_numpy(float), dlen, scale)
            rows.setdefault(c, {"config_id": c}).update(
                win_rate=float(y.mean()), win_low=lo, win_high=hi, lc_win_rate=lc
            )
        for c in base_cfg:
            if c in rows:
                rows[c].update(win_rate=0.5)
    table = pd.DataFrame(list(rows.values()))
    if table.empty:
        return table
    base_len = table.loc[table["config_id"].isin(set(done.loc[done["is_baseline"], "config_id"])), "gen_median_chars"]
    table["collapsed"] = (table["repetition"] > COLLAPSE_REPETITION) | table["shrinking"]
    table["verbose"] = False
    if len(base_len) and base_len.iloc[0] > 0:
        longer = table["gen_median_chars"] >= VERBOSE_LENGTH * base_len.iloc[0]
        table["verbose"] = longer & (table["win_low"] <= 0.5)
    table["max_new_tokens"] = max_new_tokens
    return table


def _eval_medians(g: pd.DataFrame) -> tuple[float, float]:
    """Median generated length (chars) at the first and the last generation of training, seeds pooled."""
    steps = sorted(g["step"].unique())
    if len(steps) < 2:
        return 0.0, 0.0
    med = g.groupby("step")["chars"].median()
    return float(med[steps[0]]), float(med[steps[-1]])


def examples(gens: pd.DataFrame, cells: pd.DataFrame, judgements: pd.DataFrame | None, k: int = 3) -> list[str]:
    """Markdown: the first k prompts, each configuration's answer (its first seed) side by side, with the
    judge's outcome against the baseline's first-seed answer."""
    final = gens[gens["final"]]
    done = cells[cells["status"] == "done"].sort_values(["is_baseline", "seed"], ascending=[False, True])
    first_cells = done.drop_duplicates("config_id")
    base_cell = first_cells.loc[first_cells["is_baseline"], "cell_id"]
    out: list[str] = []
    for i in sorted(final["prompt_index"].unique())[:k]:
        p = final.loc[final["prompt_index"] == i, "prompt"].iloc[0]
        out += ["", f"**Prompt {i}:** {_md(p, 300)}", "", "| configuration | answer | tokens | stop | vs baseline |",
                "|---|---|---:|---|---|"]  # fmt: skip
        for _, c in first_cells.iterrows():
            row = final[(final["cell_id"] == c["cell_id"]) & (final["prompt_index"] == i)]
            if row.empty:
                continue
            r = row.iloc[0]
            vs = "baseline" if c["is_baseline"] else "–"
            if judgements is not None and not c["is_baseline"]:
                j = judgements[(judgements["cell_id"] == c["cell_id"]) & (judgements["prompt_index"] == i)]
                j = j[j["baseline_cell_id"].isin(base_cell)]  # against the baseline answer shown above
                if not j.empty:
                    x = float(j["outcome"].iloc[0])
                    vs = {1.0: "win", 0.5: "tie", 0.0: "loss"}.get(x, f"{x:.2f}")
            out.append(f"| {c['config']} | {_md(r['text'], 240)} | {r['tokens']} | {r['finish']} | {vs} |")
    return out


def _md(text: str, limit: int) -> str:
    """One Markdown table cell, as code: control bytes as \\xNN, newlines as ⏎, pipes escaped, long text cut."""
    s = "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" for c in str(text))
    s = s.replace("\n", " ⏎ ").replace("|", "\\|")
    s = s if len(s) <= limit else s[: limit - 1] + "…"
    return f"`` {s} ``" if s.strip() else "*(empty)*"


def reason(table, base, winner, switch, rule, alpha, n, unit) -> str:
    """The headline when the decision is on the judge's win rate against the baseline."""
    what = "recipes" if unit == "recipe" else "these trained adapters"
    if switch:
        w = table[table["config"] == winner].iloc[0]
        ev = "the seed rule" if rule == "seed_rule" else f"p = {w['p_adjusted']:.2g} after Holm, one-sided"
        if rule == "paired_bootstrap":
            ev = f"interval on the win rate − 50% [{w['ci_low']:+.3f}, {w['ci_high']:+.3f}]"
        seeds = f", mean of {w['seeds']} seeds" if w["seeds"] > 1 else ""
        return (
            f"Switch from {base} to {winner}: the judge prefers its answers {w['accuracy']:.1%} of the time on {n} "
            f"prompts ({w['wins']} prompts won, {w['losses']} lost{seeds}; {ev}) — a verdict about {what}."
        )
    ch = table[~table["is_baseline"]]
    if ch.empty:
        return f"Keep {base}: there is no challenger to compare."
    top = ch.sort_values("diff", ascending=False).iloc[0]
    why = (
        f"below the {min(top['mde'], 0.5):.1%} this design can detect — no decision possible at this size"
        if 0 < top["diff"] < top["mde"]
        else f"not significant under {rule} at α = {alpha}"
        if top["diff"] > 0
        else "no challenger wins more than half"
    )
    best = f"the best challenger, {top['config']}, wins {top['accuracy']:.1%} against it on {n} prompts"
    return f"Keep {base}: {best}; {why}."


def winner_writes(verdict, gen_table: pd.DataFrame, win_rule: bool) -> list[str]:
    """When the held-out winner's answers do not beat the baseline's, say so."""
    w = verdict.comparisons.set_index("config").loc[verdict.winner] if verdict and verdict.switch else None
    if w is None or win_rule or w["config_id"] not in set(gen_table["config_id"]):
        return []
    g = gen_table.set_index("config_id").loc[w["config_id"]]
    if g["win_rate"] == g["win_rate"] and g["win_low"] <= 0.5:
        return [
            f"The winner's answers win {g['win_rate']:.1%} [{g['win_low']:.2f}, {g['win_high']:.2f}] of the judged "
            "prompts against the baseline's: its held-out gain does not show in what it writes."
        ]
    return []


def report_lines(gens, table, judge, judgements, error) -> list[str]:
    final = gens[gens["final"]]
    out = [
        f"Generations: {final['prompt_index'].nunique()} held-out prompts per cell; answers median "
        f"{final['tokens'].median():.0f} tokens ({final['chars'].median():.0f} characters), "
        f"{(final['finish'] == 'length').mean():.0%} stopped at max_new_tokens."
    ]
    if judge and error:
        out.append(f"JUDGE FAILED ({judge['name']}): {error}. The cells are kept; `ablate resume` judges again.")
    elif judge and judgements is not None and not judgements.empty:
        out.append(
            f"Judge: {judge['name']}; win rate = share of prompts on which it prefers the configuration's answer to "
            "the baseline's (ties ½), over every seed pair; LC win = at equal answer lengths (logistic adjustment)."
        )
    why = {
        "collapsed": f"median seq-rep-4 above {COLLAPSE_REPETITION} or answers shrinking below "
        f"{SHRINK:.0%} of their first length across evals",
        "verbose": f"median length ≥ {VERBOSE_LENGTH}× the baseline's, win rate not above 50%",
    }
    for flag in why:
        if table[flag].any():
            out.append(f"{int(table[flag].sum())} configuration(s) {flag}: {why[flag]}.")
    return out
