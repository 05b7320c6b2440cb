"""Decision rules and diagnostics, checked against independent computations and simulation.

- sign_test_p / holm against hand computations (math.comb, a hand-worked Holm table) and scipy.
- Simulation of held-out pairs for two cells whose outcomes are correlated through a per-pair latent
  difficulty: false-switch rate and power of paired_exact, paired_bootstrap and the seed rule at 100
  and 500 pairs, with the exact (closed-form) rates of paired_exact and the seed rule as reference.
- bootstrap_diff coverage of a known difference.
- decide() end to end on constructed cells/pairs tables.
- diagnostics.overoptimization / margin_retention / length_quartiles / length_bias.

`pytest -s tests/test_decide.py` prints the simulated rates.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom, binomtest, multivariate_normal, norm

from ablate.matrix.cells import cell_label, config_label
from ablate.verdict.decide import decide
from ablate.verdict.diagnostics import (
    LENGTH_GAP_FLAG,
    length_bias,
    length_quartiles,
    margin_retention,
    overoptimization,
)
from ablate.verdict.stats import bootstrap_diff, holm, sign_test_p

ALPHA = 0.05

# --------------------------------------------------------------------------------------------------
# Table builders
# --------------------------------------------------------------------------------------------------

NAN = float("nan")
CONFIGS = {
    "dpo r16": dict(objective="dpo", lora_rank=16, beta=0.1, gamma=NAN, **{"lambda": NAN}),
    "dpo r8": dict(objective="dpo", lora_rank=8, beta=0.1, gamma=NAN, **{"lambda": NAN}),
    "simpo r8": dict(objective="simpo", lora_rank=8, beta=2.0, gamma=0.5, **{"lambda": NAN}),
    "simpo r16": dict(objective="simpo", lora_rank=16, beta=2.0, gamma=0.5, **{"lambda": NAN}),
    "orpo r16": dict(objective="orpo", lora_rank=16, beta=NAN, gamma=NAN, **{"lambda": 0.1}),
}


def cfg(name: str) -> str:
    """The config label decide() reports for a short name such as "simpo r8"."""
    return config_label({**CONFIGS[name], "seed": 0, "lr": 1e-4, "epochs": 1})


def make_tables(outcomes: dict, baseline: str = "dpo r16", status: dict | None = None):
    """cells and pairs tables from {short name: outcome array [n_pairs] or [n_pairs, n_seeds]}; a key
    may also be `(short name, lr)` (default lr 1e-4). Seeds are 0..n_seeds-1. `status` maps short
    name → status for all its seeds (default "done")."""
    cell_rows, pair_frames = [], []
    lrs = {key[1] if isinstance(key, tuple) else 1e-4 for key in outcomes}
    extra = ("lr",) if len(lrs) > 1 else ()  # as the planner does: lr is named when the matrix varies it
    for key, out in outcomes.items():
        name, this_lr = key if isinstance(key, tuple) else (key, 1e-4)
        out = np.asarray(out, dtype=bool)
        if out.ndim == 1:
            out = out[:, None]
        for j in range(out.shape[1]):
            seed = j
            params = {**CONFIGS[name], "seed": seed, "lr": this_lr, "epochs": 1}
            cid = f"{name.replace(' ', '_')}_lr{this_lr:g}_s{seed}"
            cell_rows.append(
                {
                    "cell_id": cid,
                    "label": cell_label(params, extra),
                    "config": config_label(params, extra),
                    "config_id": config_label(params, extra),
                    "status": (status or {}).get(name, "done"),
                    "is_baseline": name == baseline,
                    **params,
                    "trainable_params": CONFIGS[name]["lora_rank"] * 10_000,
                }
            )
            pair_frames.append(pd.DataFrame({"cell_id": cid, "pair": np.arange(len(out)), "correct": out[:, j]}))
    cells = pd.DataFrame(cell_rows)
    cells["is_baseline"] = cells["is_baseline"].astype(bool)
    return cells, pd.concat(pair_frames, ignore_index=True)


def flip(base: np.ndarray, wins: int, losses: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of `base` with `wins` wrong pairs made right and `losses` right pairs made wrong."""
    out = base.copy()
    wrong, right = np.flatnonzero(~base), np.flatnonzero(base)
    out[rng.choice(wrong, wins, replace=False)] = True
    out[rng.choice(right, losses, replace=False)] = False
    return out


def base_outcomes(n: int, acc: float = 0.7, seed: int = 0) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[np.random.default_rng(seed).permutation(n)[: round(acc * n)]] = True
    return out


# --------------------------------------------------------------------------------------------------
# 1. sign_test_p
# --------------------------------------------------------------------------------------------------


