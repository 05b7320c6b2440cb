"""Several adapters per forward pass (resources.pack: auto, ablate/worker/pack.py): cells trained together in one
pack give a lone cell's numbers to float rounding (train and eval logs, per-pair rows, adapter weights, saved
adapter files), checkpoint and resume as lone cells do, fall back to training alone when they cannot share a pass,
and on real Ray the runner packs compatible cells, one pack per slot, outside cell ids."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from ablate.cluster import trainers
from ablate.cluster.runner import run_plan, runtime_for
from ablate.matrix.plan import make_plan

from conftest import small_matrix, train_directly

RTOL, ATOL = 0.0, 0.0  # bit for bit on CPU: worker/pack.py runs each adapter on its own rows at their own length


def matrix(**over) -> dict:
    m = small_matrix(name="pack")
    m["matrix"] = {"objective": ["dpo", "simpo"], "lora_rank": [4, 8], "seed": [0, 1]}
    m["data"]["train"]["n"] = 48
    m["train"].update(batch_size=8, grad_accum=2, eval_steps=3)  # two micro-batches per step
    m.update(over)
    return m


def plan_for(tmp_path: Path, m: dict, results: str):
    p = tmp_path / f"{results}.yaml"
    p.write_text(yaml.safe_dump(m, sort_keys=False))
    return make_plan(p, results=tmp_path / results)


def logs(path: Path) -> pd.DataFrame:
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])


def assert_close(a: Path, b: Path, label: str) -> None:
    """Two cells' outputs equal to fp32 rounding: every logged number, every held-out pair, every adapter weight."""
    for name in ("train_log.jsonl", "eval_log.jsonl"):
        pd.testing.assert_frame_equal(logs(a / name), logs(b / name), rtol=RTOL, atol=ATOL, obj=f"{label} {name}")
    x, y = pd.read_parquet(a / "pairs.parquet"), pd.read_parquet(b / "pairs.parquet")
    pd.testing.assert_frame_equal(x, y, rtol=RTOL, atol=ATOL, obj=f"{label} pairs")
    wa, wb = (
        load_file(a / "adapter" / "adapter_model.safetensors"),
        load_file(b / "adapter" / "adapter_model.safetensors"),
    )
    assert sorted(wa) == sorted(wb), label
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=RTOL, atol=ATOL, msg=f"{label} {k}")
    ca, cb = (json.loads((d / "adapter" / "adapter_config.json").read_text()) for d in (a, b))
    for c in (ca, cb):
        c["target_modules"] = sorted(c["target_modules"])  # PEFT writes a set, in the process's hash order
    assert ca == cb, label


def run_packed(plan, cells, results, **runtime):
    from ablate.worker import bases
    from ablate.worker.cell import shared_reference
    from ablate.worker.pack import run_pack

    rt = runtime_for(plan.spec).with_(**runtime)
    ref = shared_reference(str(results), cells[0].config, plan.spec.model, plan.train_rows, plan.heldout_rows, rt)
    refs = [ref if c.config.objective == "dpo" else None for c in cells]
    bases.CACHE.drop_base()
    return run_pack(
        [c.config for c in cells], plan.spec.model, plan.train_rows, plan.heldout_rows, str(results), rt, refs
    )


def test_a_pack_of_four_gives_each_cell_its_lone_numbers(tmp_path):
    plan = plan_for(tmp_path, matrix(), "packed")
    alone = plan_for(tmp_path, matrix(), "alone")
    four = plan.cells[:4]  # dpo and simpo × rank 4 and 8, different seeds among them
    assert len({(c.config.objective, c.config.rank, c.config.seed) for c in four}) == 4
    assert len({c.config.pack_key(runtime_for(plan.spec)) for c in four}) == 1
    out = run_packed(plan, four, plan.results)
    assert [o["status"] for o in out] == ["done"] * 4, out
    assert [o["pack_size"] for o in out] == [4] * 4
    for c in four:
        lone = train_directly(alone, c)
        assert lone["status"] == "done" and lone["pack_size"] == 1
        a, b = plan.results.local_path() / "cells" / c.id, alone.results.local_path() / "cells" / c.id
        assert_close(a, b, c.label)
        got = json.loads((a / "cell.json").read_text())
        assert got["heldout_accuracy"] == lone["heldout_accuracy"], c.label
        assert np.isclose(got["heldout_margin"], lone["heldout_margin"], rtol=RTOL, atol=ATOL), c.label


