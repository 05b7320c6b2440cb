"""Resource requests on real Ray: fractional shares pack several cells onto one unit (as gpus_per_cell: 0.5
does on a GPU), and a request no node can satisfy fails within seconds with a message naming the field."""

import time

import ray
import yaml

from ablate.cluster.runner import run_plan, task_resources
from ablate.matrix.plan import make_plan
from ablate.schema import ResourceSpec

from conftest import ablate_cli, small_matrix


def run_cli(tmp_path, resources: dict):
    m = small_matrix()
    m["resources"] = resources
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m))
    t0 = time.perf_counter()
    r = ablate_cli("run", p, "--results", tmp_path / "r", timeout=120)
    return r, time.perf_counter() - t0


def test_unschedulable_requests_fail_fast_naming_the_field(tmp_path):
    # One request that no node can meet in four ways; the one message names every field at fault.
    r, seconds = run_cli(
        tmp_path, {"custom": {"big_gpu": 1}, "gpus_per_cell": 0.5, "accelerator_type": "H100", "memory_gb": 4096}
    )
    assert r.returncode == 2, r.stderr
    assert "no node can ever run a cell" in r.stderr and "Traceback" not in r.stderr
    for field in (
        "resources.custom.big_gpu",
        "resources.gpus_per_cell",
        "resources.accelerator_type",
        "resources.memory_gb",
    ):
        assert field in r.stderr, (field, r.stderr)
    assert seconds < 60  # Ray start included; never left pending
    assert not list((tmp_path / "r" / "t" / "cells").glob("*/DONE"))
    # A request the node can meet is not refused: only the missing custom resource.
    r, _ = run_cli(tmp_path, {"custom": {"big_gpu": 1}})
    assert r.returncode == 2 and "resources.custom.big_gpu" in r.stderr and "gpus_per_cell" not in r.stderr


def test_task_options_carry_every_resource():
    opts = task_resources(
        ResourceSpec(gpus_per_cell=0.25, cpus_per_cell=2, memory_gb=1.5, accelerator_type="A100", custom={"slot": 0.5})
    )
    assert opts == {
        "num_cpus": 2,
        "num_gpus": 0.25,
        "memory": int(1.5 * 2**30),
        "accelerator_type": "A100",
        "resources": {"slot": 0.5},
    }


def test_fractional_share_runs_two_cells_at_once_on_one_unit(tmp_path):
    m = small_matrix()
    m["train"].update(max_steps=12)
    m["resources"] = {"cpus_per_cell": 0.5, "custom": {"slot": 0.5}}  # two cells per "slot", like 0.5 GPU
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m))
    plan = make_plan(p, results=tmp_path / "r")
    ray.init(num_cpus=2, resources={"slot": 1}, include_dashboard=False)
    try:
        out = run_plan(plan)
    finally:
        ray.shutdown()
    assert [o["status"] for o in out] == ["done", "done"]
    (a0, a1), (b0, b1) = [(o["started_at"], o["finished_at"]) for o in out]
    assert a0 < b1 and b0 < a1  # the two cells overlapped on the single slot


def test_more_than_one_gpu_per_cell_is_refused():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="a cell trains on one GPU"):
        ResourceSpec(gpus_per_cell=2)
    assert ResourceSpec(gpus_per_cell=0.25).gpus_per_cell == 0.25
