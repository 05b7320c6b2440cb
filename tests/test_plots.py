"""The report's plots at 4, 14 and 100 cells: sizes that stay readable, legends outside the axes (or none),
and one distinct colour per configuration — checked on the matplotlib artists, not on pixels."""

from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pandas as pd
import pytest

from ablate.matrix.cells import cell_label, config_label
from ablate.results.storage import Store
from ablate.verdict import plots
from ablate.verdict.decide import decide
from ablate.verdict.diagnostics import length_quartiles

matplotlib.use("Agg")


def matrix(n_cells: int):
    """Synthetic but complete tables (cells, pairs, logs) for a matrix of n_cells cells."""
    specs = {
        4: ([("dpo", {"beta": 0.1}), ("simpo", {"beta": 2.0, "gamma": 0.5})], [16, 8], 1),
        14: (
            [("dpo", {"beta": b}) for b in (0.05, 0.1, 0.2)]
            + [("simpo", {"beta": 2.0, "gamma": g}) for g in (0.3, 0.5)],
            [8],
            2,
        ),
        100: (
            [("dpo", {"beta": b}) for b in (0.02, 0.05, 0.1, 0.2, 0.5)]
            + [("simpo", {"beta": 2.0, "gamma": g}) for g in (0.1, 0.3, 0.5, 0.8, 1.2)],
            [4, 8, 16, 32, 64],
            2,
        ),
    }[n_cells]
    knobs, ranks, seeds = specs
    if n_cells == 14:  # 3 dpo + 2 simpo × 2 ranks = 7 configurations × 2 seeds
        combos = [(o, k, 8) for o, k in knobs[:3]] + [(o, k, r) for (o, k), r in itertools.product(knobs[3:], (8, 16))]
    else:
        combos = [(o, k, r) for (o, k), r in itertools.product(knobs, ranks)]
    rng = np.random.default_rng(n_cells)
    n_pairs = 64
    lengths = rng.integers(5, 30, size=(n_pairs, 2))
    rows, frames, logs = [], [], {}
    for i, (obj, k, r) in enumerate(combos):
        acc = 0.5 + 0.4 * rng.random()
        for s in range(seeds):
            p = {"objective": obj, "lora_rank": r, "seed": s, **k, "lr": 1e-3, "epochs": 1}
            cid = f"c{i}s{s}"
            correct = rng.random(n_pairs) < acc
            rows.append({**p, "cell_id": cid, "label": cell_label(p), "config": config_label(p),
                         "config_id": f"c{i}", "status": "done", "is_baseline": i == 0, "replicated": False,
                         "heldout_accuracy": correct.mean(), "trainable_params": r * 100})  # fmt: skip
            frames.append(pd.DataFrame({"cell_id": cid, "pair": np.arange(n_pairs), "correct": correct,
                                        "chosen_len": lengths[:, 0], "rejected_len": lengths[:, 1]}))  # fmt: skip
            steps = np.arange(1, 21)
            logs[cid] = (
                pd.DataFrame(
                    {"step": steps, "rewards/margins": np.log1p(steps) * acc + 0.01 * rng.standard_normal(20)}
                ),
                pd.DataFrame({"step": [5, 10, 15, 20], "eval_accuracy": [acc] * 4, "eval_rewards/margins": [0.1] * 4}),
            )
    cells = pd.DataFrame(rows)
    pairs = pd.concat(frames, ignore_index=True)
    return cells, pairs, logs


@pytest.fixture(scope="module", params=[4, 14, 100])
def rendered(request, tmp_path_factory):
    cells, pairs, logs = matrix(request.param)
    assert len(cells) == request.param
    dec = decide(cells, pairs, logs=logs)
    quart = length_quartiles(pairs)
    colours = plots.configuration_colours(plots._order(cells, dec))
    figs = {
        "accuracy": plots.fig_accuracy(cells, dec, colours),
        "heatmap": plots.fig_heatmap(cells),
        "margins": plots.fig_margins(cells, logs, colours),
        "length": plots.fig_length(cells, quart),
    }
    for f in figs.values():
        f.canvas.draw()
    written = plots.write_plots(Store(tmp_path_factory.mktemp("png")), cells, dec, logs, quart)
    yield request.param, cells, figs, written
    matplotlib.pyplot.close("all")


def test_figures_stay_a_readable_size(rendered):
    n, cells, figs, written = rendered
    assert set(written) == {"accuracy.png", "heatmap.png", "margins.png", "length.png"}
    n_configs = cells["config"].nunique()
    for name, fig in figs.items():
        w, h = fig.get_size_inches()
        assert 4 <= w <= 24 and 2 <= h <= 24, (n, name, w, h)
        # A row per configuration: at least ~0.2 inch each, so labels never overlap (up to the cap).
        if name in ("accuracy", "length"):
            assert h >= min(18, 0.2 * n_configs), (n, name, h)


def test_legend_outside_the_axes_or_none(rendered):
    n, cells, figs, _ = rendered
    fig = figs["margins"]
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    if cells["config"].nunique() > plots.LEGEND_MAX:
        assert not legends  # 50 configurations: named on the other plots' axes instead
        return
    assert len(legends) == 1
    box = legends[0].get_window_extent()
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), (n, "the legend covers a panel")


def _colours_by_config(fig) -> dict[str, set]:
    out: dict[str, set] = {}
    for ax in fig.axes:
        for art in [*ax.lines, *ax.collections]:
            gid = art.get_gid()
            if gid is None:
                continue
            rgba = art.get_color() if hasattr(art, "get_linestyle") and art in ax.lines else art.get_facecolor()[0]
            out.setdefault(gid, set()).add(tuple(np.round(matplotlib.colors.to_rgb(rgba), 3)))
    return out


def test_one_distinct_colour_per_configuration(rendered):
    n, cells, figs, _ = rendered
    configs = set(cells["config"])
    for name in ("margins", "accuracy"):
        by = _colours_by_config(figs[name])
        assert set(by) == configs, (n, name)
        assert all(len(c) == 1 for c in by.values()), (n, name, "a configuration drawn in two colours")
        colours = [next(iter(c)) for c in by.values()]
        assert len(set(colours)) == len(configs), (n, name, "two configurations share a colour")
    # The same configuration has the same colour in both plots.
    assert _colours_by_config(figs["margins"]) == _colours_by_config(figs["accuracy"])


def test_heatmap_has_a_cell_per_rank_and_recipe(rendered):
    n, cells, figs, _ = rendered
    ax = figs["heatmap"].axes[0]
    assert len(ax.get_xticks()) == cells["lora_rank"].nunique()
    assert len(ax.get_yticks()) == len({config_label({**r, "lora_rank": 0}) for r in cells.to_dict("records")})