def test_packed_cells_generate_as_lone_cells_do_at_evals_and_merged_at_the_end(tmp_path):
    m = matrix(eval={"generate": {"prompts": 4, "max_new_tokens": 6, "temperature": 1.0, "every": "eval"}})
    m["matrix"].update(seed=[0], epochs=[1, 2])  # one-epoch cells finish (and merge) while the others train on
    m["decision"]["baseline"]["epochs"] = 1
    plan, alone = plan_for(tmp_path, m, "packed"), plan_for(tmp_path, m, "alone")
    three = [c for c in plan.cells if c.config.rank == 4 or c.config.objective == "simpo"][:3]
    assert sorted(c.config.params["epochs"] for c in three) in ([1, 1, 2], [1, 2, 2])
    assert [o["pack_size"] for o in run_packed(plan, three, plan.results)] == [3] * 3
    for c in three:
        assert train_directly(alone, c)["status"] == "done"
        a, b = plan.results.local_path() / "cells" / c.id, alone.results.local_path() / "cells" / c.id
        assert_close(a, b, c.label)
        gen_a, gen_b = pd.read_parquet(a / "generations.parquet"), pd.read_parquet(b / "generations.parquet")
        assert gen_a["final"].any() and (~gen_a["final"]).any()  # at evals, with the adapter, and merged at the end
        pd.testing.assert_frame_equal(gen_a, gen_b)


def test_a_stopped_pack_resumes_from_its_checkpoints(tmp_path, monkeypatch):
    """A pack stopped mid-run (as STOP stops it: after the step that sees it) leaves each cell's checkpoint; the
    next pack resumes them all and ends at the uninterrupted numbers."""
    from ablate.results import storage
    from ablate.worker.cell import StopRequested
    from ablate.worker.faults import Faults

    plan = plan_for(tmp_path, matrix(), "resumed")
    alone = plan_for(tmp_path, matrix(), "alone")
    two = [c for c in plan.cells if c.config.seed == 0 and c.config.rank == 4]

    def stop_at_3(self, step, *args, **kw):
        if step == 3:
            raise StopRequested

    with monkeypatch.context() as patch:
        patch.setattr(Faults, "after_step", stop_at_3)
        out = run_packed(plan, two, plan.results, checkpoint_every_steps=1)
    assert [o["status"] for o in out] == ["stopped"] * 2, out
    for c in two:
        assert plan.results.exists(storage.checkpoint_key(c.id))
    out = run_packed(plan, two, plan.results, checkpoint_every_steps=1)
    assert [(o["status"], o["resumed_from_step"]) for o in out] == [("done", 3)] * 2, out
    for c in two:
        assert train_directly(alone, c)["status"] == "done"
        assert_close(plan.results.local_path() / "cells" / c.id, alone.results.local_path() / "cells" / c.id, c.label)


def test_a_pack_that_fails_hands_its_cells_back_to_train_alone(tmp_path, monkeypatch):
    plan = plan_for(tmp_path, matrix(), "fail")
    two = [c for c in plan.cells if c.config.seed == 0 and c.config.rank == 4]
    monkeypatch.setenv("ABLATE_TEST_RAISE_AT", "simpo@2")
    out = run_packed(plan, two, plan.results, checkpoint_every_steps=1)
    assert [o["status"] for o in out] == ["unpacked"] * 2, out
    assert all(o["why"].startswith("ValueError: simulated bad batch at step 2") for o in out), out
    assert not list(plan.results.local_path().glob("cells/*/cell.json"))  # nothing published, nothing failed yet
    assert not list(plan.results.local_path().glob("running/*"))  # and no heartbeat left behind


def test_a_lora_outside_the_attention_and_mlp_linears_trains_alone(tmp_path):
    m = matrix()
    m["train"]["lora"] = {"targets": ["q_proj", "v_proj", "lm_head"]}  # the LM head sees gathered [tokens, hidden]
    plan = plan_for(tmp_path, m, "head")
    two = [c for c in plan.cells if c.config.seed == 0 and c.config.rank == 4]
    out = run_packed(plan, two, plan.results)
    assert [o["status"] for o in out] == ["unpacked"] * 2 and "RuntimeError" in out[0]["why"], out


