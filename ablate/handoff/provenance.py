"""Which ablate made a result: the package version and, for a git checkout, the commit (with `+dirty` when the
tree has uncommitted changes). Recorded in plan.json by the planner and in exported model cards."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from .. import __version__


@functools.lru_cache(maxsize=1)
def ablate_commit() -> str | None:
    """The commit of the checkout ablate is imported from; None for an installed wheel or without git."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:  # fixed arguments, no shell
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "ablate"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def provenance() -> dict:
    return {"version": __version__, "commit": ablate_commit()}
