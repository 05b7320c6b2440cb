"""End to end through the real CLI, real Ray (local, started by ablate), real LoRA training and Parquet."""

import json
from pathlib import Path

import pandas as pd
import pytest

from ablate.inputs.letters import letters_task

from conftest import ablate_cli as ablate
from conftest import small_matrix, train_directly

TRL_TRAIN = {
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "step",
    "epoch",
}
TRL_EVAL = {
    "eval_loss",
    "eval_rewards/chosen",
    "eval_rewards/rejected",
    "eval_rewards/margins",
    "eval_accuracy",
    "eval_logps/chosen",
    "eval_logps/rejected",
    "step",
    "epoch",
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    m = small_matrix()
    m["data"]["train"]["n"] = 128
    m["train"]["epochs"] = 2
    m["matrix"]["lora_rank"] = [8, 4]
    m["decision"]["baseline"]["lora_rank"] = 8
    (tmp / "m.yaml").write_text(json.dumps(m))  # JSON is YAML
    first = ablate("run", "m.yaml", "--results", "res", cwd=tmp)
    return tmp, first


def test_run_trains_every_cell_and_writes_tables(finished):
    tmp, first = finished
    assert first.returncode == 0, first.stdout + first.stderr
    res = tmp / "res" / "t"
    cells = pd.read_parquet(res / "cells.parquet")
    pairs = pd.read_parquet(res / "pairs.parquet")
    assert len(cells) == 4 and (cells["status"] == "done").all()
    for col in (
        "cell_id",
        "objective",
        "lora_rank",
        "seed",
        "beta",
        "gamma",
        "status",
        "heldout_accuracy",
        "heldout_margin",
        "train_margin_first",
        "train_margin_last",
        "heldout_pairs",
        "train_seconds",
        "tokens_per_second",
        "peak_memory_mb",
        "train_data_hash",
        "heldout_data_hash",
        "model_path",
        "ablate_version",
        "is_baseline",
    ):
        assert col in cells.columns, col
    assert set(pairs["cell_id"]) == set(cells["cell_id"]) and len(pairs) == 4 * 32
    for col in (
        "pair",
        "chosen_logp_sum",
        "rejected_logp_sum",
        "chosen_logp_avg",
        "rejected_logp_avg",
        "chosen_len",
        "rejected_len",
        "margin",
        "correct",
    ):
        assert col in pairs.columns, col
    # Learning happened: training margins grew, and SimPO generalises on the length-flipped held-out set.
    assert (cells["train_margin_last"] > cells["train_margin_first"] + 0.05).all()
    assert cells.loc[cells["objective"] == "simpo", "heldout_accuracy"].min() >= 0.75
    # The per-pair table agrees with the cell rows.
    acc = pairs.groupby("cell_id")["correct"].mean()
    for r in cells.itertuples():
        assert acc[r.cell_id] == pytest.approx(r.heldout_accuracy)
    for cid in cells["cell_id"]:
        d = res / "cells" / cid
        assert (d / "DONE").is_file() and (d / "adapter" / "adapter_config.json").is_file()
        train_log = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]
        eval_log = [json.loads(x) for x in (d / "eval_log.jsonl").read_text().splitlines()]
        assert TRL_TRAIN <= set(train_log[0]) and TRL_EVAL <= set(eval_log[-1]) and len(eval_log) >= 2
    report = (res / "report.md").read_text()
    assert "Switch from dpo r8" in report or "Keep dpo r8" in report
    assert "held-out pairs right" in report or "no challenger" in report
    for png in ("margins.png", "accuracy.png", "length.png"):
        assert (res / png).stat().st_size > 5000
    assert "held-out acc" in first.stdout and "dpo r8" in first.stdout


def test_second_run_trains_nothing(finished):
    tmp, _ = finished
    res = tmp / "res" / "t"
    stamps = {p: p.stat().st_mtime_ns for p in (res / "cells").glob("*/DONE")}
    second = ablate("run", "m.yaml", "--results", "res", cwd=tmp)
    assert second.returncode == 0, second.stderr
    assert (
        "4 already done" in second.stdout
        and "training 0" not in second.stdout
        and "cell(s) on Ray" not in second.stdout
    )
    assert {p: p.stat().st_mtime_ns for p in (res / "cells").glob("*/DONE")} == stamps


def test_status_validate_and_report_read_the_results(finished):
    tmp, _ = finished
    st = ablate("status", "res/t", cwd=tmp)
    assert st.returncode == 0 and st.stdout.count("done") >= 4
    va = ablate("validate", "m.yaml", "--results", "res", cwd=tmp)
    assert va.returncode == 0 and "4 cells (4 already done)" in va.stdout
    rep = ablate("report", "res/t", "--rule", "paired_bootstrap", cwd=tmp)
    assert rep.returncode == 0 and "paired_bootstrap" in rep.stdout
    bad = ablate("report", "res/t", "--rule", "coinflip", cwd=tmp)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "allowed" in bad.stderr


def test_bad_matrix_fails_fast_without_touching_results(finished):
    tmp, _ = finished
    before = sorted(p.name for p in (tmp / "res" / "t" / "cells").iterdir())
    m = json.loads((tmp / "m.yaml").read_text())
    m["objectives"]["dpo"]["gamma"] = 0.5
    (tmp / "bad.yaml").write_text(json.dumps(m))
    out = ablate("run", "bad.yaml", "--results", "res", cwd=tmp)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "bad.yaml" in out.stderr and "objectives.dpo.gamma" in out.stderr
    assert sorted(p.name for p in (tmp / "res" / "t" / "cells").iterdir()) == before


