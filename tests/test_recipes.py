"""Decisions about recipes through the public API: seeds as replicates, adaptive replication, the untrained
base, and the README's API section run as written (twice in one process).

The statistics themselves (false-switch rates, power, MDE calibration, by simulation) are tested at the
array level in tests/test_recipe_stats.py; here decide() on real tables is shown to make exactly those
decisions, and the whole loop runs on real cells.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import ablate
from ablate.cli import app
from ablate.verdict import stats

from conftest import ROOT, ablate_cli, ablate_start, small_matrix

ALPHA = 0.05


def tables(outcomes: dict[str, np.ndarray], baseline: str, replicated_from: int | None = None):
    """cells/pairs tables from {config name: [n_pairs, seeds] 0/1}; seeds ≥ replicated_from are marked as
    added by replication."""
    rows, frames = [], []
    for name, y in outcomes.items():
        y = np.asarray(y)
        obj, rank = name.split()[0], int(name.split()[1][1:])
        for s in range(y.shape[1]):
            cid = f"{name.replace(' ', '_')}_s{s}"
            rows.append({
                "cell_id": cid, "label": f"{name} s{s}", "config": name, "config_id": name.replace(" ", "_"),
                "status": "done", "is_baseline": name == baseline, "objective": obj, "lora_rank": rank, "seed": s,
                "trainable_params": rank * 1000,
                "replicated": replicated_from is not None and s >= replicated_from,
            })  # fmt: skip
            frames.append(pd.DataFrame({"cell_id": cid, "pair": np.arange(len(y)), "correct": y[:, s].astype(bool)}))
    return pd.DataFrame(rows), pd.concat(frames, ignore_index=True)


def test_challenger_worse_on_every_seed_never_switches():
    """The issue's case: 3 seeds, challenger 0.667 vs baseline 0.778 on every seed, 600 pairs. A sign test on
    seed-averaged differences sees 400 small wins (+1/3) against 200 large losses and switched (p = 7e-16)."""
    n = 600
    base, chal = np.zeros((n, 3)), np.zeros((n, 3))
    a = np.arange(400)
    for k in range(3):
        base[a, k] = a % 3 != k  # 2 of 3 seeds right on the first 400 pairs
    base[400:] = 1
    chal[:400] = 1  # the challenger: right on every seed there, wrong on every seed on the other 200
    assert np.allclose(base.mean(0), 0.778, atol=2e-3) and np.allclose(chal.mean(0), 0.667, atol=2e-3)
    d = chal.mean(1) - base.mean(1)
    assert (d > 0).sum() == 400 and (d < 0).sum() == 200  # what fooled the old rule
    cells, pairs = tables({"dpo r16": base, "simpo r8": chal}, "dpo r16")
    for rule in ("recipe", "adapter_exact", "paired_bootstrap"):
        dec = ablate.decide(cells, pairs, rule=rule)
        assert not dec.switch and dec.winner == "dpo r16", (rule, dec.reason)
    assert "no challenger gets more held-out pairs right" in ablate.decide(cells, pairs).reason


def test_mde_never_below_what_the_exact_test_can_detect():
    """Two cells both perfect on 64 pairs: the MDE once read 0.0%. The one-sided exact test needs at least 5
    of 64 pairs, all won (0.5^5 = 0.031 < 0.05), so the stated MDE can never be smaller."""
    y = np.ones((64, 1))
    dec = ablate.decide(*tables({"dpo r16": y, "simpo r8": y}, "dpo r16"))
    assert dec.mde >= 5 / 64 and not dec.switch
    assert dec.mde == pytest.approx(float(stats.mde(y, y, exact=True)))


def _three_challengers(rng, n=400):
    base = (rng.random((n, 1)) < 0.7).astype(float)
    better = np.where(rng.random((n, 1)) < 0.35, 1.0, base)  # about +10 points
    equal = np.where(rng.random((n, 1)) < 0.1, 1 - base, base)  # flips 10% of pairs both ways
    worse = np.where(rng.random((n, 1)) < 0.3, 0.0, base)
    return {"dpo r16": base, "simpo r8": better, "simpo r16": equal, "dpo r8": worse}


def reseed(y: np.ndarray, rng, share: float = 0.05) -> np.ndarray:
    """Another seed of the same adapter quality: the same accuracy, a few pairs swapped both ways."""
    out = y[:, 0].copy()
    k = int(share * len(out))
    out[rng.choice(np.flatnonzero(out == 1), k, replace=False)] = 0
    out[rng.choice(np.flatnonzero(y[:, 0] == 0), k, replace=False)] = 1
    return out


def test_replication_asks_seeds_for_the_baseline_and_contenders_only():
    outcomes = _three_challengers(np.random.default_rng(1))
    cells, pairs = tables(outcomes, "dpo r16")
    dec = ablate.decide(cells, pairs, max_seeds=3)
    assert dec.unit == "adapter" and dec.replicate == {"dpo_r16": 2, "simpo_r8": 2}
    assert ablate.decide(cells, pairs).replicate == {}  # replication off
    assert ablate.decide(cells, pairs, rule="adapter_exact", max_seeds=3).replicate == {}  # only for recipes
    # After replication: one final, recipe-level look; nothing more is asked, and a non-contender cannot win.
    rng = np.random.default_rng(2)
    more = {k: np.c_[y, reseed(y, rng), reseed(y, rng)] for k, y in outcomes.items()}
    final = {k: (y if k in ("dpo r16", "simpo r8") else y[:, :1]) for k, y in more.items()}
    cells, pairs = tables(final, "dpo r16", replicated_from=1)
    dec = ablate.decide(cells, pairs, max_seeds=3)
    assert dec.unit == "recipe" and dec.replicate == {} and dec.switch and dec.winner == "simpo r8"
    t = dec.comparisons.set_index("config")
    assert t.loc["simpo r16", "contender"] is False and t.loc["simpo r16", "p_value"] == 1.0
    assert np.isfinite(dec.seed_sd) and "3-point difference" in dec.planning


@pytest.mark.parametrize("effect", [0.0, 0.06])
def test_decide_makes_the_decisions_the_simulations_measure(effect):
    """decide() on real tables, through adaptive replication, switches exactly when stats.adaptive_decision
    (the function bench/decision.py and tests/test_recipe_stats.py simulate) does: the simulated false-switch
    rates and power are decide()'s."""
    rng = np.random.default_rng(int(effect * 100) + 7)
    names = ["dpo r16", "simpo r8", "simpo r16", "dpo r8"]
    sims = stats.simulate_outcomes(rng, 12, 300, dict.fromkeys(names, 3), effects={"simpo r8": effect}, seed_sd=0.02)
    switched = 0
    for r in range(12):
        full = {k: sims[k][r].astype(float) for k in names}
        ref = stats.adaptive_decision({k: full[k][None] for k in names}, "dpo r16")
        first = ablate.decide(*tables({k: y[:, :1] for k, y in full.items()}, "dpo r16"), max_seeds=3)
        grown = {k: (y if k.replace(" ", "_") in first.replicate else y[:, :1]) for k, y in full.items()}
        if first.replicate:
            dec = ablate.decide(*tables(grown, "dpo r16", replicated_from=1), max_seeds=3)
            assert dec.unit == "recipe" and not dec.replicate
        else:
            dec = first
        best = int(ref["best"][0])
        expected = "dpo r16" if best < 0 else ref["challengers"][best]
        if first.replicate:  # parsimony may pick an indistinguishable neighbour; the best is always eligible
            assert dec.switch == (best >= 0)
            if not dec.switch:
                assert dec.winner == expected
        else:
            assert not dec.switch and best < 0
        switched += dec.switch
    assert switched <= 3 if effect == 0 else switched >= 1


