"""The report: what won, by how much, with what evidence, and the flags behind it — one row per
configuration (its seeds pooled, with their spread), the untrained base model as the first reference
row, and the columns of the rule actually applied. Per-seed rows stay in cells.parquet and come back
with `per_seed=True` (`ablate report --per-seed`).

One set of rows is rendered twice — a rich table for the terminal and Markdown for report.md — with
PNG plots beside report.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..results.collect import collect, read_logs, read_untrained
from ..results.storage import Store, as_store, read_plan
from .decide import ALIASES, Decision, decide
from .diagnostics import length_bias, length_quartiles, length_summary, overoptimization

# The evidence columns of each rule (the rest are shared).
RULE_COLUMNS = {
    "recipe": ["p (Holm, 1-sided)", "lower bound"],
    "adapter_exact": ["p (Holm, 1-sided)"],
    "paired_bootstrap": ["interval"],
    "seed_rule": ["≥ 1 more pair", "retention ≥ baseline"],
}
HEAD = ["#", "configuration", "seeds", "held-out acc", "95% interval", "vs baseline"]
TAIL = ["retention", "flags"]  # margins per cell: `ablate report --per-seed`
SEED_COLUMNS = ["#", "cell", "held-out acc", "correct", "held-out margin", "train margin first→last", "flags"]


@dataclass
class Report:
    name: str
    decision: Decision | None
    rows: list[dict]  # one per configuration (plus the untrained base), or per cell with per_seed
    columns: list[str]
    lines: list[str]  # headline and notes, in order
    markdown: str
    plots: list[str]
    cells: pd.DataFrame  # the collected tables the report was built from
    pairs: pd.DataFrame


def _fmt(x, spec=".3f", none="–"):
    return none if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def _pct(x, spec="+.1%"):
    return _fmt(x, spec)


def build_report(
    results: str | Path | Store,
    rule: str | None = None,
    alpha: float | None = None,
    write: bool = True,
    plots: bool = True,
    per_seed: bool = False,
) -> Report:
    results = as_store(results)
    plan = read_plan(results)
    cells, pairs = collect(results, write=write)
    d = plan["decision"]
    rule = ALIASES.get(rule or d["rule"], rule or d["rule"])
    alpha = alpha if alpha is not None else d["alpha"]
    done = cells[cells["status"] == "done"]
    logs = {cid: read_logs(results, cid) for cid in done["cell_id"]}
    over = {cid: overoptimization(*logs[cid]) for cid in logs}
    untrained = read_untrained(results)

    decision, lines = None, []
    try:
        decision = decide(
            cells, pairs, rule, alpha, d.get("tolerance_pairs"), logs, assumed_seed_sd=d.get("assumed_seed_sd"),
            untrained=untrained,
        )  # fmt: skip
    except ValueError as e:
        lines.append(f"No decision yet: {e}.")

    if per_seed or decision is None:
        columns, rows = SEED_COLUMNS, _seed_rows(cells, pairs, decision, over)
    else:
        columns = HEAD + RULE_COLUMNS[rule] + TAIL
        rows = _config_rows(cells, pairs, decision, over, untrained)

    if decision:
        lines.insert(0, decision.reason)
        what = "recipes: seeds and held-out pairs are the noise" if decision.unit == "recipe" else "trained adapters"
        lines.append(
            f"Rule: {rule} (α = {alpha}), a verdict about {what}; {decision.heldout_pairs} held-out pairs × up to "
            f"{decision.seeds} seed(s). Smallest difference it detects at 80% power: {decision.mde:.1%} accuracy "
            f"(≈ {decision.mde * decision.heldout_pairs:.0f} pairs)."
        )
        lines += decision.notes
        if np.isfinite(decision.seed_sd):
            comp = decision.comparisons[~decision.comparisons["is_baseline"]]
            share = float(comp["seed_share"].mean()) if comp["seed_share"].notna().any() else float("nan")
            lines.append(
                f"Seed-to-seed spread of held-out accuracy: SD {decision.seed_sd * 100:.1f} points (pooled over "
                f"configurations with ≥ 2 seeds); seeds make {_fmt(share, '.0%')} of a comparison's variance, "
                f"held-out pairs the rest."
            )
        if decision.planning:
            lines.append(decision.planning)
    for r in plan.get("replication") or []:
        added = "; ".join(f"{a['config']}: seeds {', '.join(map(str, a['seeds']))}" for a in r["added"])
        lines.append(f"Replication added {added} — {r['why']}.")
    ls = length_summary(pairs)
    if ls:
        lines.append(
            f"Held-out lengths (tokens): chosen median {ls['chosen_median']:.0f}, rejected median "
            f"{ls['rejected_median']:.0f}; chosen is longer in {ls['share_chosen_longer']:.0%} of pairs."
        )
    n_over = sum(v["flag"] for v in over.values())
    if n_over:
        lines.append(
            f"{n_over} cell(s) overoptimized: training margin kept rising in the second half while held-out "
            "accuracy did not (retention = held-out margin / training margin; lower is worse)."
        )
    pending = int((cells["status"] != "done").sum())
    if pending:
        lines.append(f"{pending} cell(s) not done; `ablate resume` runs only those.")

    quart = length_quartiles(pairs)
    png = []
    if plots and write and not done.empty:
        from .plots import write_plots

        png = write_plots(results, cells, decision, logs, quart)
    md = _markdown(plan["name"], columns, rows, lines, quart, cells, png)
    if write:
        results.write_text("report.md", md)
    return Report(plan["name"], decision, rows, columns, lines, md, png, cells, pairs)


def _flags_by_config(cells: pd.DataFrame, pairs: pd.DataFrame, over: dict) -> dict[str, list[str]]:
    quart = length_quartiles(pairs)
    lbias = length_bias(quart)
    out: dict[str, list[str]] = {}
    for cid, g in cells.groupby("config_id", sort=False):
        flags, done = [], g[g["status"] == "done"]
        n_over = sum(over.get(c, {}).get("flag", False) for c in done["cell_id"])
        if n_over:
            flags.append("overoptimized" + (f" ({n_over}/{len(done)} seeds)" if len(done) > 1 else ""))
        gaps = [lbias.loc[c, "length_gap"] for c in done["cell_id"] if c in lbias.index]
        if gaps and abs(np.mean(gaps)) >= 0.3:
            flags.append(f"length-biased (Q4−Q1 {np.mean(gaps):+.2f})")
        for status in ("failed", "running", "pending"):
            k = int((g["status"] == status).sum())
            if k:
                flags.append(f"{k} {status}" if status != "failed" else f"{k} FAILED")
        out[cid] = flags
    return out


def _config_rows(cells, pairs, decision: Decision, over, untrained) -> list[dict]:
    comp = decision.comparisons.set_index("config_id")
    flags = _flags_by_config(cells, pairs, over)
    ranked = comp.sort_values("accuracy", ascending=False)
    rows = []
    if untrained is not None and decision.untrained:
        u = decision.untrained
        n = u["n"]
        rows.append({
            "#": "", "configuration": "base (untrained)", "seeds": "–",
            "held-out acc": f"{u['accuracy_sum']:.3f} / {u['accuracy_avg']:.3f}",
            "95% interval": _interval(u["accuracy_sum"], n), "vs baseline": "–",
            "retention": "–", "flags": "before training; summed / per-token log-probs", "_style": "dim",
        })  # fmt: skip
    for rank, (cid, c) in enumerate(ranked.iterrows(), 1):
        f = list(flags.get(cid, []))
        if c["is_baseline"]:
            f.insert(0, "baseline")
        if decision.switch and c["config"] == decision.winner:
            f.insert(0, "WINNER")
        if c["contender"] is False:
            f.append("not in contention")
        if decision.untrained and not decision.untrained["above"].get(c["config"], True):
            f.append("≤ untrained")
        acc = f"{c['accuracy']:.3f}" + (f" ± {c['accuracy_seed_sd']:.3f}" if c["seeds"] > 1 else "")
        row = {
            "#": str(rank),
            "configuration": c["config"],
            "seeds": str(c["seeds"]),
            "held-out acc": acc,
            "95% interval": f"[{c['acc_low']:.3f}, {c['acc_high']:.3f}]",
            "vs baseline": "–" if c["is_baseline"] else f"{c['diff']:+.1%} ({c['wins']}↑ {c['losses']}↓)",
            "retention": _fmt(c["retention"], ".2f"),
            "flags": ", ".join(f),
            "_style": "bold green" if "WINNER" in f else None,
        }
        if not c["is_baseline"]:
            row.update({
                "p (Holm, 1-sided)": _fmt(c["p_adjusted"], ".3g"),
                "lower bound": _pct(c["ci_low"]),
                "interval": f"[{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]",
                "≥ 1 more pair": "yes" if c["diff_pairs"] >= 1 else "no",
                "retention ≥ baseline": "yes" if c["significant"] else ("–" if c["diff_pairs"] < 1 else "no"),
            })  # fmt: skip
        rows.append(row)
    return rows


def _interval(p: float, n: int) -> str:
    from scipy.stats import binomtest

    ci = binomtest(round(p * n), n).proportion_ci()
    return f"[{ci.low:.3f}, {ci.high:.3f}]"


def _seed_rows(cells, pairs, decision, over) -> list[dict]:
    quart = length_quartiles(pairs)
    lbias = length_bias(quart)
    rows = []
    ranked = cells.assign(_acc=cells["heldout_accuracy"].fillna(-1)).sort_values("_acc", ascending=False)
    for rank, r in enumerate(ranked.to_dict("records"), 1):
        flags, is_done = [], r["status"] == "done"
        if r["is_baseline"]:
            flags.append("baseline")
        if r.get("replicated"):
            flags.append("replication")
        if decision and decision.switch and r["config"] == decision.winner:
            flags.append("winning configuration")
        if over.get(r["cell_id"], {}).get("flag"):
            flags.append("overoptimized")
        if r["cell_id"] in lbias.index and lbias.loc[r["cell_id"], "length_flag"]:
            flags.append(f"length-biased (Q4−Q1 {lbias.loc[r['cell_id'], 'length_gap']:+.2f})")
        if r["status"] == "failed":
            flags.append(f"FAILED {r['error_type']}: {r['error']}"[:80])
        elif not is_done:
            flags.append(r["status"])
        rows.append({
            "#": str(rank) if is_done else "", "cell": r["label"], "status": r["status"],
            "held-out acc": _fmt(r["heldout_accuracy"]),
            "correct": f"{r['heldout_correct']}/{r['heldout_pairs']}" if is_done else "–",
            "held-out margin": _fmt(r["heldout_margin"]),
            "train margin first→last": f"{_fmt(r['train_margin_first'])} → {_fmt(r['train_margin_last'])}"
            if is_done else "–",
            "flags": ", ".join(flags), "_style": "red" if r["status"] == "failed" else None,
        })  # fmt: skip
    return rows


def _markdown(name, columns, rows, lines, quart, cells, png) -> str:
    out = [f"# ablate report: {name}", "", f"**{lines[0]}**" if lines else "", ""]
    out += [f"- {line}" for line in lines[1:]]
    title = "Cells, ranked by held-out accuracy" if "cell" in columns else "Configurations (seeds pooled)"
    out += ["", f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(r.get(c, "–")).replace("|", "/") for c in columns) + " |" for r in rows]
    if not quart.empty:
        labels = cells.set_index("cell_id")["label"]
        out += [
            "",
            "## Held-out accuracy by length quartile",
            "",
            "Quartiles of (chosen − rejected) length in tokens: "
            "Q1 = chosen shortest relative to rejected, Q4 = longest.",
            "",
            "| cell | Q1 | Q2 | Q3 | Q4 |",
            "|---|---|---|---|---|",
        ]
        for cid, q in quart.iterrows():
            out.append(f"| {labels[cid]} | " + " | ".join(_fmt(q[k], ".2f") for k in ["Q1", "Q2", "Q3", "Q4"]) + " |")
    if png:
        out += ["", "## Plots", ""] + [f"![{p.removesuffix('.png')}]({p})" for p in png]
    return "\n".join(out) + "\n"


def print_report(rep: Report, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal and console.width < 160:  # piped or logged: don't fold the table to 80 columns
        console.width = 160
    table = Table(title=f"ablate · {rep.name}", title_justify="left")
    right = {"#", "seeds", "held-out acc", "correct", "p (Holm, 1-sided)", "lower bound", "retention"}
    for c in rep.columns:
        table.add_column(c, justify="right" if c in right else "left", overflow="fold")
    for r in rep.rows:
        table.add_row(*(str(r.get(c, "–")) for c in rep.columns), style=r.get("_style"))
    console.print(table)
    if rep.lines:
        from rich.text import Text

        console.print(Text(rep.lines[0], style="bold"), highlight=False)
        for line in rep.lines[1:]:
            console.print(f"  • {line}", markup=False, highlight=False)