def test_identical_failures_stop_the_run_and_are_reported_once(tmp_path):
    # A broken setup: every cell fails the same way (here a fault hook at step 1, as bad data would). The run
    # stops after resources.fail_fast (default 2) identical failures instead of failing all six one by one.
    m = small_matrix(name="broken")
    m["matrix"] = {"objective": ["simpo"], "lora_rank": [4, 8, 16], "seed": [0, 1]}
    m["decision"]["baseline"] = {"objective": "simpo", "lora_rank": 4}
    m["resources"] = {"cpus_per_cell": 2}  # one cell at a time, as on a busy cluster
    (tmp_path / "m.yaml").write_text(json.dumps(m))
    out = ablate("run", "m.yaml", "--results", "res", cwd=tmp_path, ABLATE_TEST_RAISE_AT="simpo@1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "cells failed with the same error before any cell succeeded" in out.stderr, out.stderr
    assert out.stderr.count("ValueError: simulated bad batch at step 1") == 1, out.stderr  # the error, once
    assert "resources.fail_fast: 2" in out.stderr and "ablate resume m.yaml" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr and "report.md" not in out.stdout
    from ablate.results.storage import cell_states

    states = cell_states(tmp_path / "res" / "broken")
    failed = [c for c, s in states.items() if s == "failed"]
    assert 2 <= len(failed) <= 3 and sorted(set(states.values())) == ["failed"], states  # only recorded cells
    assert len(list((tmp_path / "res" / "broken" / "cells").iterdir())) == len(failed)  # the rest never started
    for cid in failed:
        assert "Traceback" in (tmp_path / "res" / "broken" / "cells" / cid / "error.txt").read_text()


def test_same_seed_gives_same_numbers_on_cpu(tmp_path):
    from ablate.matrix.plan import make_plan

    m = small_matrix()
    m["matrix"]["objective"] = ["dpo"]
    p = tmp_path / "m.yaml"
    p.write_text(json.dumps(m))
    plan = make_plan(p, results=tmp_path / "r")
    cell = plan.cells[0]
    outs = []
    for k in range(2):
        out = train_directly(plan, cell, str(tmp_path / f"r{k}"))
        assert out["status"] == "done", out
        outs.append(pd.read_parquet(Path(tmp_path / f"r{k}" / "cells" / cell.id / "pairs.parquet")))
    pd.testing.assert_frame_equal(outs[0], outs[1])
    assert letters_task(4) == letters_task(4)


def test_early_stopping_on_heldout_metric_stops_and_is_recorded(tmp_path):
    from ablate.matrix.plan import make_plan

    m = small_matrix()
    m["matrix"]["objective"] = ["simpo"]
    m["decision"]["baseline"] = {"objective": "simpo"}
    m["train"].update(epochs=20, eval_steps=1, lr=1e-4)
    # Accuracy saturates quickly on this task, so "no better accuracy for 2 evals" must stop long before 80 steps.
    m["train"]["early_stopping"] = {"patience": 2, "metric": "eval_accuracy"}
    p = tmp_path / "m.yaml"
    p.write_text(json.dumps(m))
    plan = make_plan(p, results=tmp_path / "r")
    cell = plan.cells[0]
    out = train_directly(plan, cell, str(tmp_path / "r"))
    assert out["status"] == "done" and out["stopped_early"] is True and out["steps"] < 80
    evals = [json.loads(x) for x in (tmp_path / "r" / "cells" / cell.id / "eval_log.jsonl").read_text().splitlines()]
    accs = [e["eval_accuracy"] for e in evals[:-1]]
    assert max(accs[-2:]) <= max(accs[:-2])  # the last two evaluations did not improve on the best before them


def test_report_shows_per_seed_spread(tmp_path):
    from ablate.matrix.plan import make_plan
    from ablate.verdict.report import build_report

    m = small_matrix()
    m["matrix"]["seed"] = [0, 1]
    p = tmp_path / "m.yaml"
    p.write_text(json.dumps(m))
    plan = make_plan(p, results=tmp_path / "r")
    plan.write()
    for c in plan.cells:
        assert train_directly(plan, c, str(plan.results))["status"] == "done"
    rep = build_report(plan.results, plots=False)
    assert rep.decision.seeds == 2 and rep.decision.unit == "recipe"
    assert any(line.startswith("Seed-to-seed spread of held-out accuracy: SD") for line in rep.lines)
    # One row per configuration (seeds pooled, with their spread), one WINNER at most, the recipe rule's columns.
    rows = [r for r in rep.rows if r["configuration"] != "base (untrained)"]
    assert len(rows) == 2 and all(r["seeds"] == "2" and "±" in r["held-out acc"] for r in rows)
    assert sum("WINNER" in r["flags"] for r in rows) <= 1
    assert "p (Holm, 1-sided)" in rep.columns and "interval" not in rep.columns
    per_seed = build_report(plan.results, plots=False, write=False, per_seed=True)
    assert len(per_seed.rows) == 4 and "cell" in per_seed.columns
