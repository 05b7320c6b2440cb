"""The objective registry drives everything: each knob is an axis where a list is given, appears in labels,
ids, cells.parquet, logs and the report; a knob given to an objective that does not read it is one clear
error naming its owners; knobs at their neutral value and `truncate: none` keep the ids cells had before."""

import inspect
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ablate import objectives
from ablate.errors import UserError
from ablate.matrix.plan import make_plan
from ablate.worker import losses
from ablate.worker.losses import LogProbs, loss_for

from conftest import ROOT, small_matrix, train_directly
from conftest import ablate_cli as ablate

QUICKSTART_IDS = {"35d40da8278f", "74b3717cfa50", "d0067888a6d8", "bfb86f34423c"}


def plan_of(write_matrix, tmp_path, m):
    return make_plan(write_matrix(m), results=tmp_path / "r")


def problems_for(write_matrix, tmp_path, m) -> list[str]:
    with pytest.raises(UserError) as e:
        plan_of(write_matrix, tmp_path, m)
    return e.value.problems


def test_quickstart_ids_are_unchanged(tmp_path):
    """The registry changed nothing for the objectives that existed: the quickstart's training cells keep their ids.
    (The quickstart now also generates answers, which is part of a cell's outputs and so of its id: left out here.)"""
    import yaml

    m = yaml.safe_load((ROOT / "matrices" / "quickstart.yaml").read_text())
    m.pop("eval", None), m.pop("judge", None)
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(m))
    assert {c.id for c in make_plan(tmp_path / "q.yaml").cells} == QUICKSTART_IDS


@pytest.mark.parametrize("name", objectives.NAMES)
def test_registry_entry_is_consistent(name):
    o = objectives.get(name)
    fn = getattr(losses, o.loss)
    args = list(inspect.signature(fn).parameters)[2:]  # after (chosen, rejected)
    assert len(args) == len(o.knobs), (name, args, o.knobs)
    fields = {(f.alias or n) for n, f in o.settings.model_fields.items()}
    assert set(o.knobs) <= fields and set(o.extra_columns) <= fields
    assert set(o.neutral) <= set(o.knobs) and set(o.symbols) == set(o.knobs)
    for v in o.settings().variants():  # the defaults give every knob a value
        assert set(o.knobs) <= set(v)


def test_every_new_knob_is_an_axis_with_labels_and_distinct_ids(write_matrix, tmp_path):
    m = small_matrix()
    m["matrix"]["objective"] = ["dpo", "simpo", "ipo", "robust", "cpo", "rdpo", "gamma_po", "amapo", "hinge"]
    m["objectives"] = {
        "dpo": {"label_smoothing": [0.0, 0.1]},
        "simpo": {"sft_weight": [0.0, 1.0]},
        "ipo": {"tau": [0.1, 0.5]},
        "robust": {"label_smoothing": [0.1, 0.2]},
        "cpo": {"sft_weight": [0.5, 1.0]},
        "rdpo": {"alpha": [0.0, 0.5]},
        "gamma_po": {"gamma_beta_ratio": 0.4, "beta": 10.0, "tau": [1.0, 10.0]},
        "amapo": {"beta": [2.0, 3.0]},
    }
    m["decision"] = {"baseline": {"objective": "dpo", "label_smoothing": 0.0}}
    cells = plan_of(write_matrix, tmp_path, m).cells
    labels = [c.config_label for c in cells]
    assert len(cells) == 2 * 8 + 1 and len({c.id for c in cells}) == len(cells)
    for want in (
        "dpo r4 β0.1",
        "dpo r4 β0.1 ε0.1",
        "simpo r4 β2 γ0.5 sft1",
        "ipo r4 τ0.5",
        "robust r4 β0.1 ε0.2",
        "cpo r4 β0.1 sft0.5",
        "rdpo r4 β0.1 α0.5",
        "gamma_po r4 β10 γ4 τ1",
        "amapo r4 β3",
        "hinge r4 β0.1",
    ):
        assert want in labels, (want, labels)
    # Each cell's hashed parameters are exactly what its loss reads (besides the axes), neutral knobs left out.
    by = {c.config_label: c.config.params for c in cells}
    assert "label_smoothing" not in by["dpo r4 β0.1"] and by["dpo r4 β0.1 ε0.1"]["label_smoothing"] == 0.1
    assert "tau" in by["gamma_po r4 β10 γ4 τ1"] and "gamma_beta_ratio" not in by["gamma_po r4 β10 γ4 τ1"]
    assert "alpha" in by["rdpo r4 β0.1 α0"]  # α = 0 is a valid R-DPO cell, not a neutral value