def test_a_failed_reference_sends_the_pack_back_so_cells_without_one_still_train(tmp_path, local_ray):
    import ray

    from ablate.cluster.trainers import Trainer

    plan = plan_for(tmp_path, matrix(), "noref")
    dpo, simpo = (next(c for c in plan.cells if c.config.objective == k) for k in ("dpo", "simpo"))

    @ray.remote
    def broken_reference():
        raise OSError("the reference pass failed")

    rows = {"train": ray.put(plan.train_rows), "heldout": ray.put(plan.heldout_rows)}
    rt = runtime_for(plan.spec).with_(keep_base=True)
    out = Trainer().train_pack(
        [dpo.config, simpo.config], plan.spec.model, rows, str(plan.results), rt, [[broken_reference.remote()], None]
    )
    assert [o["status"] for o in out] == ["unpacked"] * 2 and "the reference pass failed" in out[0]["why"], out


def test_on_ray_a_failing_cell_fails_alone_and_its_pack_mates_finish_with_their_lone_numbers(tmp_path, local_ray):
    m = matrix(resources={"cpus_per_cell": 2, "fail_fast": "off"})  # one slot: one pack of all four
    m["matrix"] = {"objective": ["dpo", "simpo"], "lora_rank": [4], "seed": [0, 1]}
    plan, alone = plan_for(tmp_path, m, "fail"), plan_for(tmp_path, m, "alone")
    os.environ["ABLATE_TEST_RAISE_AT"] = "simpo@2"
    try:
        out = {o["id"]: o for o in run_plan(plan)}
    finally:
        del os.environ["ABLATE_TEST_RAISE_AT"]
    assert len(out) == 4
    for c in plan.cells:
        o = out[c.id]
        if c.config.objective == "simpo":
            assert (o["status"], o["error_type"]) == ("failed", "ValueError"), o
            continue
        assert (o["status"], o["pack_size"]) == ("done", 1), o  # trained again, alone, after its pack failed
        assert train_directly(alone, c)["status"] == "done"
        assert_close(plan.results.local_path() / "cells" / c.id, alone.results.local_path() / "cells" / c.id, c.label)


def test_packs_split_compatible_cells_over_the_slots_and_never_mix_incompatible_ones(tmp_path):
    plan = plan_for(tmp_path, matrix(), "groups")
    rt = runtime_for(plan.spec)
    cells = plan.cells  # 8: dpo/simpo × rank 4/8 × seed 0/1
    assert [len(g) for g in trainers.packs(cells, rt, 2, True)] == [4, 4]
    assert [len(g) for g in trainers.packs(cells, rt, 1, True)] == [8]
    assert [len(g) for g in trainers.packs(cells, rt, 8, True)] == [1] * 8
    assert [len(g) for g in trainers.packs(cells, rt, 2, False)] == [1] * 8
    assert [c.id for g in trainers.packs(cells, rt, 3, True) for c in g] == [c.id for c in cells]
    m = matrix()
    m["train"]["lora"] = {"dropout": 0.1}
    assert all(c.config.pack_key(rt) is None for c in plan_for(tmp_path, m, "dropout").cells)
    assert all(c.config.pack_key(rt.with_(gradient_checkpointing=True)) is None for c in cells)
    assert all(c.config.pack_key(rt.with_(share_prompt=False)) is None for c in cells)
    m = matrix()
    m["matrix"]["lr"] = [1e-3, 2e-3]  # differs per cell: each has its own optimizer
    m["decision"]["baseline"]["lr"] = 1e-3
    assert len({c.config.pack_key(rt) for c in plan_for(tmp_path, m, "lr").cells}) == 1


@pytest.mark.parametrize("value", ["off", False])
def test_pack_setting_is_not_part_of_cell_ids(tmp_path, value):
    on = plan_for(tmp_path, matrix(), "on")
    off = plan_for(tmp_path, matrix(resources={"pack": value}), "off")
    assert off.spec.resources.pack == "off" and [c.id for c in on.cells] == [c.id for c in off.cells]


def test_the_runner_packs_cells_on_actors_and_they_match_pack_off(tmp_path, local_ray):
    m = matrix()
    m["matrix"]["seed"] = [0]
    packed = plan_for(tmp_path, m, "on")
    plain = plan_for(tmp_path, {**m, "resources": {"pack": "off"}}, "plain")
    out = run_plan(packed)
    assert sorted(o["status"] for o in out) == ["done"] * 4, out
    assert sorted(o["pack_size"] for o in out) == [2] * 4  # the suite's Ray has 2 slots: two packs of two
    assert run_plan(packed) == []  # all done: nothing trains again
    out_plain = run_plan(plain)
    assert sorted(o["pack_size"] for o in out_plain) == [1] * 4
    for c in packed.cells:
        a, b = packed.results.local_path() / "cells" / c.id, plain.results.local_path() / "cells" / c.id
        assert_close(a, b, c.label)
