"""verdict/winrate.py on made-up tables: the length-controlled win rate removes a pure length preference and
keeps a real one, the flags (collapsed, verbose) fire on the cases they name, and win-rate outcomes go
through the recipe test with a null false-switch rate at α (simulated)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ablate.verdict import stats
from ablate.verdict.winrate import generation_table, length_controlled


def test_length_controlled_win_rate():
    rng = np.random.default_rng(0)
    dlen = rng.normal(0, 50, 4000)
    longer_wins = (dlen > 0).astype(float)  # a judge that only likes length: 50% once lengths are equal
    assert longer_wins.mean() == pytest.approx(0.5, abs=0.03)
    assert length_controlled(longer_wins, dlen + 40, 50) < 0.6 < (dlen + 40 > 0).mean()
    real = (rng.random(4000) < 0.7).astype(float)  # a real 70% preference, unrelated to length
    assert length_controlled(real, dlen, 50) == pytest.approx(real.mean(), abs=0.02)
    assert length_controlled(np.full(10, 0.5), np.zeros(10), 0.0) == pytest.approx(0.5)


def _tables(texts: dict[str, list[tuple[int, int, float]]], judged: dict[str, float]):
    """cells of configs A (baseline), B, C; gens rows (step, tokens, repetition) per config; judgements with
    the given mean outcome per challenger config (alternating 1/0 around it, 40 prompts, one seed each)."""
    cells = pd.DataFrame({"cell_id": ["a", "b", "c"], "config_id": ["A", "B", "C"], "config": ["A", "B", "C"],
                          "status": "done", "is_baseline": [True, False, False], "seed": 0})  # fmt: skip
    gens = []
    for cid, rows in texts.items():
        for step, tokens, rep in rows:
            for i in range(40):
                gens.append({"cell_id": cid.lower(), "config_id": cid, "prompt_index": i, "step": step,
                             "final": step == 10, "tokens": tokens, "chars": 4 * tokens, "repetition": rep,
                             "finish": "length" if tokens >= 64 else "eos"})  # fmt: skip
    j = []
    for cid, p in judged.items():
        wins = round(40 * p)
        for i in range(40):
            j.append({"cell_id": cid.lower(), "baseline_cell_id": "a", "prompt_index": i, "outcome": float(i < wins),
                      "challenger_chars": 4 * 20, "baseline_chars": 80})  # fmt: skip
    return cells, pd.DataFrame(gens), pd.DataFrame(j)


def test_flags_name_what_they_say():
    cells, gens, j = _tables(
        {"A": [(5, 20, 0.0), (10, 20, 0.0)], "B": [(5, 40, 0.1), (10, 64, 0.2)], "C": [(5, 30, 0.1), (10, 8, 0.7)]},
        {"B": 0.5, "C": 0.9},
    )
    t = generation_table(cells, gens, j, 64).set_index("config_id")
    assert t.loc["B", "verbose"] and not t.loc["B", "collapsed"]  # 3.2× the baseline's length, no better
    assert t.loc["C", "collapsed"] and not t.loc["C", "verbose"]  # repeats itself, and shrank 30 → 8 tokens
    assert not t.loc["A", "verbose"] and not t.loc["A", "collapsed"]
    assert t.loc["B", "at_cap"] == 1.0 and t.loc["A", "at_cap"] == 0.0
    assert t.loc["C", "win_rate"] == pytest.approx(0.9) and t.loc["C", "win_low"] > 0.5 > t.loc["B", "win_low"]


def test_win_rate_outcomes_keep_the_recipe_test_at_alpha():
    """Null: challengers truly tie the baseline (P(win) = P(loss)), with seed-to-seed shifts in win rate
    and prompt difficulty; per-prompt outcomes averaged over 3 baseline seeds, as win_pairs builds them."""
    rng = np.random.default_rng(1)
    reps, n, seeds = 2000, 64, 3
    out = {"base": np.full((reps, n, seeds), 0.5)}
    for c in ("c1", "c2"):
        shift = rng.normal(0, 0.03, (reps, 1, seeds, 1)) + rng.normal(0, 0.03, (reps, 1, 1, seeds))
        prompt = rng.normal(0, 0.1, (reps, n, 1, 1))
        p_win = np.clip(0.35 + shift + prompt, 0, 0.7)  # ties 30%; P(win) = P(loss) on average
        u = rng.random((reps, n, seeds, seeds))
        w = np.where(u < p_win, 1.0, np.where(u < p_win + 0.3, 0.5, 0.0))
        out[c] = w.mean(-1)  # over the baseline's seeds
    r = stats.decide_recipes(out, "base", alpha=0.05, baseline_in_tau=False)
    false_switch = float((r["best"] >= 0).mean())
    assert false_switch <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / reps), false_switch