def test_neutral_knobs_and_truncate_none_keep_old_ids(write_matrix, tmp_path):
    plain = {c.config_label: c.id for c in plan_of(write_matrix, tmp_path, small_matrix()).cells}
    m = small_matrix()
    m["objectives"] = {"dpo": {"beta": 0.1, "label_smoothing": [0.0, 0.1]}, "simpo": {"sft_weight": [0, 0.5]}}
    m["matrix"]["truncate"] = ["none", "equal"]
    m["decision"] = {"baseline": {"objective": "dpo", "label_smoothing": 0.0, "truncate": "none"}}
    cells = plan_of(write_matrix, tmp_path, m).cells
    ids = {c.config_label: c.id for c in cells}
    assert ids["dpo r4 β0.1"] == plain["dpo r4 β0.1"] and ids["simpo r4 β2 γ0.5"] == plain["simpo r4 β2 γ0.5"]
    assert len(cells) == 8 and len(set(ids.values())) == 8
    poet = [c for c in cells if c.params["truncate"] == "equal"]
    assert all(c.config_label.endswith(" poet") and c.config.params["truncate"] == "equal" for c in poet)
    assert all("truncate" not in c.config.params for c in cells if c.params["truncate"] == "none")


@pytest.mark.parametrize(
    "edit,want",
    [
        (
            lambda m: m["objectives"].update(dpo={"beta": 0.1, "tau": 0.1}),
            "objectives.dpo.tau: unknown field; allowed here: beta, label_smoothing (tau belongs to ipo, gamma_po)",
        ),
        (lambda m: m["objectives"].update(simpo={"alpha": 0.1}), "alpha belongs to rdpo"),
        (lambda m: m["objectives"].update(ipo={"beta": 0.1}), "objectives.ipo.beta: unknown field; allowed here: tau"),
        (lambda m: m["objectives"].update(amapo={"gamma": 0.5}), "gamma belongs to simpo, gamma_po"),
        (lambda m: m["objectives"].update(hinge={"label_smoothing": 0.1}), "label_smoothing belongs to dpo, robust"),
        (lambda m: m["objectives"].update(orpo={"sft_weight": 1.0}), "sft_weight belongs to simpo, cpo"),
        (lambda m: m["objectives"].update(robust={"label_smoothing": 0.5}), "less than 0.5"),
        (lambda m: m["objectives"].update(rdpo={"alpha": -1.0}), "greater than or equal to 0"),
        (lambda m: m["objectives"].update(ipo={"tau": [0.1, 0.1]}), "duplicate values"),
        (lambda m: m["matrix"].update(truncate=["cut"]), "matrix.truncate.0"),
        (
            lambda m: m.update(decision={"baseline": {"objective": "dpo", "tau": 0.1}}),
            "no objective in this matrix uses it (tau belongs to ipo, gamma_po)",
        ),
        (
            lambda m: m.update(decision={"baseline": {"objective": "dpo", "gamma": 0.5}}),
            "gamma does not apply to the dpo cells (gamma belongs to simpo)",
        ),
    ],
)
def test_misplaced_or_bad_knob_is_one_clear_error(write_matrix, tmp_path, edit, want):
    m = small_matrix()
    edit(m)
    problems = problems_for(write_matrix, tmp_path, m)
    assert len(problems) == 1 and want in problems[0], problems
    assert problems[0].startswith(str(tmp_path / "m.yaml")) or "decision" in problems[0]


def test_cli_reports_a_misplaced_knob_with_exit_2(tmp_path):
    m = small_matrix()
    m["objectives"]["dpo"] = {"beta": 0.1, "alpha": 0.5}
    (tmp_path / "m.yaml").write_text(json.dumps(m))
    r = ablate("validate", "m.yaml", "--results", "res", cwd=tmp_path)
    assert r.returncode == 2 and "alpha belongs to rdpo" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr and not (tmp_path / "res").exists()


def test_loss_for_fills_neutral_knobs_left_out_of_the_id():
    c = LogProbs(torch.tensor([-3.0]), torch.tensor([-1.0]), torch.tensor([-4.0]), torch.tensor([3.0]))
    r = LogProbs(torch.tensor([-6.0]), torch.tensor([-2.0]), torch.tensor([-5.0]), torch.tensor([3.0]))
    assert loss_for("simpo")(c, r, {"beta": 2.0, "gamma": 0.5}).logs == {}
    assert torch.equal(loss_for("dpo")(c, r, {"beta": 0.1}).loss, losses.dpo_loss(c, r, 0.1, 0.0).loss)


