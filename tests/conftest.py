import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ROOT = Path(__file__).resolve().parents[1]


def small_matrix(**overrides) -> dict:
    """A tiny, fast matrix on the builtin model and data (as a dict; tests tweak and dump it)."""
    m = {
        "name": "t",
        "model": {"path": "builtin:tiny-llama"},
        "data": {
            "train": {"builtin": "letters", "n": 64, "length_skew": 0.5},
            "heldout": {"builtin": "letters", "n": 32, "length_skew": -0.3},
            "max_length": 96,
        },
        "train": {"epochs": 1, "batch_size": 16, "lr": 1.0e-3, "logging_steps": 1, "eval_steps": 2},
        "matrix": {"objective": ["dpo", "simpo"], "lora_rank": [4], "seed": [0]},
        "objectives": {"dpo": {"beta": 0.1}, "simpo": {"beta": 2.0, "gamma": 0.5}},
        # Replication off: these matrices test other things, and a fixed set of cells keeps them fast
        # (tests/test_recipes.py turns it on).
        "decision": {"baseline": {"objective": "dpo", "lora_rank": 4}, "replicate": "off"},
    }
    for k, v in overrides.items():
        m[k] = v
    return m


@pytest.fixture
def write_matrix(tmp_path):
    def _write(m: dict | str, name: str = "m.yaml") -> Path:
        p = tmp_path / name
        p.write_text(m if isinstance(m, str) else yaml.safe_dump(m, sort_keys=False))
        return p

    return _write


@pytest.fixture
def write_jsonl(tmp_path):
    def _write(rows, name: str) -> Path:
        p = tmp_path / name
        p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return p

    return _write


def cli_env(**extra) -> dict:
    """The environment a user's shell would give the CLI, plus test settings (hooks, COLUMNS, auth vars)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **{k: str(v) for k, v in extra.items()}}


def ablate_cli(*args, cwd=ROOT, env: dict | None = None, timeout: int = 600, **extra_env):
    """The real command line in a fresh process, as a user runs it: `python -m ablate ARGS`."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "ablate", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or cli_env(**extra_env),
        timeout=timeout,
    )


_FOREGROUND = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('ablate', run_name='__main__', alter_sys=True)"
)


def ablate_start(*args, cwd=ROOT, env: dict | None = None, **extra_env):
    """The command line started in the background (for tests that interrupt or kill it), with Ctrl-C handled as
    in a terminal's foreground: a suite started as a background job of a script (`.ci/run &`) inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt."""
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", _FOREGROUND, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env or cli_env(**extra_env),
    )


def train_directly(plan, cell, results=None, **runtime) -> dict:
    """One planned cell trained in this process (no Ray), as a worker would: returns its cell.json."""
    from ablate.cluster.runner import runtime_for
    from ablate.worker.cell import run_cell

    rt = runtime_for(plan.spec).with_(**runtime)
    return run_cell(
        cell.config,
        plan.spec.model,
        plan.train_rows,
        plan.heldout_rows,
        str(results if results is not None else plan.results),
        rt,
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a minute or more on 2 cores (chaos, node loss); `-m 'not slow'` for a quick loop, CI runs all"
    )


@pytest.fixture
def local_ray():
    """The suite's one in-process Ray for tests that call run_plan here: started on first use and kept, so its
    workers keep torch and transformers imported from one test to the next (seconds per test on 2 cores).
    A test that needs a cluster of its own shuts it down first (`own_ray`); the next user starts it again.
    Fault hooks (ABLATE_TEST_*) reach its workers as task arguments (runner._test_hooks)."""
    import logging

    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never the cluster another test (or engineer) started last on this machine
            num_cpus=2,
            resources={"slot": 1},
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    yield ray


@pytest.fixture
def own_ray():
    """For a test that starts its own cluster (ray.cluster_utils): no in-process Ray before or after it."""
    import ray

    ray.shutdown()
    yield ray
    ray.shutdown()
