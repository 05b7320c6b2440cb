"""Resource requests on real Ray: fractional shares pack several cells onto one unit (as gpus_per_cell: 0.5
does on a GPU), and a request no node can satisfy fails within seconds with a message naming the field."""

import time

import pytest
import yaml

from ablate.cluster.runner import run_plan, task_resources
from ablate.errors import UserError
from ablate.matrix.plan import make_plan
from ablate.schema import ResourceSpec

from conftest import ablate_cli, small_matrix


def run_cli(tmp_path, resources: dict):
    m = small_matrix()
    m["resources"] = resources
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m))
    t0 = time.perf_counter()
    r = ablate_cli("run", p, "--results", tmp_path / "r", timeout=300)
    return r, time.perf_counter() - t0


def test_unschedulable_requests_fail_fast_naming_the_field(tmp_path, local_ray):
    from ray.cluster_utils import Cluster

    # Another Ray cluster on this machine (`ray start`, another test's): without --address ablate starts its own
    # Ray and never joins that one. Ray's default would (the last cluster started here), which let runs land on
    # other tests' nodes.
    other = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"someone_elses": 1}})
    try:
        # One request that no node can meet in four ways; the one message names every field at fault.
        r, seconds = run_cli(
            tmp_path, {"custom": {"big_gpu": 1}, "gpus_per_cell": 0.5, "accelerator_type": "H100", "memory_gb": 4096}
        )
    finally:
        other.shutdown()
    assert "someone_elses" not in r.stderr and "CPU=2" in r.stderr, r.stderr
    assert r.returncode == 2, r.stderr
    assert "no node can ever run a cell" in r.stderr and "Traceback" not in r.stderr
    for field in (
        "resources.custom.big_gpu",
        "resources.gpus_per_cell",
        "resources.accelerator_type",
        "resources.memory_gb",
    ):
        assert field in r.stderr, (field, r.stderr)
    assert seconds < 120  # Ray's start included (generous for a busy 2-core machine); never left pending
    assert not list((tmp_path / "r" / "t" / "cells").glob("*/DONE"))
    # A request the node can meet is not refused: only the missing custom resource (the suite's Ray has a "slot").
    m = small_matrix()
    m["resources"] = {"custom": {"big_gpu": 1, "slot": 1}}
    (tmp_path / "m2.yaml").write_text(yaml.safe_dump(m))
    with pytest.raises(UserError) as e:
        run_plan(make_plan(tmp_path / "m2.yaml", results=tmp_path / "r2"))
    assert "resources.custom.big_gpu" in str(e.value) and "resources.custom.slot" not in str(e.value)
    assert "gpus_per_cell" not in str(e.value)


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


def test_fractional_share_runs_two_cells_at_once_on_one_unit(tmp_path, local_ray, monkeypatch):
    m = small_matrix()
    m["train"].update(max_steps=12)
    m["resources"] = {"cpus_per_cell": 0.5, "custom": {"slot": 0.5}}  # two cells per "slot", like 0.5 GPU
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m))
    plan = make_plan(p, results=tmp_path / "r")
    # Each cell checks in after its first step and waits for the other: they finish only if they ran side by side
    # on the one slot (the suite's Ray has exactly one), whatever the machine's load.
    (tmp_path / "barrier").mkdir()
    monkeypatch.setenv("ABLATE_TEST_BARRIER", f"{tmp_path / 'barrier'}:2")
    out = run_plan(plan)
    assert [o["status"] for o in out] == ["done", "done"], out
    assert len(list((tmp_path / "barrier").iterdir())) == 2
    assert local_ray.cluster_resources()["slot"] == 1


def test_more_than_one_gpu_per_cell_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="a cell trains on one GPU"):
        ResourceSpec(gpus_per_cell=2)
    assert ResourceSpec(gpus_per_cell=0.25).gpus_per_cell == 0.25
