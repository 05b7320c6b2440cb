"""PNG plots beside report.md (headless matplotlib), shaped for an ablation matrix of 4 to 100+ cells:

- accuracy.png  held-out accuracy per configuration with its 95% interval, seeds as small dots, the
                untrained base as a reference line (one row per configuration, so it grows in height only)
- heatmap.png   held-out accuracy over LoRA rank (columns) × the rest of the recipe (rows), one panel per
                value of the axes that remain (lr, epochs)
- margins.png   training margin and held-out accuracy over steps, one colour per configuration, seeds thin;
                one panel per objective (their rewards are on different scales)
- length.png    accuracy by length quartile, configurations × Q1..Q4 as a heat-map (flat rows = robust)
- generations.png  (eval.generate) generated length per configuration (box: quartiles, seeds pooled; the
                length cap dashed) and, with generations at evals, the median length over training steps

Every configuration keeps one colour across plots; legends sit outside the axes, or are left out when the
configurations are too many to name (the heat-maps and accuracy.png name them on the axis instead).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from ..results.storage import Store

LEGEND_MAX = 24  # more configurations than this: no legend (they are named on the other plots' axes)


def configuration_colours(configs: list[str]) -> dict[str, tuple]:
    """A distinct colour per configuration: tab10/tab20 while they last, then evenly spaced hues."""
    import matplotlib

    n = len(configs)
    if n <= 20:  # the qualitative maps list their colours
        cols = matplotlib.colormaps["tab10" if n <= 10 else "tab20"].colors[:n]  # type: ignore[attr-defined]
    else:
        cmap = matplotlib.colormaps["turbo"]
        cols = [cmap(x)[:3] for x in np.linspace(0.03, 0.97, n)]
    return {c: tuple(float(v) for v in col[:3]) for c, col in zip(configs, cols)}


def _order(cells: pd.DataFrame, decision) -> list[str]:
    """Configurations by held-out accuracy (seeds pooled), best first."""
    done = cells[cells["status"] == "done"]
    return list(done.groupby("config", sort=False)["heldout_accuracy"].mean().sort_values(ascending=False).index)


def fig_accuracy(cells: pd.DataFrame, decision, colours: dict):
    import matplotlib.pyplot as plt

    order = _order(cells, decision)[::-1]  # best at the top
    n = len(order)
    fig, ax = plt.subplots(figsize=(8, min(18, 1.2 + 0.28 * n)))
    comp = decision.comparisons.set_index("config") if decision is not None else None
    done = cells[cells["status"] == "done"]
    for y, cfg in enumerate(order):
        acc = done.loc[done["config"] == cfg, "heldout_accuracy"].to_numpy(float)
        mean = acc.mean()
        if comp is not None and cfg in comp.index:
            lo, hi = comp.at[cfg, "acc_low"], comp.at[cfg, "acc_high"]
            ax.plot([lo, hi], [y, y], color="black", lw=1, zorder=1)
        ax.scatter(acc, np.full(len(acc), y), s=10, color=colours[cfg], alpha=0.6, zorder=2, gid=cfg)
        edge = "black" if decision is not None and cfg == decision.baseline else "none"
        ax.scatter([mean], [y], s=60, color=colours[cfg], edgecolor=edge, zorder=3, gid=cfg)
        if decision is not None and decision.switch and cfg == decision.winner:
            ax.annotate("winner", (mean, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    if decision is not None and decision.untrained:
        u = decision.untrained
        ax.axvline(u["accuracy_sum"], color="grey", ls="--", lw=1)
        ax.axvline(u["accuracy_avg"], color="grey", ls=":", lw=1)
    ax.axvline(0.5, color="lightgrey", lw=0.8)
    ax.set_yticks(range(n), order, fontsize=8 if n <= 40 else 6)
    ax.set_xlim(0, 1)
    ax.set_xlabel("held-out accuracy (big dot: mean over seeds; small: each seed; bar: 95% interval)")
    title = "Held-out accuracy per configuration (black edge = baseline)"
    if decision is not None and decision.untrained:
        title += "\nuntrained base: dashed = summed log-probs, dotted = per token"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _without_rank(config: str, rank) -> str:
    """A configuration's label without its rank: the heat-map row it belongs to."""
    return " ".join(t for t in config.split() if t != f"r{rank}")