def test_nothing_learned_is_said_first_and_names_no_winner():
    rng = np.random.default_rng(3)
    base = (rng.random((200, 1)) < 0.55).astype(float)
    chal = np.where(rng.random((200, 1)) < 0.25, 1.0, base)  # clearly better than the baseline…
    cells, pairs = tables({"dpo r16": base, "simpo r8": chal}, "dpo r16")
    # …but the untrained model already prefers the chosen answer on 95% of pairs, both ways of scoring.
    right = rng.random(200) < 0.95
    untrained = pd.DataFrame({"pair": np.arange(200), "chosen_logp_sum": np.where(right, -1.0, -3.0),
                              "rejected_logp_sum": -2.0, "chosen_logp_avg": np.where(right, -0.1, -0.3),
                              "rejected_logp_avg": -0.2})  # fmt: skip
    dec = ablate.decide(cells, pairs, untrained=untrained)
    assert dec.reason.startswith("No configuration learned the held-out preference beyond the base model")
    assert not dec.switch and dec.winner == "dpo r16"
    assert dec.untrained["accuracy_sum"] == pytest.approx(right.mean())
    # The same tables against a base at chance: the winner is named as usual.
    untrained["chosen_logp_sum"] = np.where(rng.random(200) < 0.5, -1.0, -3.0)
    untrained["chosen_logp_avg"] = np.where(rng.random(200) < 0.5, -0.1, -0.3)
    dec = ablate.decide(cells, pairs, untrained=untrained)
    assert dec.switch and dec.winner == "simpo r8" and dec.untrained["above"]["simpo r8"]


