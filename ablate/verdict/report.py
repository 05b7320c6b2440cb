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

from ..results.collect import collect, collect_generations, read_judgements, read_logs, read_untrained
from ..results.storage import Store, as_store, read_plan
from . import winrate
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
# With eval.generate: what the configuration writes (seeds pooled) and, with a judge, its win rate vs the baseline.
GEN_COLUMNS = ["gen tokens (IQR)", "chars", "at cap", "rep-4", "win rate [95%]", "LC win"]
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
    generations: pd.DataFrame | None = None  # eval.generate: one row per cell × prompt (× eval step)
    gen_columns: list[str] | None = None  # the second table: what each configuration writes (rows hold both)
    judge_error: str | None = None  # the judge step failed (the cells are kept); `ablate resume` judges again


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
    gens = collect_generations(results, cells)
    judge = plan.get("judge")
    judgements, judge_error = read_judgements(results, judge["key"]) if judge else (None, None)
    win_rule = d.get("metric") == "win_rate"

    decision, verdict, lines = _decide(cells, pairs, rule, alpha, d, logs, untrained, judgements, judge_error)
    gen_table = (
        winrate.generation_table(cells, gens, judgements, (plan.get("generate") or {}).get("max_new_tokens"))
        if gens is not None
        else None
    )
    if per_seed or decision is None:
        columns, rows = SEED_COLUMNS, _seed_rows(cells, pairs, decision, over)
    else:
        columns = HEAD + RULE_COLUMNS[rule] + TAIL
        rows = _config_rows(cells, pairs, decision, over, untrained, verdict, gen_table)
    if verdict:
        lines.insert(0, verdict.reason)
        lines.append(_rule_line(verdict, rule, alpha, win_rule))
    if decision:
        lines += _design_lines(decision, verdict or decision)
    lines += _context_lines(plan, cells, pairs, over)
    if gen_table is not None:
        lines += winrate.report_lines(gens, gen_table, judge, judgements, judge_error)
        lines += winrate.winner_writes(verdict, gen_table, win_rule)

    quart = length_quartiles(pairs)
    png = []
    if plots and write and not done.empty:
        from .plots import write_plots

        png = write_plots(results, cells, decision, logs, quart, gens)
    md = _markdown(plan["name"], columns, rows, lines, quart, cells, png)
    gen_columns = (
        ["#", "configuration", *GEN_COLUMNS, "gen flags"] if gen_table is not None and "cell" not in columns else None
    )
    if gen_columns:
        md += "\n## What each configuration writes (final answers, seeds pooled)\n\n" + _md_table(
            gen_columns, rows, GEN_COLUMNS
        )
    if gens is not None:
        md += (
            "\n## Example answers (first seed of each configuration)\n"
            + "\n".join(winrate.examples(gens, cells, judgements))
            + "\n"
        )
    if write:
        results.write_text("report.md", md)
    return Report(plan["name"], verdict, rows, columns, lines, md, png, cells, pairs, gens, gen_columns, judge_error)


def _decide(cells, pairs, rule, alpha, d, logs, untrained, judgements, judge_error):
    """(the held-out decision, the verdict that decides — the same, or the win-rate one — and early lines)."""
    decision, lines = None, []
    try:
        decision = decide(
            cells, pairs, rule, alpha, d.get("tolerance_pairs"), logs, assumed_seed_sd=d.get("assumed_seed_sd"),
            untrained=untrained,
        )  # fmt: skip
    except ValueError as e:
        lines.append(f"No decision yet: {e}.")
    verdict = decision  # what decides: held-out accuracy, or the judge's win rate (decision.metric)
    if d.get("metric") == "win_rate" and decision is not None:
        verdict = None
        if judge_error or judgements is None or judgements.empty:
            why = judge_error or "not run"
            lines.append(f"No decision yet: decision.metric is win_rate and the judge has no verdicts ({why}).")
        else:
            verdict = decide(cells, winrate.win_pairs(judgements, cells), rule, alpha, d.get("tolerance_pairs"), logs,
                             assumed_seed_sd=d.get("assumed_seed_sd"), metric="win_rate")  # fmt: skip
    return decision, verdict, lines


def _rule_line(verdict: Decision, rule: str, alpha: float, win_rule: bool) -> str:
    what = "recipes: seeds and held-out pairs are the noise" if verdict.unit == "recipe" else "trained adapters"
    unit, size = ("win-rate points", "prompts") if win_rule else ("accuracy", "held-out pairs")
    on = " on the judge's win rate against the baseline" if win_rule else ""
    mde = (
        f"Smallest difference it detects at 80% power: {verdict.mde:.1%} {unit} "
        f"(≈ {verdict.mde * verdict.heldout_pairs:.0f} {size.split()[-1]})."
        if verdict.mde < (0.5 if win_rule else 1.0)
        else "At 80% power it detects no possible difference with this design."
    )
    return (
        f"Rule: {rule} (α = {alpha}){on}, a verdict about {what}; {verdict.heldout_pairs} {size} × up to "
        f"{verdict.seeds} seed(s). {mde}"
    )


def _design_lines(decision: Decision, verdict: Decision) -> list[str]:
    """The rule's notes, the seed spread and how much of the variance it makes, and the planning line."""
    out = list(verdict.notes)
    if np.isfinite(decision.seed_sd):
        comp = decision.comparisons[~decision.comparisons["is_baseline"]]
        share = float(comp["seed_share"].mean()) if comp["seed_share"].notna().any() else float("nan")
        out.append(
            f"Seed-to-seed spread of held-out accuracy: SD {decision.seed_sd * 100:.1f} points (pooled over "
            f"configurations with ≥ 2 seeds); seeds make {_fmt(share, '.0%')} of a comparison's variance, "
            f"held-out pairs the rest."
        )
    if verdict.planning:
        out.append(verdict.planning)
    return out


