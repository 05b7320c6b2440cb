"""Recipe-level decisions: does configuration C beat baseline B as a *recipe*, not just as one adapter?

A trained cell is one draw of its configuration. Two noises stand between a held-out table and
"C beats B": the held-out pairs (a finite sample of prompts) and training randomness (the seed). Every
function takes, per configuration, an outcome matrix Y of shape [..., n_pairs, seeds] (0/1, all
configurations scored on the same pairs; leading axes, e.g. simulation replicates, broadcast).

Seed-aware paired test (variance components). D = C's mean per-seed accuracy − B's. Var(D) has
- a pair term V_pair = var_i(d_i)/n, d_i = rowmean(Y_C)_i − rowmean(Y_B)_i. It already holds the
  within-pair Bernoulli noise of every seed, so the seed term must not count it again;
- a seed term τ²·(1/S_C + 1/S_B), τ² = seed-to-seed variance of a cell's true accuracy: per
  configuration, var over seeds of per-seed accuracy (s², ddof 1) minus ŵ = Σ_i var_s(Y[i, :])/n²,
  pooled over every configuration with ≥ 2 seeds (df = Σ(S − 1)), truncated at 0. Pooling ASSUMES EQUAL
  SEED VARIANCE ACROSS RECIPES (alone, 3 seeds give τ² 2 df and the test no power).
T = D/√V against Student t with Satterthwaite df, in which the seed term's error is that of s² (τ̂² is a
difference of two estimates; plugging τ̂² in rejected 7–12% at nominal 5%). Holm across challengers.
The test is ONE-SIDED at α (challenger better) by default: the decision only ever switches to a better
recipe, so P(false switch) ≤ α is exactly what α should buy; a two-sided p with "and D > 0" spends α/2
and left adaptive replication at 0.87 power for +10 points (0.94 one-sided). one_sided=False restores
it. A challenger with D ≤ 0 is never significant, whatever its pair counts (a sign test on seed-averaged
d counts a +1/3 pair like a −1 pair, so a challenger worse on every seed could "win").

With one seed everywhere τ² cannot be estimated: the adapter-level exact sign test (McNemar on the
discordant pairs) answers for these two adapters only, and `overturning_seed_sd` says how large a seed
SD would undo it. Adaptive replication (`replication_needs`, `adaptive_decision`): challengers that look
better at the adapter level (pooled accuracy above the baseline and two-sided exact p < α) and the
baseline go straight to max_seeds; one recipe-level look decides (no repeated peeking); the others keep
one seed, cannot win, and stay in Holm's m (their screen used the same data).
The MDE is for the rule actually applied: Holm's first step α/m, the t reference and the seed design,
never below what the test can detect at this n.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import optimize, stats


def sign_test_p(wins, losses, one_sided=False):
    """Exact sign test (binomial, p = ½), vectorised; one-sided: P(W ≥ wins). 1 with nothing to count."""
    w, lo = np.asarray(wins), np.asarray(losses)
    if one_sided:
        return np.where(w + lo > 0, stats.binom.sf(w - 1, w + lo, 0.5), 1.0)
    return np.minimum(1.0, 2 * stats.binom.cdf(np.minimum(w, lo), w + lo, 0.5))


def holm(p):
    """Holm-adjusted p-values along the last axis (vectorised over leading axes)."""
    p = np.asarray(p, dtype=float)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1)
    adj = np.minimum(1.0, np.maximum.accumulate(np.take_along_axis(p, order, -1) * (m - np.arange(m)), -1))
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, -1)
    return out


def _level(alpha, m, one_sided):
    return alpha / m if one_sided else alpha / (2 * m)  # upper-tail probability of the critical value


def exact_floor(n_pairs: int, alpha: float, m: int = 1, one_sided=True) -> float:
    """Smallest difference the exact test can ever detect at α/m: k/n, k the fewest pairs, all won, that
    reach it (0.5^k < α/m one-sided, 2·0.5^k two-sided: 5 resp. 6 of 64 pairs at α = 0.05, m = 1)."""
    return (int(np.floor(np.log2(1 / _level(alpha, m, one_sided)))) + 1) / n_pairs


def _w_hat(*ys):
    """Within-pair Bernoulli part of the per-seed accuracy variance, Σ_i var_s(Y[i, :])/n², pooled."""
    num, df = 0.0, 0
    for y in ys:
        n, s = y.shape[-2:]
        if s > 1:
            num, df = num + (s - 1) * y.var(-1, ddof=1).sum(-1) / n**2, df + s - 1
    return num / df if df else 0.0


def seed_components(outcomes: dict) -> dict:
    """Pooled over configurations with ≥ 2 seeds: s2 = var over seeds of per-seed accuracy, w = its
    within-pair part (already inside V_pair), tau2 = max(s2 − w, 0), df = Σ(S − 1)."""
    ys = [y for y in outcomes.values() if y.shape[-1] > 1]
    df = sum(y.shape[-1] - 1 for y in ys)
    if not df:
        return {"tau2": np.nan, "df": 0, "s2": np.nan, "w": np.nan}
    s2 = sum((y.shape[-1] - 1) * y.mean(-2).var(-1, ddof=1) for y in ys) / df
    w = _w_hat(*ys)
    tau2 = np.where(s2 - w > 1e-12, s2 - w, 0.0)  # below 1e-12 it is rounding, not seeds
    return {"tau2": tau2, "df": df, "s2": s2, "w": w}


def pooled_seed_variance(outcomes: dict) -> tuple:
    """(τ², df): see seed_components. (nan, 0) when no configuration has 2 seeds."""
    c = seed_components(outcomes)
    return c["tau2"], c["df"]


def _pair_terms(base, chal):
    d = chal.mean(-1) - base.mean(-1)
    return d, d.mean(-1), d.var(-1, ddof=1) / d.shape[-1]


def _indep_floor_var(base, chal):
    """V_pair when two cells never disagree: independent errors at the baseline's accuracy, smoothed
    (correct + 1)/(total + 2) so that accuracy 1.0 does not give variance 0."""
    n, sb = base.shape[-2:]
    a = (base.sum((-2, -1)) + 1) / (n * sb + 2)
    return a * (1 - a) * (1 / chal.shape[-1] + 1 / sb) / n


def _satterthwaite(v_pair, v_seed, k_s2, n, df_seed):
    # the seed term's error is that of s² (k_s2 = k·s²), not of the truncated difference τ̂² = s² − ŵ
    den = v_pair**2 / (n - 1) + (k_s2**2 / df_seed if df_seed else 0.0)
    return np.where(den > 0, (v_pair + v_seed) ** 2 / np.where(den > 0, den, 1), n - 1)


def _components(base, chal, tau2, df_seed, s2):
    d, D, v_pair = _pair_terms(base, chal)
    k = 1 / chal.shape[-1] + 1 / base.shape[-1]
    tau2 = np.nan_to_num(tau2)
    s2 = tau2 + _w_hat(base, chal) if s2 is None else np.maximum(s2, tau2)  # default: w from these two
    return d, D, v_pair, tau2 * k, _satterthwaite(v_pair, tau2 * k, k * s2, base.shape[-2], df_seed)


def mde(base, chal, tau2=0.0, df_seed=np.inf, alpha=0.05, m=1, power=0.8, s2=None, exact=False, one_sided=True):
    """Smallest true accuracy difference the rule actually applied detects with `power`: level α/m
    (Holm's first step, which the best challenger faces), SE from the variance components at this seed
    design, never below the exact-test floor at this n. t test: t_c + z_p·√(1 + t_c²/2ν), the normal
    approximation to the noncentral t, which carries the noise of ŜE (t_c + t_p gave 70–77% real power).
    exact=True (sign/McNemar test): normal quantiles plus its continuity correction 1/n."""
    n = base.shape[-2]
    _, _, v_pair, v_seed, df = _components(base, chal, tau2, df_seed, s2)
    v_pair = np.where(v_pair > 0, v_pair, _indep_floor_var(base, chal))
    se, lev = np.sqrt(v_pair + v_seed), _level(alpha, m, one_sided)
    if exact:
        return np.maximum(
            (stats.norm.isf(lev) + stats.norm.ppf(power)) * se + 1 / n, exact_floor(n, alpha, m, one_sided)
        )
    tc = stats.t.isf(lev, df)
    q = tc + stats.norm.ppf(power) * np.sqrt(1 + tc**2 / (2 * df))
    return np.maximum(q * se, exact_floor(n, alpha, m, one_sided))


def recipe_compare(base, chal, tau2, df_seed, alpha=0.05, m=1, power=0.8, s2=None, one_sided=True) -> dict:
    """Seed-aware paired test of challenger vs baseline. tau2/df_seed from pooled_seed_variance (or an
    assumed τ² with df_seed = inf); s2 = pooled raw seed variance (seed_components) for the df, by
    default τ² + the within-pair part of base and chal. Returns D, se, df, t, p, mde, seed_share, …"""
    d, D, v_pair, v_seed, df = _components(base, chal, tau2, df_seed, s2)
    v = v_pair + v_seed
    se = np.sqrt(v)
    t = np.divide(D, se, out=np.zeros(np.shape(v)), where=se > 0)
    p = stats.t.sf(t, df) if one_sided else 2 * stats.t.sf(np.abs(t), df)
    # V = 0 (every pair moved the same way, no seed spread): the exact sign test is the honest answer.
    p = np.where(se > 0, p, sign_test_p((d > 0).sum(-1), (d < 0).sum(-1), one_sided))
    return {
        "D": D,
        "se": se,
        "df": df,
        "t": t,
        "p": p,
        "v_pair": v_pair,
        "v_seed": v_seed,
        "seed_share": np.divide(v_seed, v, out=np.zeros(np.shape(v)), where=v > 0),
        "mde": mde(base, chal, tau2, df_seed, alpha, m, power, s2, one_sided=one_sided),
    }


def adapter_compare(base, chal, alpha=0.05, m=1, power=0.8, one_sided=True) -> dict:
    """Adapter-level test: exact sign test on the pairs where the two differ (McNemar's exact test with
    one seed each). Answers "does this adapter beat that one on this prompt population" only."""
    d, D, v_pair = _pair_terms(base, chal)
    wins, losses = (d > 0).sum(-1), (d < 0).sum(-1)
    return {
        "D": D,
        "wins": wins,
        "losses": losses,
        "p": sign_test_p(wins, losses, one_sided),
        "v_pair": v_pair,
        "mde": mde(base, chal, 0.0, np.inf, alpha, m, power, exact=True, one_sided=one_sided),
        "overturning_seed_sd": overturning_seed_sd(base, chal, alpha, m, one_sided),
    }


def overturning_seed_sd(base, chal, alpha=0.05, m=1, one_sided=True):
    """Seed-to-seed SD of a cell's accuracy (fraction: 0.02 = 2 points) above which the recipe-level
    test (τ known, normal reference, level α/m) would no longer call C better than B; 0 when C is not
    significantly better even with no seed variance."""
    _, D, v_pair = _pair_terms(base, chal)
    z = stats.norm.isf(_level(alpha, m, one_sided))
    k = 1 / chal.shape[-1] + 1 / base.shape[-1]
    return np.sqrt(np.maximum(((np.maximum(D, 0) / z) ** 2 - v_pair) / k, 0.0))


def decide_recipes(
    outcomes: dict,
    baseline: str,
    alpha=0.05,
    eligible=None,
    assumed_tau2=None,
    power=0.8,
    one_sided=True,
    baseline_in_tau=True,
) -> dict:
    """Compare every challenger with the baseline: recipe level when τ² is estimable (a configuration
    has ≥ 2 seeds) or assumed (df = inf), adapter level (exact test) otherwise. `eligible` maps
    challenger → bool (or bool array over leading axes): ineligible ones get p = 1 and stay in Holm's m.
    baseline_in_tau=False pools τ² over the challengers only (win rates: the baseline's matrix is a
    constant 0.5 that carries no seed spread). Returns arrays with challengers on the last axis; best =
    index of the significant challenger with the largest D, −1 = keep the baseline (parsimony among
    near-ties is the caller's)."""
    chal = [c for c in outcomes if c != baseline]
    m, base = len(chal), outcomes[baseline]
    if assumed_tau2 is not None:
        tau2, df_seed, s2 = assumed_tau2, np.inf, assumed_tau2
    else:
        sc = seed_components(outcomes if baseline_in_tau else {c: outcomes[c] for c in chal})
        tau2, df_seed, s2 = sc["tau2"], sc["df"], sc["s2"]
    level = "recipe" if df_seed else "adapter"
    rows = [
        recipe_compare(base, outcomes[c], tau2, df_seed, alpha, m, power, s2, one_sided)
        if df_seed
        else adapter_compare(base, outcomes[c], alpha, m, power, one_sided)
        for c in chal
    ]
    batch = np.shape(base)[:-2]
    res = {k: np.stack([np.broadcast_to(r[k], batch) for r in rows], -1) for k in rows[0]} if m else {}
    ok = (
        np.stack([np.broadcast_to((eligible or {}).get(c, True), batch) for c in chal], -1)
        if m
        else np.zeros(batch + (0,), bool)
    )
    res["p"] = np.where(ok, res.get("p", 1.0), 1.0)
    res["p_adjusted"] = holm(res["p"])
    res["significant"] = (res["p_adjusted"] < alpha) & (res.get("D", 0.0) > 0) & ok
    score = np.where(res["significant"], res.get("D", 0.0), -np.inf)
    res["best"] = np.where(res["significant"].any(-1), score.argmax(-1) if m else -1, -1)
    return dict(res, level=level, challengers=chal, tau2=tau2, df_seed=df_seed, alpha=alpha, m=m)


def contenders(outcomes: dict, baseline: str, alpha=0.05) -> dict:
    """Challengers that look better at the adapter level: pooled accuracy above the baseline's and a
    two-sided exact-test p < α, unadjusted (lenient on purpose: it only decides who gets more seeds)."""
    base = outcomes[baseline]
    out = {}
    for c, y in outcomes.items():
        if c != baseline:
            r = adapter_compare(base, y, alpha, one_sided=False)
            out[c] = (r["D"] > 0) & (r["p"] < alpha)
    return out


def replication_needs(outcomes: dict, baseline: str, alpha=0.05, max_seeds=3) -> dict:
    """Extra seeds to train per configuration (0 = none), vectorised over leading axes: any contender →
    the baseline and every contender go straight to max_seeds; the others keep their seeds and cannot
    win (pass `contenders(...)` of these same outcomes as `eligible` to the final decide_recipes)."""
    cont = contenders(outcomes, baseline, alpha)
    any_c = np.any(np.stack(list(cont.values()), -1), -1) if cont else False
    need = {c: np.where(v, max(max_seeds - outcomes[c].shape[-1], 0), 0) for c, v in cont.items()}
    need[baseline] = np.where(any_c, max(max_seeds - outcomes[baseline].shape[-1], 0), 0)
    return need


def adaptive_decision(full: dict, baseline: str, alpha=0.05, max_seeds=3, one_sided=True) -> dict:
    """Adaptive replication run on matrices that already hold max_seeds columns (simulation, or seeds
    trained ahead): stage 1 sees seed 0 only; the final look sees max_seeds for the baseline and the
    contenders, seed 0 for the rest. Returns best (index into challengers, −1 = keep), significant
    [..., m], challengers, and extra_cells (the cells replication trained)."""
    first = {c: y[..., :1] for c, y in full.items()}
    need, cont = replication_needs(first, baseline, alpha, max_seeds), contenders(first, baseline, alpha)
    chal, shape = list(cont), full[baseline].shape[:-2]
    mask = np.stack([np.broadcast_to(cont[c], shape) for c in chal], -1).reshape(-1, len(chal))
    flat = {c: y.reshape((-1,) + y.shape[-2:]) for c, y in full.items()}
    best, sig = np.full(len(mask), -1), np.zeros(mask.shape, bool)
    for pat in {tuple(r) for r in mask if r.any()}:  # one batched final look per contender pattern
        idx = np.flatnonzero((mask == pat).all(-1))
        out = {c: flat[c][idx] if c == baseline or pat[chal.index(c)] else flat[c][idx, :, :1] for c in full}
        r = decide_recipes(out, baseline, alpha, eligible=dict(zip(chal, pat)), one_sided=one_sided)
        best[idx], sig[idx] = r["best"], r["significant"]
    return {
        "best": best.reshape(shape),
        "significant": sig.reshape(shape + (len(chal),)),
        "challengers": chal,
        "extra_cells": sum(np.asarray(v) for v in need.values()),
    }


def plan_design(
    base,
    chal,
    tau2=0.0,
    alpha=0.05,
    m=1,
    target=0.03,
    power=0.8,
    n_configs=2,
    seeds=(1, 2, 3, 5, 8, 12, 16),
    one_sided=True,
) -> list:
    """Held-out pairs needed per seed count (the same for every configuration) to detect `target`
    (accuracy fraction) at α/m with `power`, from components of one unbatched (base, chal): between-pair
    variance σ²_B, within-pair Bernoulli ω (shrinks with seeds; with one seed it cannot be told from σ²_B
    and counts there, so seeds look less useful than they are) and τ² (estimated, or assumed). One seed
    is offered only when τ² = 0 (adapter level). n_pairs None: unreachable with that many seeds."""
    var_d = float((chal.mean(-1) - base.mean(-1)).var(ddof=1))
    ys = [y for y in (base, chal) if y.shape[-1] > 1]
    omega = float(np.mean([y.var(-1, ddof=1).mean() for y in ys])) if ys else 0.0
    sig_b = max(var_d - omega * (1 / base.shape[-1] + 1 / chal.shape[-1]), 0.0)
    tau2, lev, out = float(np.nan_to_num(tau2)), _level(alpha, m, one_sided), []
    for s in (x for x in seeds if x > 1 or tau2 == 0):
        a, b, cc = sig_b + 2 * omega / s, 2 * tau2 / s, 1.0 if s == 1 else 0.0  # cc: the exact test's 1/n
        n: float | None = 1000.0
        df_seed = n_configs * (s - 1) or np.inf
        for _ in range(30):  # fixed point: the t quantiles depend on df, and df on n
            assert n is not None
            df = _satterthwaite(a / n, b, 2 * (tau2 + omega / n) / s, n, df_seed)
            tc = stats.t.isf(lev, df)
            room = ((target - cc / n) / (tc + stats.norm.ppf(power) * np.sqrt(1 + tc**2 / (2 * df)))) ** 2 - b
            if room <= 0:
                n = None
                break
            n = max(a / room, 2.0)
        n = None if n is None else max(int(np.ceil(n)), int(np.ceil(exact_floor(1, alpha, m, one_sided) / target)))
        out.append({"seeds": s, "n_pairs": n, "cells": None if n is None else s * n_configs})
    return out


@functools.lru_cache(maxsize=64)
def latent_correlation(agreement: float, accuracy: float) -> float:
    """Correlation ρ of two cells' latent scores such that, at this accuracy, they agree on the given
    share of pairs (probit: correct iff √ρ·z_pair + √(1−ρ)·e_cell,pair < Φ⁻¹(accuracy))."""
    q = stats.norm.ppf(accuracy)

    def agree(r):
        return 1 - 2 * (accuracy - stats.multivariate_normal([0, 0], [[1, r], [r, 1]]).cdf([q, q]))

    return optimize.brentq(lambda r: agree(r) - agreement, 0.0, 0.9999)


def simulate_outcomes(
    rng, reps: int, n_pairs: int, seeds: dict, accuracy=0.70, effects=None, seed_sd=0.0, agreement=0.85
) -> dict:
    """Outcome matrices [reps, n_pairs, S] (uint8) for configurations {name: S}: a latent per-pair
    difficulty shared by every cell (cells agree on `agreement` of pairs), each (configuration, seed)
    cell's accuracy shifted by N(0, seed_sd), plus a true effect per configuration (fractions)."""
    rho = latent_correlation(agreement, accuracy)
    z = np.sqrt(rho) * rng.standard_normal((reps, n_pairs, 1), dtype=np.float32)
    out = {}
    for c, s in seeds.items():
        acc = accuracy + (effects or {}).get(c, 0.0) + seed_sd * rng.standard_normal((reps, 1, s))
        thr = stats.norm.ppf(np.clip(acc, 1e-6, 1 - 1e-6)).astype(np.float32)
        e = rng.standard_normal((reps, n_pairs, s), dtype=np.float32)
        out[c] = (z + np.float32(np.sqrt(1 - rho)) * e < thr).astype(np.uint8)
    return out


def seed_rule_false_switch(
    n_pairs: int, n_challengers: int, agreement=0.85, accuracy=0.70, margin_pass=1.0, reps=4000, seed=0
) -> float:
    """False-switch rate of the seed rule ("switch if a challenger gets ≥ 1 more pair right and its
    margins are cleaner"), one seed each, all configurations truly equal, by Monte Carlo. margin_pass =
    probability that the margin clause passes: 1.0 ignores it (decide() without logs treats margins as
    equal, so it always passes); 0.5 makes it an independent coin flip."""
    rng, hits, done = np.random.default_rng(seed), 0, 0
    names = {"b": 1, **{f"c{j}": 1 for j in range(n_challengers)}}
    while done < reps:
        r = min(1000, reps - done)  # chunks bound memory
        y = simulate_outcomes(rng, r, n_pairs, names, accuracy, agreement=agreement)
        base = y["b"].sum((1, 2), dtype=np.int64)
        win = np.stack(
            [(y[c].sum((1, 2), dtype=np.int64) >= base + 1) & (rng.random(r) < margin_pass) for c in names if c != "b"],
            -1,
        )
        hits, done = hits + int(win.any(-1).sum()), done + r
    return hits / reps


def bootstrap_diff(base: np.ndarray, chal: np.ndarray, level: float, n_boot: int = 2000, seed: int = 0):
    """Percentile interval and two-sided p for mean(chal) - mean(base); pairs resampled jointly,
    seeds resampled within each configuration when there are several."""
    rng = np.random.default_rng(seed)
    n = base.shape[0]
    idx = rng.integers(0, n, size=(n_boot, n))

    def resample(x):
        if x.shape[1] == 1:
            return x[idx, 0].mean(axis=1)
        s = rng.integers(0, x.shape[1], size=(n_boot, x.shape[1]))
        return np.stack([x[idx[b]][:, s[b]].mean() for b in range(n_boot)])

    diffs = resample(chal) - resample(base)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    p = min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean()))
    return float(lo), float(hi), float(p)
