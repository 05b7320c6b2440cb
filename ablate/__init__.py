"""ablate: honest preference-tuning ablations (DPO / SimPO / ORPO × LoRA rank × β × γ × seed) on Ray.

Public API: load_matrix, make_plan, run, collect, decide, build_report.
"""

__version__ = "0.1.0"

# Imported on first use, so `ablate --help` and every CLI call start without loading torch and pandas.
_EXPORTS = {"run": "api", "collect": "collect", "Decision": "decide", "decide": "decide", "make_plan": "plan",
            "build_report": "report", "MatrixError": "spec", "load_matrix": "spec"}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ablate' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