def _train(write_matrix, tmp_path, m, tag):
    plan = make_plan(write_matrix(m, f"{tag}.yaml"), results=tmp_path / tag)
    out = {}
    for cell in plan.cells:
        assert train_directly(plan, cell, str(tmp_path / tag))["status"] == "done"
        out[cell.params["objective"]] = pd.read_parquet(tmp_path / tag / "cells" / cell.id / "pairs.parquet")
    return out


def test_batch_statistics_are_the_micro_batchs(write_matrix, tmp_path):
    """grad_accum changes AMaPO (its margins see the micro-batch; γ-PO's too), not DPO (beyond float rounding)."""
    m = small_matrix()
    m["data"]["train"]["n"] = 32
    m["matrix"]["objective"] = ["dpo", "amapo"]
    m["train"].update(batch_size=16, max_steps=2, warmup_ratio=0.0)
    whole = _train(write_matrix, tmp_path, m, "a1")
    m["train"]["grad_accum"] = 4
    split = _train(write_matrix, tmp_path, m, "a4")
    cols = ["chosen_logp_sum", "rejected_logp_sum"]
    pd.testing.assert_frame_equal(whole["dpo"][cols], split["dpo"][cols], atol=1e-4, rtol=1e-5)
    assert (whole["amapo"][cols] - split["amapo"][cols]).abs().to_numpy().max() > 1e-3
    gaps = torch.tensor([0.1, 0.5, -0.3, 0.2, 0.9, 0.0, 0.4, -0.1])
    assert not torch.allclose(
        losses.gamma_po_margins(gaps, 0.3, 0.05)[:4], losses.gamma_po_margins(gaps[:4], 0.3, 0.05)
    )


def test_new_objectives_end_to_end_columns_logs_and_report(tmp_path):
    m = small_matrix()
    m["data"]["train"]["n"] = 32
    m["data"]["heldout"]["n"] = 16
    m["train"].update(max_steps=2, batch_size=8, grad_accum=2, eval_steps=1)
    m["matrix"].update(objective=["dpo", "ipo", "rdpo", "gamma_po", "amapo", "cpo"], truncate=["none", "equal"])
    m["objectives"] = {"rdpo": {"alpha": [0.1, 1.0]}, "gamma_po": {"tau": 1.0}}
    m["exclude"] = [{"truncate": "equal", "objective": o} for o in ("ipo", "gamma_po", "amapo", "cpo")]
    m["decision"] = {"baseline": {"objective": "dpo", "truncate": "none"}, "replicate": "off"}
    (tmp_path / "m.yaml").write_text(json.dumps(m))
    r = ablate("run", "m.yaml", "--results", "res", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = Path(tmp_path / "res" / "t")
    cells = pd.read_parquet(res / "cells.parquet").set_index("label")
    assert (cells["status"] == "done").all() and len(cells) == 10
    assert {"tau", "alpha", "label_smoothing", "sft_weight", "truncate"} <= set(cells.columns)
    assert cells.loc["rdpo r4 β0.1 α1 poet s0", "alpha"] == 1.0
    assert cells.loc["rdpo r4 β0.1 α1 poet s0", "truncate"] == "equal"
    assert cells.loc["gamma_po r4 β2 γ0.5 τ1 s0", "tau"] == 1.0 and pd.isna(cells.loc["dpo r4 β0.1 s0", "tau"])
    assert cells.loc["cpo r4 β0.1 sft1 s0", "sft_weight"] == 1.0
    report = (res / "report.md").read_text()
    assert "rdpo r4 β0.1 α1 poet" in report and "ipo r4 τ0.1" in report
    own = {"gamma_po": {"margins/gamma", "margins/gamma_mad"}, "amapo": {"margins/amapo"}}
    own.update(rdpo={"margins/length"}, cpo={"nll_loss"}, ipo=set(), dpo=set())
    for label, row in cells.iterrows():
        train = [json.loads(x) for x in (res / "cells" / row["cell_id"] / "train_log.jsonl").read_text().splitlines()]
        evals = [json.loads(x) for x in (res / "cells" / row["cell_id"] / "eval_log.jsonl").read_text().splitlines()]
        want = own[row["objective"]]
        assert want <= set(train[-1]) and {f"eval_{k}" for k in want} <= set(evals[-1]), label
        assert {"loss", "rewards/margins", "logps/chosen"} <= set(train[-1])  # TRL's names stay