def exact_mcnemar_by_hand(b: int, c: int) -> float:
    """Two-sided exact McNemar: 2 · P(Bin(b+c, 1/2) ≤ min(b, c)), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_sign_test_p_hand_computed_mcnemar():
    # b=1, c=9: 2·(C(10,0) + C(10,1)) / 2^10 = 22/1024
    assert sign_test_p(1, 9) == pytest.approx(22 / 1024, rel=1e-12)
    assert sign_test_p(9, 1) == pytest.approx(22 / 1024, rel=1e-12)
    assert sign_test_p(0, 5) == pytest.approx(2 / 32, rel=1e-12)
    assert sign_test_p(0, 6) == pytest.approx(2 / 64, rel=1e-12)
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(7, 7) == 1.0
    assert sign_test_p(3, 4) == 1.0  # odd n, centre: capped at 1


@pytest.mark.parametrize("b,c", [(0, 0), (0, 1), (1, 9), (2, 8), (5, 5), (10, 25), (30, 12), (47, 71), (0, 40)])
def test_sign_test_p_matches_scipy_binomtest_and_hand(b, c):
    p = sign_test_p(b, c)
    expected_scipy = 1.0 if b + c == 0 else binomtest(c, b + c, 0.5, alternative="two-sided").pvalue
    assert p == pytest.approx(expected_scipy, rel=1e-9)
    assert p == pytest.approx(exact_mcnemar_by_hand(b, c), rel=1e-9)
    assert sign_test_p(c, b) == pytest.approx(p, rel=1e-12)  # symmetric in wins/losses
    assert 0.0 < p <= 1.0


# --------------------------------------------------------------------------------------------------
# 2. holm
# --------------------------------------------------------------------------------------------------


def test_holm_hand_computed_with_monotonicity():
    # sorted: 0.005·5 = 0.025; 0.01·4 = 0.04; 0.03·3 = 0.09; 0.04·2 = 0.08 → raised to 0.09; 0.5·1 = 0.5
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.5], rel=1e-12)


def test_holm_caps_at_one_and_keeps_order():
    # sorted: 0.02·3 = 0.06; 0.3·2 = 0.6; 0.4·1 = 0.4 → raised to 0.6
    assert holm([0.3, 0.4, 0.02]) == pytest.approx([0.6, 0.6, 0.06], rel=1e-12)
    # 0.6·2 = 1.2 → capped at 1; 0.7 → raised to 1
    assert holm([0.7, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.02, 0.02]) == pytest.approx([0.04, 0.04])
    assert holm([0.03]) == pytest.approx([0.03])
    assert len(holm([])) == 0


def test_holm_never_below_raw_and_monotone_in_raw():
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = list(rng.uniform(0, 0.2, size=rng.integers(1, 8)))
        adj = holm(p)
        assert all(a >= r - 1e-15 and a <= 1.0 for a, r in zip(adj, p))
        order = np.argsort(p)
        assert np.all(np.diff(np.asarray(adj)[order]) >= -1e-15)


# --------------------------------------------------------------------------------------------------
# 3. Simulation: false-switch rate and power
# --------------------------------------------------------------------------------------------------
# Per-pair latent difficulty u ~ N(0, 1); a cell with accuracy a is right on pair i iff
# sqrt(ρ)·u_i + sqrt(1 − ρ)·e ≤ Φ⁻¹(a), e ~ N(0, 1) independent per cell. Marginal accuracy is
# exactly a; the two cells are positively correlated (through u) and, when equal, exchangeable.

RHO = 0.5
N_SIM = 2000  # paired_exact and seed rule: SE of a 5% rate ≈ 0.0049
N_SIM_BOOT = 300  # paired_bootstrap (a bootstrap per replication); SE of a 5% rate ≈ 0.0126
N_BOOT_SIM = 400


def simulate(rng, n_sim: int, n: int, acc_base: float, acc_chal: float, rho: float = RHO):
    """[n_sim, n] boolean outcome matrices for baseline and challenger."""
    u = rng.standard_normal((n_sim, n))
    lat_b = np.sqrt(rho) * u + np.sqrt(1 - rho) * rng.standard_normal((n_sim, n))
    lat_c = np.sqrt(rho) * u + np.sqrt(1 - rho) * rng.standard_normal((n_sim, n))
    return lat_b <= norm.ppf(acc_base), lat_c <= norm.ppf(acc_chal)


def discordant_probs(acc_base: float, acc_chal: float, rho: float = RHO) -> tuple[float, float]:
    """(P(challenger right, baseline wrong), P(baseline right, challenger wrong)) under the model."""
    both = multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf([norm.ppf(acc_base), norm.ppf(acc_chal)])
    return acc_chal - both, acc_base - both


def exact_rates(n: int, p_win: float, p_loss: float, alpha: float = ALPHA) -> tuple[float, float]:
    """Exact P(switch) of (one-sided exact sign test at α, seed rule wins > losses).
    D ~ Bin(n, p_win + p_loss) discordant pairs; wins | D ~ Bin(D, p_win / (p_win + p_loss)); the
    one-sided exact p-value is P(Bin(D, 1/2) ≥ w)."""
    p_d = p_win + p_loss
    exact = seed = 0.0
    for d in range(n + 1):
        w = np.arange(d + 1)
        pw = binom.pmf(w, d, p_win / p_d)
        ahead = w > d - w
        pval = binom.sf(w - 1, d, 0.5)  # one-sided: only a better challenger can win
        pd_ = binom.pmf(d, n, p_d)
        exact += pd_ * pw[ahead & (pval < alpha)].sum()
        seed += pd_ * pw[ahead].sum()
    return float(exact), float(seed)


def normal_mcnemar_power(n: int, p_win: float, p_loss: float, alpha: float = ALPHA) -> float:
    """Normal-approximation McNemar power (one direction: the challenger is the better one)."""
    p_d, delta = p_win + p_loss, p_win - p_loss
    return float(norm.cdf((np.sqrt(n) * delta - norm.ppf(1 - alpha) * np.sqrt(p_d)) / np.sqrt(p_d - delta**2)))


@functools.cache
def _p(w: int, lo: int) -> float:
    return float(sign_test_p(w, lo, one_sided=True))


def _tol(rate: float, n_sim: int, k: float = 3.0) -> float:
    return k * math.sqrt(max(rate, 0.01) * (1 - max(rate, 0.01)) / n_sim)


@pytest.mark.parametrize("n", [100, 500])
def test_simulated_false_switch_rate_under_null(n):
    rng = np.random.default_rng(1000 + n)
    b, c = simulate(rng, N_SIM, n, 0.70, 0.70)
    assert abs(b.mean() - 0.70) < 0.01 and abs(c.mean() - 0.70) < 0.01
    wins, losses = (c & ~b).sum(axis=1), (b & ~c).sum(axis=1)
    # positively correlated but not identical: fewer discordant pairs than independent errors (0.42)
    assert 0.2 < (wins + losses).mean() / n < 0.38

    exact_switch = np.array([_p(int(w), int(lo)) < ALPHA and w > lo for w, lo in zip(wins, losses)])
    seed_switch = wins > losses  # the seed rule: ≥ 1 more pair right; margins equal (no logs)
    fs_exact, fs_seed = exact_switch.mean(), seed_switch.mean()
    ref_exact, ref_seed = exact_rates(n, *discordant_probs(0.70, 0.70))
    print(
        f"\n[null, n={n}, {N_SIM} sims] false-switch: paired_exact {fs_exact:.4f} (exact {ref_exact:.4f}), "
        f"seed_rule {fs_seed:.4f} (exact {ref_seed:.4f})"
    )

    # (a) exact test: at most α (exact tests are conservative), plus 3 SE of simulation noise
    assert fs_exact <= ALPHA + _tol(ALPHA, N_SIM)
    assert abs(fs_exact - ref_exact) <= _tol(ref_exact, N_SIM, 4)
    # (b) seed rule: ≈ 45% (P(wins > losses) = (1 − P(tie)) / 2)
    assert 0.38 <= fs_seed <= 0.52
    assert abs(fs_seed - ref_seed) <= _tol(ref_seed, N_SIM, 4)
    assert 0.38 <= ref_seed <= 0.52


@pytest.mark.parametrize("n", [100, 500])
def test_simulated_power_against_plus_five_points(n):
    rng = np.random.default_rng(2000 + n)
    b, c = simulate(rng, N_SIM, n, 0.70, 0.75)
    wins, losses = (c & ~b).sum(axis=1), (b & ~c).sum(axis=1)
    pw_exact = np.mean([_p(int(w), int(lo)) < ALPHA and w > lo for w, lo in zip(wins, losses)])
    pw_seed = np.mean(wins > losses)
    p_win, p_loss = discordant_probs(0.70, 0.75)
    ref_exact, ref_seed = exact_rates(n, p_win, p_loss)
    approx = normal_mcnemar_power(n, p_win, p_loss)
    print(
        f"\n[+5 points, n={n}, {N_SIM} sims] power: paired_exact {pw_exact:.4f} (exact {ref_exact:.4f}, "
        f"normal approx {approx:.4f}), seed_rule {pw_seed:.4f} (exact {ref_seed:.4f})"
    )
    assert abs(pw_exact - ref_exact) <= _tol(ref_exact, N_SIM, 4)
    assert abs(pw_seed - ref_seed) <= _tol(ref_seed, N_SIM, 4)
    assert abs(ref_exact - approx) < 0.06  # the exact test is slightly conservative vs the normal approx
    if n == 500:
        assert 0.45 <= pw_exact <= 0.80
        assert pw_seed > 0.95
    else:
        assert 0.05 <= pw_exact <= 0.20  # 100 pairs cannot see 5 points
        assert 0.70 <= pw_seed <= 0.90


@pytest.mark.parametrize("n", [100, 500])
def test_simulated_bootstrap_rule_false_switch_and_power(n):
    """paired_bootstrap with one challenger: switch iff the (1 − α) percentile interval is above 0."""
    rng = np.random.default_rng(3000 + n)
    rates = {}
    for label, acc_chal in (("null", 0.70), ("power", 0.75)):
        b, c = simulate(rng, N_SIM_BOOT, n, 0.70, acc_chal)
        sw = [
            bootstrap_diff(
                b[k][:, None].astype(float), c[k][:, None].astype(float), 1 - ALPHA, n_boot=N_BOOT_SIM, seed=k
            )[0]
            > 0
            for k in range(N_SIM_BOOT)
        ]
        rates[label] = float(np.mean(sw))
    print(
        f"\n[paired_bootstrap, n={n}, {N_SIM_BOOT} sims, n_boot={N_BOOT_SIM}] "
        f"false-switch {rates['null']:.4f}, power(+5) {rates['power']:.4f}"
    )
    assert rates["null"] <= ALPHA + _tol(ALPHA, N_SIM_BOOT)
    ref_exact, _ = exact_rates(n, *discordant_probs(0.70, 0.75))
    # bootstrap ≈ the exact test's power (a little higher: not conservative), within simulation noise
    assert abs(rates["power"] - ref_exact) <= _tol(ref_exact, N_SIM_BOOT, 3) + 0.05


def test_decide_agrees_with_low_level_rules_on_simulated_tables():
    """decide() applies the same switch rule as the simulation above (so the simulated rates are its rates)."""
    rng = np.random.default_rng(7)
    b, c = simulate(rng, 12, 100, 0.70, 0.72)
    for k in range(12):
        cells, pairs = make_tables({"dpo r16": b[k], "simpo r8": c[k]})
        w, lo = int((c[k] & ~b[k]).sum()), int((b[k] & ~c[k]).sum())
        exact = decide(cells, pairs, rule="adapter_exact")
        assert exact.switch == (sign_test_p(w, lo, one_sided=True) < ALPHA and w > lo)
        assert decide(cells, pairs, rule="paired_exact").switch == exact.switch  # the old name, same rule
        row = exact.comparisons.set_index("config").loc[cfg("simpo r8")]
        assert (row["wins"], row["losses"]) == (w, lo)
        assert row["p_value"] == pytest.approx(sign_test_p(w, lo, one_sided=True))
        seed = decide(cells, pairs, rule="seed_rule")
        assert seed.switch == (w > lo)


def test_seed_rule_states_its_simulated_rate_for_this_matrix():
    """One challenger: ≈ 45% (the closed form below); three challengers: ≈ 65–75% (any of three wins)."""
    for n in (100, 500):
        _, seed_rate = exact_rates(n, *discordant_probs(0.70, 0.70))
        assert abs(seed_rate - 0.45) < 0.05
    base = base_outcomes(300)
    rng = np.random.default_rng(5)
    one = decide(*make_tables({"dpo r16": base, "simpo r8": flip(base, 20, 20, rng)}), rule="seed_rule")
    three = decide(
        *make_tables({k: flip(base, 20, 20, rng) if k != "dpo r16" else base for k in CONFIGS if k != "orpo r16"}),
        rule="seed_rule",
    )
    rate = lambda d: float(re.search(r"switches (\d+)% of the time", " ".join(d.notes)).group(1)) / 100  # noqa: E731
    assert 0.35 <= rate(one) <= 0.55 and 0.60 <= rate(three) <= 0.80


# --------------------------------------------------------------------------------------------------
# 4. bootstrap_diff
# --------------------------------------------------------------------------------------------------


def test_bootstrap_diff_coverage_of_known_difference():
    rng = np.random.default_rng(11)
    reps, n, true = 300, 300, 0.05
    covered, widths = 0, []
    for k in range(reps):
        base = (rng.random((n, 1)) < 0.70).astype(float)
        chal = (rng.random((n, 1)) < 0.75).astype(float)
        lo, hi, _ = bootstrap_diff(base, chal, 0.95, n_boot=N_BOOT_SIM, seed=k)
        assert lo <= chal.mean() - base.mean() <= hi
        covered += lo <= true <= hi
        widths.append(hi - lo)
    cov = covered / reps
    print(
        f"\n[bootstrap_diff] coverage of the true +0.05 at 95%: {cov:.3f} over {reps} replications "
        f"(n={n}, n_boot={N_BOOT_SIM}); mean width {np.mean(widths):.3f}"
    )
    assert abs(cov - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / reps) + 0.01
    # width ≈ 2·1.96·sqrt(var(diff)) for independent cells: var = (0.7·0.3 + 0.75·0.25)/n
    assert np.mean(widths) == pytest.approx(2 * 1.96 * math.sqrt((0.21 + 0.1875) / n), rel=0.1)


def test_bootstrap_diff_identical_seed_columns_match_single_seed():
    rng = np.random.default_rng(3)
    base = (rng.random((80, 1)) < 0.7).astype(float)
    chal = (rng.random((80, 1)) < 0.8).astype(float)
    one = bootstrap_diff(base, chal, 0.9, n_boot=300, seed=5)
    three = bootstrap_diff(np.repeat(base, 3, axis=1), np.repeat(chal, 3, axis=1), 0.9, n_boot=300, seed=5)
    assert three == pytest.approx(one)


def test_bootstrap_diff_p_value_and_degenerate_cases():
    same = (np.random.default_rng(0).random((50, 1)) < 0.7).astype(float)
    lo, hi, p = bootstrap_diff(same, same, 0.95, n_boot=200)
    assert (lo, hi, p) == (0.0, 0.0, 1.0)
    base = np.zeros((100, 1))
    chal = np.zeros((100, 1))
    chal[:30] = 1.0
    lo, hi, p = bootstrap_diff(base, chal, 0.95, n_boot=300)
    assert 0 < lo < 0.3 < hi and p == 0.0


# --------------------------------------------------------------------------------------------------
# 5. decide() end to end
# --------------------------------------------------------------------------------------------------


def test_config_label_is_cell_label_without_seed():
    p = {**CONFIGS["simpo r8"], "seed": 3, "lr": 1e-4, "epochs": 1}
    assert config_label(p) == "simpo r8 β2 γ0.5"
    assert cell_label(p) == config_label(p) + " s3"
    assert config_label({**CONFIGS["dpo r16"], "seed": 11}) == "dpo r16 β0.1"
    assert config_label({**CONFIGS["orpo r16"], "seed": 0}) == "orpo r16 λ0.1"


def test_decide_clear_winner_switches():
    base = base_outcomes(200)
    chal = flip(base, 30, 5, np.random.default_rng(1))
    cells, pairs = make_tables({"dpo r16": base, "simpo r8": chal})
    dec = decide(cells, pairs)
    assert dec.switch and dec.winner == cfg("simpo r8") and dec.baseline == cfg("dpo r16")
    assert dec.rule == "recipe" and dec.heldout_pairs == 200 and dec.seeds == 1
    assert dec.unit == "adapter"  # one seed: these trained adapters, not recipes
    assert "25 more of 200 held-out pairs" in dec.reason and "30 won, 5 lost" in dec.reason
    assert "these trained adapters" in dec.reason
    assert any("would overturn it" in n for n in dec.notes)
    row = dec.comparisons.set_index("config").loc[cfg("simpo r8")]
    assert (row["wins"], row["losses"], row["diff_pairs"]) == (30, 5, 25)
    assert row["p_value"] == pytest.approx(exact_mcnemar_by_hand(5, 30) / 2)  # one-sided
    assert row["accuracy"] == pytest.approx(chal.mean())
    assert bool(row["significant"])
    b = dec.comparisons.set_index("config").loc[cfg("dpo r16")]
    assert bool(b["is_baseline"]) and not bool(b["significant"]) and np.isnan(b["p_value"]) and np.isnan(b["mde"])


def test_decide_equal_cells_keep_baseline():
    base = base_outcomes(200)
    chal = flip(base, 10, 10, np.random.default_rng(2))
    cells, pairs = make_tables({"dpo r16": base, "simpo r8": chal})
    dec = decide(cells, pairs)
    assert not dec.switch and dec.winner == cfg("dpo r16") == dec.baseline
    assert dec.reason.startswith(f"Keep {cfg('dpo r16')}")
    assert "no challenger gets more held-out pairs right" in dec.reason


def test_decide_worse_challenger_is_not_a_winner():
    base = base_outcomes(200)
    chal = flip(base, 2, 30, np.random.default_rng(2))
    cells, pairs = make_tables({"dpo r16": base, "simpo r8": chal})
    dec = decide(cells, pairs)
    row = dec.comparisons.set_index("config").loc[cfg("simpo r8")]
    assert row["p_adjusted"] > 0.99  # one-sided: a clearly worse challenger is as far from winning as it gets
    assert not dec.switch and dec.winner == dec.baseline


def _parsimony_tables():
    rng = np.random.default_rng(3)
    base = base_outcomes(200)
    r16 = flip(base, 30, 2, rng)  # +28
    r8 = r16.copy()
    r8[np.flatnonzero(r16 & ~base)[0]] = False  # one pair fewer: +27
    return make_tables({"dpo r16": base, "simpo r16": r16, "simpo r8": r8})


def test_decide_parsimony_prefers_lower_rank_among_indistinguishable():
    cells, pairs = _parsimony_tables()
    dec = decide(cells, pairs)
    t = dec.comparisons.set_index("config")
    assert t.loc[cfg("simpo r16"), "diff_pairs"] == 28 and t.loc[cfg("simpo r8"), "diff_pairs"] == 27
    assert t.loc[cfg("simpo r16"), "significant"] and t.loc[cfg("simpo r8"), "significant"]
    # Holm across the two challengers
    ps = [t.loc[cfg(k), "p_value"] for k in ("simpo r16", "simpo r8")]
    assert [t.loc[cfg(k), "p_adjusted"] for k in ("simpo r16", "simpo r8")] == pytest.approx(holm(ps))
    assert dec.switch and dec.winner == cfg("simpo r8")
    assert any("parsimony" in n and "2 challengers" in n for n in dec.notes)
    assert decide(cells, pairs, tolerance_pairs=1).winner == cfg("simpo r8")


def test_decide_tolerance_zero_picks_strictly_best():
    cells, pairs = _parsimony_tables()
    dec = decide(cells, pairs, tolerance_pairs=0)
    assert dec.switch and dec.winner == cfg("simpo r16")
    assert not any("parsimony" in n for n in dec.notes)


def test_decide_parsimony_prefers_baseline_objective():
    rng = np.random.default_rng(4)
    base = base_outcomes(200)
    best = flip(base, 30, 2, rng)  # simpo r8: +28
    dpo8 = best.copy()
    dpo8[np.flatnonzero(best & ~base)[:2]] = False  # dpo r8: +26, indistinguishable
    cells, pairs = make_tables({"dpo r16": base, "simpo r8": best, "dpo r8": dpo8})
    assert decide(cells, pairs).winner == cfg("dpo r8")
    assert decide(cells, pairs, tolerance_pairs=0).winner == cfg("simpo r8")


def test_decide_paired_bootstrap_interval_and_switch():
    base = base_outcomes(200)
    chal = flip(base, 30, 5, np.random.default_rng(5))
    eq = flip(base, 8, 8, np.random.default_rng(6))
    cells, pairs = make_tables({"dpo r16": base, "simpo r8": chal, "simpo r16": eq})
    dec = decide(cells, pairs, rule="paired_bootstrap")
    t = dec.comparisons.set_index("config")
    assert {"ci_low", "ci_high"} <= set(t.columns)
    assert np.isnan(t.loc[cfg("dpo r16"), "ci_low"]) and np.isnan(t.loc[cfg("dpo r16"), "ci_high"])
    lo, hi = t.loc[cfg("simpo r8"), "ci_low"], t.loc[cfg("simpo r8"), "ci_high"]
    assert 0 < lo < 25 / 200 < hi
    assert t.loc[cfg("simpo r16"), "ci_low"] < 0 < t.loc[cfg("simpo r16"), "ci_high"]
    assert dec.switch and dec.winner == cfg("simpo r8")
    assert "interval" in dec.reason and "25 more of 200" in dec.reason
    # Bonferroni across 2 challengers: wider than the same bootstrap at level 1 − α
    narrow = bootstrap_diff(
        base[:, None].astype(float),
        chal[:, None].astype(float),
        1 - ALPHA,
        seed=int(np.flatnonzero(t.index == cfg("simpo r8"))[0]),
    )
    assert hi - lo > narrow[1] - narrow[0]


def test_decide_seed_rule_plus_one_pair_switches_and_warns():
    base = base_outcomes(100)
    chal = flip(base, 6, 5, np.random.default_rng(7))  # +1 pair: noise
    cells, pairs = make_tables({"dpo r16": base, "simpo r8": chal})
    dec = decide(cells, pairs, rule="seed_rule")
    assert dec.switch and dec.winner == cfg("simpo r8")
    assert "the seed rule" in dec.reason
    assert any("switches" in n and "of the time between truly equal configurations" in n for n in dec.notes)
    # the same tables under the default rule: keep the baseline
    assert not decide(cells, pairs).switch
    # equal pairs right → the seed rule keeps the baseline too
    cells, pairs = make_tables({"dpo r16": base, "simpo r8": flip(base, 5, 5, np.random.default_rng(7))})
    assert not decide(cells, pairs, rule="seed_rule").switch


def _logs(train_final: float, eval_final: float):
    train = pd.DataFrame({"step": np.arange(1, 11), "rewards/margins": np.linspace(0.1, train_final, 10)})
    ev = pd.DataFrame(
        {"step": [5, 10], "eval_rewards/margins": [eval_final / 2, eval_final], "eval_accuracy": [0.7, 0.7]}
    )
    return train, ev


def test_decide_seed_rule_needs_cleaner_margins():
    base = base_outcomes(100)
    chal = flip(base, 8, 5, np.random.default_rng(8))  # +3
    cells, pairs = make_tables({"dpo r16": base, "simpo r8": chal})
    bid, cid = cells["cell_id"].tolist()
    worse = {bid: _logs(2.0, 1.0), cid: _logs(2.0, 0.2)}  # retention 0.5 vs 0.1
    better = {bid: _logs(2.0, 1.0), cid: _logs(2.0, 1.6)}  # 0.5 vs 0.8
    assert not decide(cells, pairs, rule="seed_rule", logs=worse).switch
    assert decide(cells, pairs, rule="seed_rule", logs=better).switch
    t = decide(cells, pairs, rule="seed_rule", logs=better).comparisons.set_index("config")
    assert t.loc[cfg("simpo r8"), "retention"] == pytest.approx(0.8)
    assert t.loc[cfg("dpo r16"), "retention"] == pytest.approx(0.5)


def test_decide_multiple_seeds_pooled():
    rng = np.random.default_rng(9)
    n = 150
    base = np.stack([base_outcomes(n, 0.70, seed=s) for s in range(3)], axis=1)
    chal = np.stack([rng.random(n) < a for a in (0.80, 0.85, 0.90)], axis=1)
    cells, pairs = make_tables({"dpo r16": base, "simpo r8": chal})
    assert len(cells) == 6
    dec = decide(cells, pairs)
    assert dec.seeds == 3 and dec.heldout_pairs == n
    t = dec.comparisons.set_index("config")
    assert (t["seeds"] == 3).all() and len(t) == 2
    assert t.loc[cfg("simpo r8"), "accuracy_seed_sd"] == pytest.approx(chal.mean(axis=0).std(ddof=1))
    assert t.loc[cfg("simpo r8"), "accuracy_seed_sd"] > 0
    assert t.loc[cfg("simpo r8"), "accuracy"] == pytest.approx(chal.mean())
    assert t.loc[cfg("simpo r8"), "correct"] == pytest.approx(chal.sum(axis=0).mean())
    d = chal.mean(axis=1) - base.mean(axis=1)
    assert t.loc[cfg("simpo r8"), "diff_pairs"] == pytest.approx(d.sum())
    assert (t.loc[cfg("simpo r8"), "wins"], t.loc[cfg("simpo r8"), "losses"]) == ((d > 0).sum(), (d < 0).sum())
    assert dec.switch and dec.winner == cfg("simpo r8")
    # identical seeds → no seed spread
    same = np.repeat(base_outcomes(n)[:, None], 3, axis=1)
    t2 = decide(*make_tables({"dpo r16": same, "simpo r8": chal})).comparisons.set_index("config")
    assert t2.loc[cfg("dpo r16"), "accuracy_seed_sd"] == pytest.approx(0.0, abs=1e-12)
    # bootstrap with seeds runs and agrees
    assert decide(cells, pairs, rule="paired_bootstrap").winner == cfg("simpo r8")


def test_decide_baseline_without_finished_cell_raises():
    base = base_outcomes(100)
    cells, pairs = make_tables(
        {"dpo r16": base, "simpo r8": flip(base, 20, 0, np.random.default_rng(0))}, status={"dpo r16": "failed"}
    )
    pairs = pairs[pairs["cell_id"].isin(cells.loc[cells["status"] == "done", "cell_id"])]
    with pytest.raises(ValueError, match="baseline"):
        decide(cells, pairs)


def test_decide_unfinished_challenger_is_ignored():
    base = base_outcomes(100)
    cells, pairs = make_tables(
        {"dpo r16": base, "simpo r8": flip(base, 20, 0, np.random.default_rng(0))}, status={"simpo r8": "failed"}
    )
    dec = decide(cells, pairs)
    assert not dec.switch and "no challenger to compare" in dec.reason
    assert np.isnan(dec.mde)


def test_decide_mismatched_heldout_sizes_raise():
    cells, pairs = make_tables({"dpo r16": base_outcomes(100), "simpo r8": base_outcomes(90)})
    with pytest.raises(ValueError, match="held-out pairs"):
        decide(cells, pairs)


def test_decide_small_gain_below_mde_no_decision_possible():
    base = base_outcomes(100)
    chal = flip(base, 3, 1, np.random.default_rng(10))  # +2 of 100
    cells, pairs = make_tables({"dpo r16": base, "simpo r8": chal})
    dec = decide(cells, pairs)
    assert not dec.switch and dec.winner == dec.baseline
    assert 0.02 < dec.mde
    assert "no decision possible at this size" in dec.reason
    assert "+2 of 100 pairs" in dec.reason, dec.reason


def test_decide_not_significant_but_above_mde_message():
    """A positive gap above the MDE that the rule still rejects (seed rule, margins not cleaner) gets
    the "not significant" message, not "no decision possible"."""
    base = base_outcomes(200)
    chal = flip(base, 30, 2, np.random.default_rng(12))  # +28 of 200
    cells, pairs = make_tables({"dpo r16": base, "simpo r8": chal})
    bid, cid = cells["cell_id"].tolist()
    dec = decide(cells, pairs, rule="seed_rule", logs={bid: _logs(2.0, 1.0), cid: _logs(2.0, 0.2)})
    assert not dec.switch
    assert 28 / 200 > dec.mde
    assert "not significant under seed_rule" in dec.reason and "no decision possible" not in dec.reason


def test_decide_configs_differing_only_in_lr_are_not_pooled():
    """Two configurations that differ only in lr (a matrix axis: `matrix.lr`) are different
    configurations, not two seeds of one: the planner names lr in their labels and gives them different ids."""
    base = base_outcomes(200)
    rng = np.random.default_rng(13)
    good, bad = flip(base, 30, 2, rng), flip(base, 2, 30, rng)
    cells, pairs = make_tables({("dpo r16", 1e-4): base, ("simpo r8", 1e-4): good, ("simpo r8", 5e-5): bad})
    assert cells["cell_id"].nunique() == 3
    dec = decide(cells, pairs)
    t = dec.comparisons
    assert len(t) == 3, f"lr variants were pooled: {t[['config', 'seeds']].to_dict('records')}"
    assert (t["seeds"] == 1).all()
    assert dec.switch


# --------------------------------------------------------------------------------------------------
# 6. diagnostics.overoptimization / margin_retention
# --------------------------------------------------------------------------------------------------

TRAIN_CLIMB = pd.DataFrame({"step": np.arange(1, 101), "rewards/margins": np.linspace(0.02, 2.0, 100)})
EVAL_STEPS = np.arange(10, 101, 10)


def test_overoptimization_flags_train_margin_climbing_with_flat_heldout():
    ev = pd.DataFrame({"step": EVAL_STEPS, "eval_rewards/margins": 0.3, "eval_accuracy": 0.7})
    r = overoptimization(TRAIN_CLIMB, ev)
    assert r["flag"] is True
    # second half: mean of the last 3 logged margins at step 100 (1.98) − at step 50 (0.98)
    assert r["train_delta"] == pytest.approx(1.0)
    assert r["heldout_margin_delta"] == pytest.approx(0.0)
    assert r["heldout_accuracy_delta"] == pytest.approx(0.0)
    # held-out accuracy falling: still overoptimization
    ev2 = ev.assign(**{"eval_accuracy": np.linspace(0.72, 0.66, len(EVAL_STEPS))})
    assert overoptimization(TRAIN_CLIMB, ev2)["flag"] is True


def test_overoptimization_healthy_run_not_flagged():
    ev = pd.DataFrame(
        {
            "step": EVAL_STEPS,
            "eval_rewards/margins": np.linspace(0.1, 1.5, len(EVAL_STEPS)),
            "eval_accuracy": np.linspace(0.6, 0.8, len(EVAL_STEPS)),
        }
    )
    r = overoptimization(TRAIN_CLIMB, ev)
    assert r["flag"] is False
    assert r["heldout_accuracy_delta"] > 0 and r["heldout_margin_delta"] > 0
    # accuracy flat but held-out margin keeps up (≥ Δtrain / 4): not flagged
    ev2 = ev.assign(eval_accuracy=0.7, **{"eval_rewards/margins": np.linspace(0.0, 1.2, len(EVAL_STEPS))})
    assert overoptimization(TRAIN_CLIMB, ev2)["flag"] is False
    # training margin flat: nothing to over-optimize
    flat = TRAIN_CLIMB.assign(**{"rewards/margins": 1.0})
    ev3 = pd.DataFrame({"step": EVAL_STEPS, "eval_rewards/margins": 0.3, "eval_accuracy": 0.7})
    assert overoptimization(flat, ev3)["flag"] is False


def test_overoptimization_too_little_data():
    one = pd.DataFrame({"step": [100], "eval_rewards/margins": [0.3], "eval_accuracy": [0.7]})
    r = overoptimization(TRAIN_CLIMB, one)
    assert r["flag"] is False and np.isnan(r["train_delta"])
    assert overoptimization(TRAIN_CLIMB, one.iloc[:0])["flag"] is False
    ev = pd.DataFrame({"step": EVAL_STEPS, "eval_rewards/margins": 0.3, "eval_accuracy": 0.7})
    assert overoptimization(pd.DataFrame(), ev)["flag"] is False


def test_margin_retention():
    train = pd.DataFrame({"step": [1, 2], "rewards/margins": [0.5, 2.0]})
    ev = pd.DataFrame({"step": [2], "eval_rewards/margins": [0.5], "eval_accuracy": [0.7]})
    assert margin_retention(train, ev) == pytest.approx(0.25)
    assert np.isnan(margin_retention(train.assign(**{"rewards/margins": [0.5, -1.0]}), ev))
    assert np.isnan(margin_retention(train.assign(**{"rewards/margins": [0.5, 0.0]}), ev))
    assert np.isnan(margin_retention(pd.DataFrame(), ev))
    assert np.isnan(margin_retention(train, pd.DataFrame()))


# --------------------------------------------------------------------------------------------------
# 7. diagnostics.length_quartiles / length_bias
# --------------------------------------------------------------------------------------------------


def _length_pairs(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    chosen = rng.integers(50, 400, n)
    rejected = rng.integers(50, 400, n)
    rejected[rejected == chosen] += 1  # no ties: chosen is strictly longer or shorter
    diff = chosen - rejected
    cells = {
        "longer": diff > 0,  # right exactly when the chosen answer is longer
        "shorter": diff < 0,
        "fair": rng.random(n) < 0.8,  # right on 80%, whatever the lengths
    }
    frames = [
        pd.DataFrame(
            {"cell_id": cid, "pair": np.arange(n), "correct": ok, "chosen_len": chosen, "rejected_len": rejected}
        )
        for cid, ok in cells.items()
    ]
    return pd.concat(frames, ignore_index=True), diff


def test_length_quartiles_bins_and_accuracies():
    pairs, diff = _length_pairs()
    assert 0.25 < (diff > 0).mean() < 0.75  # so Q1 is all "chosen shorter", Q4 all "chosen longer"
    q = length_quartiles(pairs)
    assert list(q.columns.astype(str)) == ["Q1", "Q2", "Q3", "Q4"]
    assert set(q.index) == {"longer", "shorter", "fair"}
    # independent quartile assignment: pairs sorted by diff, 50 per bin
    order = np.argsort(diff, kind="stable")
    expected = {f"Q{k + 1}": order[50 * k : 50 * (k + 1)] for k in range(4)}
    fair = pairs[pairs["cell_id"] == "fair"].set_index("pair")["correct"]
    for k, idx in expected.items():
        assert q.loc["fair", k] == pytest.approx(fair.loc[idx].mean())
        assert q.loc["longer", k] == pytest.approx((diff[idx] > 0).mean())
    assert q.loc["longer", "Q1"] == 0.0 and q.loc["longer", "Q4"] == 1.0


def test_length_bias_flags():
    pairs, _ = _length_pairs()
    lb = length_bias(length_quartiles(pairs))
    assert bool(lb.loc["longer", "length_flag"]) and lb.loc["longer", "length_gap"] == pytest.approx(1.0)
    assert bool(lb.loc["shorter", "length_flag"]) and lb.loc["shorter", "length_gap"] == pytest.approx(-1.0)
    assert not bool(lb.loc["fair", "length_flag"])
    assert abs(lb.loc["fair", "length_gap"]) < LENGTH_GAP_FLAG
    empty = length_bias(length_quartiles(pairs.iloc[:0]))
    assert empty.empty and list(empty.columns) == ["length_gap", "length_flag"]
