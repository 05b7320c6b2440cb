"""ablate: honest preference-tuning ablations (DPO / SimPO / ORPO × LoRA rank × β × γ × seed) on Ray.

Public API: load_matrix, make_plan, run, collect, decide, build_report.
"""

__version__ = "0.1.0"

from .api import run  # noqa: E402
from .collect import collect  # noqa: E402
from .decide import Decision, decide  # noqa: E402
from .plan import make_plan  # noqa: E402
from .report import build_report  # noqa: E402
from .spec import MatrixError, load_matrix  # noqa: E402

__all__ = ["Decision", "MatrixError", "build_report", "collect", "decide", "load_matrix", "make_plan", "run"]
