"""PNG plots beside report.md (headless matplotlib): margins over training, accuracy with intervals,
accuracy by length quartile."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from ..results.storage import Store


def write_plots(results: Store, cells: pd.DataFrame, decision, logs: dict, quart: pd.DataFrame) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = cells[cells["status"] == "done"].sort_values("label")
    out = []

    # 1. Training vs held-out margin per cell: rewards differ in scale across objectives, so one panel each.
    n = len(done)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, r in zip(axes.flat, done.to_dict("records")):
        tl, el = logs[r["cell_id"]]
        ax.plot(tl["step"], tl["rewards/margins"], color="tab:blue", label="training margin")
        if not el.empty:
            ax.plot(el["step"], el["eval_rewards/margins"], "o-", color="tab:orange", label="held-out margin")
            ax2 = ax.twinx()
            ax2.plot(el["step"], el["eval_accuracy"], "s--", color="tab:green", label="held-out accuracy")
            ax2.set_ylim(0, 1.05)
            ax2.set_ylabel("held-out accuracy", color="tab:green")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(r["label"], fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("reward margin (cell's own units)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [
        plt.Line2D([], [], color="tab:blue"),
        plt.Line2D([], [], color="tab:orange", marker="o"),
        plt.Line2D([], [], color="tab:green", marker="s", ls="--"),
    ]
    fig.legend(
        handles,
        ["training margin", "held-out margin", "held-out accuracy (right axis)"],
        loc="lower center",
        ncol=3,
        frameon=False,
    )
    fig.suptitle(
        "Training vs held-out margins: a training margin that climbs while held-out stays flat is overoptimization"
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    out.append(_save(fig, results, "margins.png"))

    # 2. Held-out accuracy per cell with exact 95% intervals (Clopper-Pearson over its held-out pairs).
    fig, ax = plt.subplots(figsize=(7, 0.5 * n + 1.6))
    labels, acc, lo, hi, colors = [], [], [], [], []
    winner = decision.winner if decision and decision.switch else None
    for r in done.sort_values("heldout_accuracy").to_dict("records"):
        ci = binomtest(int(r["heldout_correct"]), int(r["heldout_pairs"])).proportion_ci()
        labels.append(r["label"])
        acc.append(r["heldout_accuracy"])
        lo.append(r["heldout_accuracy"] - ci.low)
        hi.append(ci.high - r["heldout_accuracy"])
        cfg = r["config"]
        colors.append("tab:green" if cfg == winner else "tab:blue" if r["is_baseline"] else "tab:grey")
    y = np.arange(len(labels))
    ax.errorbar(acc, y, xerr=[lo, hi], fmt="none", ecolor="black", capsize=3)
    ax.scatter(acc, y, c=colors, zorder=3, s=50)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("held-out accuracy (95% exact interval)")
    ax.set_title("Held-out accuracy per cell (blue = baseline, green = winner)")
    fig.tight_layout()
    out.append(_save(fig, results, "accuracy.png"))

    # 3. Accuracy by length quartile: a steep line means length, not content, drives the choice.
    if not quart.empty:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = cells.set_index("cell_id")["label"]
        for cid, q in quart.iterrows():
            ax.plot(["Q1", "Q2", "Q3", "Q4"], q[["Q1", "Q2", "Q3", "Q4"]].to_numpy(float), "o-", label=names[cid])
        ax.set_ylim(0, 1.05)
        ax.set_xlabel(
            "quartile of (chosen − rejected) length in tokens\n"
            "Q1 = chosen shortest relative to rejected → Q4 = chosen longest"
        )
        ax.set_ylabel("held-out accuracy")
        ax.set_title("Accuracy by length difference (flat = length-robust)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(_save(fig, results, "length.png"))
    plt.close("all")
    return out


def _save(fig, results: Store, name: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    results.write_bytes(name, buf.getvalue())
    return name
