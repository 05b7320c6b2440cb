"""Starting or joining Ray, and what one cell asks of it: the local in-process Ray by default (dashboard off, or
on loopback only), an existing cluster with an address; a request no node could ever hold fails in seconds."""

from __future__ import annotations

import logging
import os

from ..errors import UserError
from ..schema import ResourceSpec


def init_ray(address: str | None, num_cpus: int | None = None, dashboard: bool = False) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a laptop
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # set inside a Ray Job: join that cluster
    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        # address="local": a Ray of our own. With no address, ray.init joins the cluster last started on this
        # machine (`ray start`, a test's cluster), which made runs land on someone else's nodes.
        # Dashboard off by default; when on, loopback only.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            logging_level=logging.ERROR,
            log_to_driver=False,
            configure_logging=True,
        )


def task_resources(res: ResourceSpec) -> dict:
    """The Ray resource request of one cell, as ray.remote options."""
    opts: dict = {"num_cpus": res.cpus_per_cell, "num_gpus": res.gpus_per_cell}
    if res.memory_gb:
        opts["memory"] = int(res.memory_gb * 2**30)
    if res.accelerator_type:
        opts["accelerator_type"] = res.accelerator_type
    if res.custom:
        opts["resources"] = dict(res.custom)
    return opts


def wants(res: ResourceSpec) -> dict[str, float]:
    """One cell's request as Ray node resources."""
    want = {"CPU": res.cpus_per_cell, "GPU": res.gpus_per_cell, **res.custom}
    if res.memory_gb:
        want["memory"] = res.memory_gb * 2**30
    if res.accelerator_type:
        want[f"accelerator_type:{res.accelerator_type}"] = 0.001
    return {k: v for k, v in want.items() if v}


def check_schedulable(res: ResourceSpec, wait_s: float = 0.0) -> None:
    """Fail within seconds, naming the field, if no node of the cluster could ever run one cell. On a
    cluster, nodes still joining get `wait_s` seconds (ABLATE_NODE_WAIT_S, default 30) to appear."""
    import time

    import ray

    want = wants(res)
    deadline = time.monotonic() + wait_s
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if any(all(node.get(k, 0) >= v for k, v in want.items()) for node in nodes):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(2.0)
    field = {"CPU": "cpus_per_cell", "GPU": "gpus_per_cell", "memory": "memory_gb"}
    short = sorted({k for k, v in want.items() if not any(node.get(k, 0) >= v for node in nodes)})
    names = [field.get(k, "accelerator_type" if k.startswith("accelerator_type:") else f"custom.{k}") for k in short]
    have = (
        "; ".join(
            ", ".join(
                f"{k}={v:g}" for k, v in sorted(n.items()) if not k.startswith("node:") and k != "object_store_memory"
            )
            for n in nodes
        )
        or "no alive nodes"
    )
    raise UserError(
        [
            f"resources: no node can ever run a cell: it asks for {', '.join(f'{k}={v:g}' for k, v in want.items())} "
            f"({', '.join('resources.' + n for n in names)} too large or absent). Nodes have: {have}. "
            "Lower the request or add a node that has it."
        ]
    )


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
