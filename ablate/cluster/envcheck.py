"""The first step of a submitted job: can this node's `python` run ablate at all?

A Ray Job's entrypoint runs the `python` found on the PATH of the node's Ray processes. When the head was
started from a virtual environment that is not on that PATH, or from an image without ablate's
dependencies, the job used to die with a raw `ModuleNotFoundError` traceback. This check runs before
anything else is imported (standard library only) and says in one line, prefixed `ablate:` so
`ablate status --job` can show it, what is missing and how to fix it.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys

ENV_PYTHON = "ABLATE_CLIENT_PYTHON"  # set by `ablate submit`: the submitting machine's Python major.minor

# pyproject.toml's dependencies as (import name, pip name); tests/test_jobs.py checks the two agree.
REQUIRED = [
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("peft", "peft"),
    ("ray", "ray[default]"),
    ("pandas", "pandas"),
    ("pyarrow", "pyarrow"),
    ("pydantic", "pydantic"),
    ("typer", "typer"),
    ("rich", "rich"),
    ("yaml", "pyyaml"),
    ("matplotlib", "matplotlib"),
    ("scipy", "scipy"),
]


def problems() -> list[str]:
    """One line per problem with this interpreter; empty when ablate can run here."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    where = f"{sys.executable or 'python'} (Python {here})"
    want = os.environ.get(ENV_PYTHON)
    if want and want.strip() != here:
        return [
            f"Python version mismatch: the job was submitted from Python {want}, but this cluster runs {where}. "
            f"Submit from Python {here}, or run the cluster on Python {want}, so driver and workers agree"
        ]
    missing = [pip for mod, pip in REQUIRED if importlib.util.find_spec(mod) is None]
    if not missing:
        return []
    return [
        f"the cluster's python, {where}, lacks ablate's dependencies: {', '.join(missing)} are not installed. "
        "Jobs run the `python` on the PATH of the process that ran `ray start`: start the cluster from "
        "ablate's worker image (docker/README.md), or activate the environment that has them before "
        "`ray start` (e.g. `. .venv/bin/activate && ray start --head`), or install them into that python "
        f"(`{os.path.basename(sys.executable or 'python')} -m pip install {' '.join(map(shlex.quote, missing))}`)"
    ]


def main() -> None:
    found = problems()
    for p in found:
        sys.stderr.write(f"ablate: {p}\n")
    if found:
        raise SystemExit(2)


if __name__ == "__main__":
    main()
