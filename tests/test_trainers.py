"""Long-lived trainer actors (resources.actors: auto): a cell trained after others in the same process, on the
base model that process kept, gives exactly the numbers of a cell trained from a fresh load; the kept base
goes back bit for bit after every cell, whether it finished, failed, ran out of memory or generated with the
adapter merged in; and on real Ray, cells that share one actor reuse its base and match `actors: off`.
Failure semantics under actors (lost workers, OOM, Ctrl-C, fail fast, a lost node) are the subject of
test_reliability.py, test_chaos.py and test_end_to_end.py, which run with the default `auto`."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ablate.cluster.runner import run_plan, runtime_for
from ablate.matrix.plan import make_plan

from conftest import small_matrix, train_directly


def matrix(**resources) -> dict:
    m = small_matrix(name="keep")
    m["matrix"]["lora_rank"] = [4, 8]
    m["train"].update(gradient_checkpointing=True)  # its hooks and flags must come off the kept base too
    m["eval"] = {"generate": {"prompts": 4, "max_new_tokens": 6, "temperature": 1.0}}  # merges the adapter
    m["resources"] = resources
    return m


def plan_for(tmp_path: Path, m: dict, results: str):
    p = tmp_path / f"{results}.yaml"
    p.write_text(yaml.safe_dump(m, sort_keys=False))
    return make_plan(p, results=tmp_path / results)


def fingerprint(model) -> dict:
    """Everything of a base model that a cell could leave changed: every weight's bytes, which parameters require a
    gradient, each module's train/eval flag, hooks and instance attributes, and the config."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return {
        "weights": h.hexdigest(),
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "modules": {
            n: (type(m).__name__, m.training, [len(getattr(m, k)) for k in hooks], sorted(vars(m)))
            for n, m in model.named_modules()
        },
        "config": model.config.to_dict(),
    }


def numbers(cell_dir: Path):
    return (
        (cell_dir / "train_log.jsonl").read_text(),
        (cell_dir / "eval_log.jsonl").read_text(),
        pd.read_parquet(cell_dir / "pairs.parquet"),
        pd.read_parquet(cell_dir / "generations.parquet"),
    )


def assert_same(a: Path, b: Path, label: str) -> None:
    x, y = numbers(a), numbers(b)
    assert x[0] == y[0], f"{label}: train_log differs"
    assert x[1] == y[1], f"{label}: eval_log differs"
    pd.testing.assert_frame_equal(x[2], y[2])
    pd.testing.assert_frame_equal(x[3], y[3])


def test_kept_base_goes_back_bit_identical_and_later_cells_equal_fresh_ones(tmp_path, monkeypatch):
    from ablate.inputs.models import load_model
    from ablate.worker import bases
    from ablate.worker.cell import run_cell, shared_reference

    monkeypatch.setattr(bases, "CACHE", bases.Cache())  # this process's own kept objects, as a new actor has
    plan = plan_for(tmp_path, matrix(), "kept")
    fresh = plan_for(tmp_path, matrix(), "fresh")
    rt = runtime_for(plan.spec).with_(keep_base=True)
    spec, results = plan.spec.model, str(plan.results)
    pristine = fingerprint(load_model(spec, "cpu"))  # what a fresh process loads

    def run(cell, ref=None, where=results):
        out = run_cell(cell.config, spec, plan.train_rows, plan.heldout_rows, where, rt, ref)
        assert fingerprint(bases.CACHE.base.model) == pristine, f"{cell.label} ({out['status']}) changed the base"
        return out

    first = plan.cells[0]
    ref = shared_reference(results, first.config, spec, plan.train_rows, plan.heldout_rows, rt)  # loads the base
    assert bases.CACHE.loads == 1 and fingerprint(bases.CACHE.base.model) == pristine
    dpo = [c for c in plan.cells if c.config.objective == "dpo"]
    simpo = [c for c in plan.cells if c not in dpo]

    # A cell that raises mid-training, and one that runs out of memory until its micro-batch is halved twice
    # (elsewhere: a cell done at a smaller micro-batch is not the one compared below).
    monkeypatch.setenv("ABLATE_TEST_RAISE_AT", "simpo@1")
    assert run(simpo[0], where=str(tmp_path / "failed"))["status"] == "failed"
    monkeypatch.delenv("ABLATE_TEST_RAISE_AT")
    monkeypatch.setenv("ABLATE_TEST_OOM_ABOVE", "4")
    assert run(simpo[0], where=str(tmp_path / "oom"))["oom_retries"] == 2
    monkeypatch.delenv("ABLATE_TEST_OOM_ABOVE")
    for c in plan.cells:  # every cell, each after other cells in this process
        out = run(c, ref if c in dpo else None)
        assert out["status"] == "done" and out["kept_base"], out
    assert bases.CACHE.loads == 1  # one load for the reference and every cell

    for c in plan.cells:
        assert train_directly(fresh, c)["status"] == "done"
        assert_same(plan.results.local_path() / "cells" / c.id, fresh.results.local_path() / "cells" / c.id, c.label)


