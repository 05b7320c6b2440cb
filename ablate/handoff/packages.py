"""What each tracker in `report_to` needs installed, checked when the matrix is validated (before Ray)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

PACKAGES = {
    "mlflow": ("mlflow", "mlflow-skinny"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}


def tracker_problems(names: Sequence[str]) -> list[str]:
    """A tracker named in report_to whose package is missing: found when the matrix is validated."""
    out = []
    for n in names:
        module, dist = PACKAGES[n]
        if importlib.util.find_spec(module) is None:
            out.append(
                f"report_to: {n}: the {module} package is not installed here; pip install 'ablate[trackers]' "
                f"(or just {dist}), or remove {n} from report_to"
            )
    return out