def test_assumed_seed_sd_makes_a_one_seed_claim_about_recipes():
    outcomes = _three_challengers(np.random.default_rng(4))
    cells, pairs = tables(outcomes, "dpo r16")
    plain = ablate.decide(cells, pairs)
    assumed = ablate.decide(cells, pairs, assumed_seed_sd=2.0)
    assert plain.unit == "adapter" and assumed.unit == "recipe"
    assert assumed.mde > plain.mde  # a stated seed spread can only make small differences harder to claim


BAD_REPLICATE = [
    ({"replicate": {"max_seeds": 0}}, "decision.replicate.max_seeds", "greater than or equal to 1"),
    ({"replicate": {"max_seeds": 2.5}}, "decision.replicate.max_seeds", "integer"),
    ({"replicate": {"max_seeds": "three"}}, "decision.replicate.max_seeds", "integer"),
    ({"replicate": {"max_seeds": 2}}, "decision.replicate.max_seeds", "below the 3 seeds matrix.seed lists"),
    ({"replicate": {"seeds": 3}}, "decision.replicate.seeds", "unknown field"),
    ({"baseline": {"objective": "orpo"}}, "decision.baseline.objective", "not in matrix.objective"),
]


@pytest.mark.parametrize("decision,field,says", BAD_REPLICATE)
def test_bad_replication_settings_are_one_clear_error_before_training(tmp_path, decision, field, says):
    m = small_matrix()
    m["matrix"]["seed"] = [0, 1, 2]
    m["decision"] = {"baseline": {"objective": "dpo", "lora_rank": 4}, **decision}
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m, sort_keys=False))
    res = CliRunner().invoke(app, ["validate", str(p), "--results", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert field in res.output and says in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_replication_off_and_only_for_the_recipe_rule():
    """`replicate: off` (YAML reads a bare off as false; both work), and replication belongs to the recipe rule."""
    from ablate.matrix.yamlfile import parse_matrix

    m = small_matrix()
    for off in ("off", False):
        spec = parse_matrix(yaml.safe_dump({**m, "decision": {"replicate": off}}))
        assert spec.decision.replicate is None and spec.decision.max_seeds is None
    spec = parse_matrix(yaml.safe_dump({**m, "decision": {"rule": "seed_rule"}}))
    assert spec.decision.max_seeds is None
    spec = parse_matrix(yaml.safe_dump({**m, "decision": {}}))
    assert spec.decision.max_seeds == 3 and spec.decision.rule == "recipe"


# ------------------------------------------------------------------------------------------------------------
# The whole loop on real cells


def _api_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def quickstart_api(tmp_path_factory):
    """The README's API section, as written, twice in one fresh Python process, in a folder holding the
    quickstart matrix (so `results/quickstart` lands there)."""
    tmp = tmp_path_factory.mktemp("api")
    (tmp / "matrices").mkdir()
    shutil.copy(ROOT / "matrices" / "quickstart.yaml", tmp / "matrices")
    block = _api_block()
    script = (
        "import time\n"
        f"BLOCK = {block!r}\n"
        "for k in range(2):\n"
        "    t = time.perf_counter()\n"
        "    exec(BLOCK, {})\n"
        "    print(f'PASS {k} {time.perf_counter() - t:.1f}s', flush=True)\n"
    )
    import subprocess

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp, timeout=900)
    return tmp, r, time.perf_counter() - t0


def test_readme_api_section_runs_twice_in_one_process(quickstart_api):
    tmp, r, seconds = quickstart_api
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PASS 0" in r.stdout and "PASS 1" in r.stdout, r.stdout[-2000:]
    assert "TypeError" not in r.stderr
    print(f"\n[README API twice] {seconds:.0f}s; " + "; ".join(re.findall(r"PASS \d [\d.]+s", r.stdout)))


def test_quickstart_replicates_the_contenders_and_decides_about_recipes(quickstart_api):
    tmp, r, _ = quickstart_api
    res = tmp / "results" / "quickstart"
    plan = json.loads((res / "plan.json").read_text())
    cells = pd.read_parquet(res / "cells.parquet")
    seeds = cells.groupby("config")["seed"].apply(sorted).to_dict()
    # Only the baseline and the two SimPO contenders got seeds 1 and 2; DPO r8 (worse) kept its one seed.
    assert seeds == {"dpo r16 β0.1": [0, 1, 2], "dpo r8 β0.1": [0], "simpo r16 β2 γ0.5": [0, 1, 2],
                     "simpo r8 β2 γ0.5": [0, 1, 2]}, seeds  # fmt: skip
    assert cells["replicated"].sum() == 6 and (cells["status"] == "done").all()
    assert len(plan["replication"]) == 1 and "look better than dpo r16" in plan["replication"][0]["why"]
    report = ablate.build_report(res, plots=False, write=False).markdown  # the README's last line wrote seed_rule's
    assert "Switch from dpo r16 β0.1 to simpo r8 β2 γ0.5" in report and "a verdict about recipes" in report
    assert "base (untrained)" in report and "Replication added" in report and "3-point difference" in report
    assert (res / "untrained.parquet").is_file()


def test_replication_trains_only_contenders_and_resumes_after_a_kill(tmp_path):
    m = small_matrix()
    m["matrix"]["lora_rank"] = [4, 8]
    m["data"]["train"]["n"] = 128
    m["data"]["heldout"]["n"] = 64  # enough pairs for SimPO's lead over DPO to make it a contender
    m["train"].update(epochs=2, eval_steps=8)
    m["decision"] = {"baseline": {"objective": "dpo", "lora_rank": 4}, "replicate": {"max_seeds": 3}}
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m, sort_keys=False))
    res = tmp_path / "r" / "t"

    def replicated_done() -> list[Path]:
        try:
            plan = json.loads((res / "plan.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return []
        ids = [c["id"] for c in plan["cells"] if c.get("replicated")]
        return [res / "cells" / i for i in ids if (res / "cells" / i / "DONE").is_file()]

    a = ablate_start("run", p, "--results", tmp_path / "r")
    try:
        deadline = time.monotonic() + 300
        while not replicated_done() and a.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert replicated_done(), "no replicated cell finished"
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
    finally:
        a.kill()
    kept = {d.name: (d / "DONE").stat().st_mtime_ns for d in replicated_done()}
    r = ablate_cli("run", p, "--results", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    cells = pd.read_parquet(res / "cells.parquet")
    seeds = cells.groupby("config")["seed"].apply(sorted).to_dict()
    assert seeds["dpo r8 β0.1"] == [0], seeds  # not a contender: never replicated
    assert seeds["dpo r4 β0.1"] == [0, 1, 2] and seeds["simpo r4 β2 γ0.5"] == [0, 1, 2], seeds
    grown = sum(s == [0, 1, 2] for s in seeds.values())
    assert len(cells) == 4 + 2 * grown and (cells["status"] == "done").all()
    for name, mtime in kept.items():  # finished before the kill: not trained again
        assert (res / "cells" / name / "DONE").stat().st_mtime_ns == mtime
    assert "a verdict about recipes" in (res / "report.md").read_text()