def test_cells_sharing_an_actor_reuse_its_base_and_match_tasks_and_fresh_loads(tmp_path, local_ray):
    import torch

    # cpus_per_cell 2 on the suite's 2-CPU Ray: one actor trains the reference and all four cells in turn.
    actors = plan_for(tmp_path, matrix(cpus_per_cell=2), "actors")
    tasks = plan_for(tmp_path, matrix(cpus_per_cell=2, actors="off"), "tasks")
    assert tasks.spec.resources.actors == "off" and [c.id for c in tasks.cells] == [c.id for c in actors.cells]
    out = run_plan(actors)
    assert sorted(o["status"] for o in out) == ["done"] * 4, out
    assert all(o["kept_base"] for o in out), [(o["label"], o["kept_base"]) for o in out]
    assert all(o["setup_seconds"] < 5 for o in out)
    out_tasks = run_plan(tasks)
    assert sorted(o["status"] for o in out_tasks) == ["done"] * 4 and not any(o["kept_base"] for o in out_tasks)

    fresh, threads = plan_for(tmp_path, matrix(cpus_per_cell=2), "fresh"), torch.get_num_threads()
    torch.set_num_threads(2)  # the threads a cell of cpus_per_cell 2 trains with
    try:
        for c in fresh.cells:
            assert train_directly(fresh, c)["status"] == "done"
    finally:
        torch.set_num_threads(threads)
    for c in actors.cells:
        on_actor = actors.results.local_path() / "cells" / c.id
        assert_same(on_actor, tasks.results.local_path() / "cells" / c.id, c.label)
        assert_same(on_actor, fresh.results.local_path() / "cells" / c.id, c.label)
    ref = json.loads((actors.results.local_path() / "plan.json").read_text())
    assert len(ref["cells"]) == 4


@pytest.mark.parametrize("value", ["auto", "off", False])
def test_actors_setting_is_not_part_of_cell_ids(tmp_path, value):
    m = small_matrix()
    base = plan_for(tmp_path, m, "a")
    m["resources"] = {"actors": value}
    other = plan_for(tmp_path, m, "b")
    assert [c.id for c in other.cells] == [c.id for c in base.cells]
    assert other.spec.resources.actors == ("off" if value is False else value)


def test_a_lost_actor_is_replaced_and_its_cell_resumes_within_max_retries(tmp_path, local_ray, monkeypatch):
    m = small_matrix(name="lost")
    m["matrix"]["objective"] = ["simpo"]
    m["decision"]["baseline"] = {"objective": "simpo"}
    m["train"].update(batch_size=8, max_steps=6, checkpoint_every_steps=2)
    m["resources"] = {"cpus_per_cell": 2, "max_retries": 1}  # one actor; one retry per cell
    plan = plan_for(tmp_path, m, "lost")
    monkeypatch.setenv("ABLATE_TEST_KILL_AT_STEP", "3")  # the worker dies after its step-2 checkpoint
    [out] = run_plan(plan)
    assert out["status"] == "done" and out["resumed_from_step"] == 2, out
    assert not out["kept_base"]  # trained on the actor that replaced the lost one, which loaded the base anew
