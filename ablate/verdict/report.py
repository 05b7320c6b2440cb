"""The report: what won, by how many held-out pairs, with what evidence, and the flags behind it.

One set of rows is rendered twice — a rich table for the terminal and Markdown for report.md — with
PNG plots beside report.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..results.collect import collect, read_logs
from ..results.storage import Store, as_store, read_plan
from .decide import Decision, decide
from .diagnostics import length_bias, length_quartiles, length_summary, overoptimization

COLUMNS = [
    "#",
    "cell",
    "held-out acc",
    "correct",
    "vs baseline",
    "p (adj)",
    "held-out margin",
    "train margin first→last",
    "retention",
    "flags",
]


@dataclass
class Report:
    name: str
    decision: Decision | None
    rows: list[dict]
    lines: list[str]  # headline and notes, in order
    markdown: str
    plots: list[str]
    cells: pd.DataFrame  # the collected tables the report was built from
    pairs: pd.DataFrame


def _fmt(x, spec=".3f", none="–"):
    return none if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def build_report(
    results: str | Path | Store,
    rule: str | None = None,
    alpha: float | None = None,
    write: bool = True,
    plots: bool = True,
) -> Report:
    results = as_store(results)
    plan = read_plan(results)
    cells, pairs = collect(results, write=write)
    rule = rule or plan["decision"]["rule"]
    alpha = alpha if alpha is not None else plan["decision"]["alpha"]
    done = cells[cells["status"] == "done"]
    logs = {cid: read_logs(results, cid) for cid in done["cell_id"]}
    over = {cid: overoptimization(*logs[cid]) for cid in logs}
    quart = length_quartiles(pairs)
    lbias = length_bias(quart)

    decision, lines = None, []
    try:
        decision = decide(cells, pairs, rule, alpha, plan["decision"].get("tolerance_pairs"), logs)
    except ValueError as e:
        lines.append(f"No decision yet: {e}.")
    comp = decision.comparisons.set_index("config") if decision else pd.DataFrame()

    rows = []
    ranked = cells.assign(_acc=cells["heldout_accuracy"].fillna(-1), _cfg=cells["config"])
    ranked = ranked.sort_values("_acc", ascending=False)
    for rank, r in enumerate(ranked.to_dict("records"), 1):
        cfg = r["_cfg"]
        c = comp.loc[cfg] if cfg in comp.index else None
        flags = []
        if r["is_baseline"]:
            flags.append("baseline")
        if decision and decision.switch and cfg == decision.winner:
            flags.append("WINNER")
        if over.get(r["cell_id"], {}).get("flag"):
            flags.append("overoptimized")
        if r["cell_id"] in lbias.index and lbias.loc[r["cell_id"], "length_flag"]:
            flags.append(f"length-biased (Q4−Q1 {lbias.loc[r['cell_id'], 'length_gap']:+.2f})")
        if r["status"] == "failed":
            flags.append(f"FAILED {r['error_type']}: {r['error']}"[:80])
        elif r["status"] != "done":
            flags.append(r["status"])
        is_done = r["status"] == "done"
        rows.append(
            {
                "#": str(rank) if is_done else "",
                "cell": r["label"],
                "status": r["status"],
                "held-out acc": _fmt(r["heldout_accuracy"]),
                "correct": f"{r['heldout_correct']}/{r['heldout_pairs']}" if is_done else "–",
                "vs baseline": "–"
                if c is None or c["is_baseline"]
                else f"{c['diff_pairs']:+.0f} ({c['wins']}↑ {c['losses']}↓)",
                "p (adj)": "–" if c is None or c["is_baseline"] else _fmt(c["p_adjusted"], ".3g"),
                "held-out margin": _fmt(r["heldout_margin"]),
                "train margin first→last": f"{_fmt(r['train_margin_first'])} → {_fmt(r['train_margin_last'])}"
                if is_done
                else "–",
                "retention": _fmt(c["retention"], ".2f") if c is not None else "–",
                "flags": ", ".join(flags),
            }
        )

    if decision:
        lines.insert(0, decision.reason)
        lines.append(
            f"Rule: {rule} (α = {alpha}); {decision.heldout_pairs} held-out pairs × {decision.seeds} seed(s). "
            f"Smallest difference detectable at 80% power: {decision.mde:.1%} accuracy "
            f"(≈ {decision.mde * decision.heldout_pairs:.0f} pairs)."
        )
        lines += decision.notes
        if decision.seeds > 1:
            spread = "; ".join(
                f"{r.config} {r.accuracy:.3f} ± {r.accuracy_seed_sd:.3f}" for r in decision.comparisons.itertuples()
            )
            lines.append(f"Held-out accuracy across {decision.seeds} seeds (mean ± sd): {spread}.")
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
    pending = (cells["status"] != "done").sum()
    if pending:
        lines.append(f"{pending} cell(s) not done; `ablate resume` runs only those.")

    png = []
    if plots and write and not done.empty:
        from .plots import write_plots

        png = write_plots(results, cells, decision, logs, quart)
    md = _markdown(plan["name"], rows, lines, quart, cells, png)
    if write:
        results.write_text("report.md", md)
    return Report(plan["name"], decision, rows, lines, md, png, cells, pairs)


def _markdown(name, rows, lines, quart, cells, png) -> str:
    out = [f"# ablate report: {name}", "", f"**{lines[0]}**" if lines else "", ""]
    out += [f"- {line}" for line in lines[1:]]
    out += [
        "",
        "## Cells, ranked by held-out accuracy",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    out += ["| " + " | ".join(r[c].replace("|", "/") for c in COLUMNS) + " |" for r in rows]
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
    if not console.is_terminal and console.width < 140:  # piped or logged: don't fold the table to 80 columns
        console.width = 140
    table = Table(title=f"ablate · {rep.name}", title_justify="left")
    for c in COLUMNS:
        table.add_column(
            c,
            justify="right" if c in ("#", "held-out acc", "correct", "p (adj)", "retention") else "left",
            overflow="fold",
        )
    for r in rep.rows:
        style = "bold green" if "WINNER" in r["flags"] else ("red" if r["status"] == "failed" else None)
        table.add_row(*(r[c] for c in COLUMNS), style=style)
    console.print(table)
    if rep.lines:
        console.print(f"[bold]{rep.lines[0]}[/bold]")
        for line in rep.lines[1:]:
            console.print(f"  • {line}")