def fig_heatmap(cells: pd.DataFrame):
    import matplotlib.pyplot as plt

    done = cells[cells["status"] == "done"].copy()
    facets = [k for k in ("lr", "epochs") if k in done and done[k].nunique(dropna=True) > 1]
    done["_row"] = [_without_rank(c, r) for c, r in zip(done["config"], done["lora_rank"])]
    done["_facet"] = [" ".join(f"{k} {r[k]:g}" for k in facets) or "all" for _, r in done.iterrows()]
    ranks = sorted(done["lora_rank"].unique())
    rows = list(done.groupby("_row")["heldout_accuracy"].mean().sort_values(ascending=False).index)
    panels = list(dict.fromkeys(done["_facet"]))
    ncols = min(3, len(panels))
    nrows = int(np.ceil(len(panels) / ncols))
    w = min(22, max(4.5, 1.0 + 0.7 * len(ranks) + 0.06 * max(len(r) for r in rows)) * ncols)
    h = min(24, (0.9 + 0.3 * len(rows)) * nrows + 0.6)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        sub = done[done["_facet"] == panel]
        grid = sub.pivot_table(index="_row", columns="lora_rank", values="heldout_accuracy", aggfunc="mean")
        grid = grid.reindex(index=rows, columns=ranks)
        im = ax.imshow(grid.to_numpy(float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        if grid.size <= 300:
            for (i, j), v in np.ndenumerate(grid.to_numpy(float)):
                if v == v:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "k")
        ax.set_xticks(range(len(ranks)), [f"r{r}" for r in ranks])
        ax.set_yticks(range(len(rows)), rows, fontsize=8 if len(rows) <= 30 else 6)
        ax.set_title(panel if len(panels) > 1 else "held-out accuracy (seeds pooled)", fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="held-out accuracy")
    return fig


def fig_margins(cells: pd.DataFrame, logs: dict, colours: dict):
    """Training margin (solid) and held-out accuracy (dashed, right axis) per configuration; seeds thin."""
    import matplotlib.pyplot as plt

    done = cells[cells["status"] == "done"]
    objs = list(dict.fromkeys(done["objective"]))
    fig, axes = plt.subplots(1, len(objs), figsize=(min(24, 5.5 * len(objs) + 2.5), 4.2), squeeze=False)
    for ax, obj in zip(axes[0], objs):
        ax2 = ax.twinx()
        for cfg, g in done[done["objective"] == obj].groupby("config", sort=False):
            col, many = colours[cfg], len(g) > 1
            steps, margins = [], []
            for cid in g["cell_id"]:
                tl, el = logs.get(cid, (pd.DataFrame(), pd.DataFrame()))
                if tl.empty:
                    continue
                ax.plot(tl["step"], tl["rewards/margins"], color=col, lw=0.6 if many else 1.4, alpha=0.5 if many else 1,
                        gid=cfg)  # fmt: skip
                if not el.empty:
                    ax2.plot(el["step"], el["eval_accuracy"], color=col, ls="--", lw=0.6, alpha=0.7, gid=cfg)
                steps.append(tl["step"].to_numpy())
                margins.append(tl["rewards/margins"].to_numpy())
            if many and steps and all(len(s) == len(steps[0]) for s in steps):
                ax.plot(steps[0], np.mean(margins, 0), color=col, lw=1.8, gid=cfg, label=cfg)
            else:
                ax.plot([], [], color=col, lw=1.8, label=cfg, gid=cfg)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"{obj}: training margin (solid), held-out accuracy (dashed)", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("training reward margin (this objective's units)")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("held-out accuracy")
    n = done["config"].nunique()
    if n <= LEGEND_MAX:
        fig.legend(*_handles(axes), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle("A training margin that climbs while held-out accuracy stays flat is overoptimization", fontsize=10)
    fig.tight_layout()
    return fig


def _handles(axes):
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    return handles, labels


def fig_length(cells: pd.DataFrame, quart: pd.DataFrame):
    import matplotlib.pyplot as plt

    q = quart.join(cells.set_index("cell_id")["config"]).groupby("config")[["Q1", "Q2", "Q3", "Q4"]].mean()
    q = q.loc[q["Q4"].sub(q["Q1"]).abs().sort_values().index]  # most length-robust at the top
    n = len(q)
    fig, ax = plt.subplots(figsize=(7, min(18, 1.4 + 0.26 * n)))
    im = ax.imshow(q.to_numpy(float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    if n <= 60:
        for (i, j), v in np.ndenumerate(q.to_numpy(float)):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "k")
    ax.set_xticks(range(4), ["Q1\nchosen\nshortest", "Q2", "Q3", "Q4\nchosen\nlongest"])
    ax.set_yticks(range(n), list(q.index), fontsize=8 if n <= 40 else 6)
    ax.set_title("Held-out accuracy by quartile of (chosen − rejected) length\n(a flat row is length-robust)",
                 fontsize=10)  # fmt: skip
    fig.colorbar(im, ax=ax, label="held-out accuracy")
    fig.tight_layout()
    return fig


def fig_generations(cells: pd.DataFrame, gens: pd.DataFrame, colours: dict, cap: float | None):
    """Final answers' length per configuration in tokens (the cap dashed) and characters, seeds pooled; with
    generations at evals, the median length over training steps."""
    import matplotlib.pyplot as plt

    label = cells.drop_duplicates("config_id").set_index("config_id")["config"]
    g = gens.assign(config=gens["config_id"].map(label))
    order = [c for c in colours if c in set(g["config"])][::-1]  # best held-out accuracy at the top
    steps = g["step"].nunique() > 1
    n = len(order)
    fig, axes = plt.subplots(1, 3 if steps else 2, figsize=(16 if steps else 11, min(18, 1.6 + 0.3 * n)), squeeze=False)
    final = g[g["final"]]
    for ax, col, what in ((axes[0, 0], "tokens", "tokens"), (axes[0, 1], "chars", "characters")):
        data = [final.loc[final["config"] == c, col].to_numpy(float) for c in order]
        box = ax.boxplot(data, vert=False, patch_artist=True, widths=0.6, flierprops={"markersize": 2})
        for patch, c in zip(box["boxes"], order):
            patch.set_facecolor(colours[c])
            patch.set_alpha(0.7)
            patch.set_gid(c)
        ax.set_yticks(range(1, n + 1), order if col == "tokens" else [""] * n, fontsize=8 if n <= 40 else 6)
        if cap and col == "tokens":
            ax.axvline(cap, color="grey", ls="--", lw=1)
        ax.set_xlabel(f"{what} per answer" + (f" (dashed: max_new_tokens {cap:g})" if cap and col == "tokens" else ""))
    axes[0, 0].set_title("What each configuration writes: length of its final answers (seeds pooled)", fontsize=10,
                         loc="left")  # fmt: skip
    if steps:
        ax2 = axes[0, 2]
        med = g.groupby(["config", "step"])["tokens"].median().reset_index()
        for c in order:
            m = med[med["config"] == c]
            ax2.plot(m["step"], m["tokens"], marker="o", ms=3, color=colours[c], label=c, gid=c)
        ax2.set_xlabel("step")
        ax2.set_ylabel("median generated tokens")
        ax2.set_title("Median length over training (shrinking: collapse)", fontsize=10)
        if n <= LEGEND_MAX:
            ax2.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def write_plots(results: Store, cells: pd.DataFrame, decision, logs: dict, quart: pd.DataFrame, gens=None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = configuration_colours(_order(cells, decision))
    figs = {"accuracy.png": fig_accuracy(cells, decision, colours), "heatmap.png": fig_heatmap(cells),
            "margins.png": fig_margins(cells, logs, colours)}  # fmt: skip
    if not quart.empty:
        figs["length.png"] = fig_length(cells, quart)
    if gens is not None and not gens.empty:
        cap = (results.read_json("plan.json") or {}).get("generate") or {}
        figs["generations.png"] = fig_generations(cells, gens, colours, cap.get("max_new_tokens"))
    out = []
    for name, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, dpi=110, format="png", bbox_inches="tight")
        results.write_bytes(name, buf.getvalue())
        out.append(name)
    plt.close("all")
    return out