def _context_lines(plan: dict, cells: pd.DataFrame, pairs: pd.DataFrame, over: dict) -> list[str]:
    """Replication history, held-out lengths, overoptimized cells and cells not done."""
    out = []
    for r in plan.get("replication") or []:
        added = "; ".join(f"{a['config']}: seeds {', '.join(map(str, a['seeds']))}" for a in r["added"])
        out.append(f"Replication added {added} — {r['why']}.")
    ls = length_summary(pairs)
    if ls:
        out.append(
            f"Held-out lengths (tokens): chosen median {ls['chosen_median']:.0f}, rejected median "
            f"{ls['rejected_median']:.0f}; chosen is longer in {ls['share_chosen_longer']:.0%} of pairs."
        )
    n_over = sum(v["flag"] for v in over.values())
    if n_over:
        out.append(
            f"{n_over} cell(s) overoptimized: training margin kept rising in the second half while held-out "
            "accuracy did not (retention = held-out margin / training margin; lower is worse)."
        )
    pending = int((cells["status"] != "done").sum())
    if pending:
        out.append(f"{pending} cell(s) not done; `ablate resume` runs only those.")
    return out


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


def _config_rows(cells, pairs, decision: Decision, over, untrained, verdict=None, gen=None) -> list[dict]:
    """Accuracy columns from `decision`; the test's columns, WINNER and contention from `verdict` (the same
    decision, or the win-rate one); the generation columns from `gen` (winrate.generation_table)."""
    comp = decision.comparisons.set_index("config_id")
    vcomp = verdict.comparisons.set_index("config_id") if verdict is not None else None
    g = gen.set_index("config_id") if gen is not None and not gen.empty else None
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
        v = vcomp.loc[cid] if vcomp is not None and cid in vcomp.index else None
        if verdict is not None and verdict.switch and c["config"] == verdict.winner:
            f.insert(0, "WINNER")
        if v is not None and v["contender"] is False:
            f.append("not in contention")
        gen_flags = [x for x in ("collapsed", "verbose") if g is not None and cid in g.index and g.at[cid, x]]
        f += gen_flags
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
        if g is not None and cid in g.index:
            row.update(_gen_cells(g.loc[cid], c["is_baseline"]), **{"gen flags": ", ".join(gen_flags)})
        if not c["is_baseline"] and v is not None:
            row.update({
                "p (Holm, 1-sided)": _fmt(v["p_adjusted"], ".3g"),
                "lower bound": _pct(v["ci_low"]),
                "interval": f"[{_pct(v['ci_low'])}, {_pct(v['ci_high'])}]",
                "≥ 1 more pair": "yes" if v["diff_pairs"] >= 1 else "no",
                "retention ≥ baseline": "yes" if v["significant"] else ("–" if v["diff_pairs"] < 1 else "no"),
            })  # fmt: skip
        rows.append(row)
    return rows


def _gen_cells(g: pd.Series, is_baseline: bool) -> dict:
    win = "–"
    if is_baseline and g["win_rate"] == g["win_rate"]:
        win = "0.500 (itself)"
    elif g["win_rate"] == g["win_rate"]:
        win = f"{g['win_rate']:.3f} [{g['win_low']:.2f}, {g['win_high']:.2f}]"
    return {
        "gen tokens (IQR)": f"{g['gen_median_tokens']:.0f} ({g['gen_q1_tokens']:.0f}–{g['gen_q3_tokens']:.0f})",
        "chars": f"{g['gen_median_chars']:.0f}",
        "at cap": f"{g['at_cap']:.0%}",
        "rep-4": f"{g['repetition']:.2f}",
        "win rate [95%]": win,
        "LC win": "–" if is_baseline else _fmt(g["lc_win_rate"]),
    }


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
    out += ["", f"## {title}", "", _md_table(columns, rows)]
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


def _md_table(columns: list[str], rows: list[dict], need: list[str] | None = None) -> str:
    """A Markdown table of `rows`; with `need`, only the rows that have those keys."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(r.get(c, "–")).replace("|", "/") for c in columns) + " |" for r in rows
            if all(c in r for c in need or [])]  # fmt: skip
    return "\n".join(out) + "\n"


def print_report(rep: Report, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal and console.width < 160:  # piped or logged: don't fold the table to 80 columns
        console.width = 160
    table = Table(title=f"ablate · {rep.name}", title_justify="left")
    right = {"#", "seeds", "held-out acc", "correct", "p (Holm, 1-sided)", "lower bound", "retention"}
    right |= {"at cap", "rep-4", "LC win", "chars"}
    for c in rep.columns:
        table.add_column(c, justify="right" if c in right else "left", overflow="fold")
    for r in rep.rows:
        table.add_row(*(str(r.get(c, "–")) for c in rep.columns), style=r.get("_style"))
    console.print(table)
    if rep.gen_columns:
        gen = Table(title="what each configuration writes (final answers, seeds pooled)", title_justify="left")
        for c in rep.gen_columns:
            gen.add_column(c, justify="left" if c in ("configuration", "gen flags") else "right", overflow="fold")
        for r in rep.rows:
            if all(c in r for c in rep.gen_columns):
                gen.add_row(*(str(r.get(c, "–")) for c in rep.gen_columns), style=r.get("_style"))
        console.print(gen)
    if rep.lines:
        from rich.text import Text

        console.print(Text(rep.lines[0], style="bold"), highlight=False)
        for line in rep.lines[1:]:
            console.print(f"  • {line}", markup=False, highlight=False)
