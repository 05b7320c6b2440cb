"""ablate: honest preference-tuning ablations (DPO / SimPO / ORPO × LoRA rank × β × γ × seed) on Ray.

Public API: load_matrix, make_plan, run, collect, decide, build_report, UserError (alias MatrixError).
"""

__version__ = "0.1.0"

# Imported on first use, so `ablate --help` and every CLI call start without loading torch and pandas. No
# submodule shares a name with these functions, so importing one never replaces a function here.
_EXPORTS = {
    "run": "api",
    "collect": "results.collect",
    "Decision": "verdict.decide",
    "decide": "verdict.decide",
    "make_plan": "matrix.plan",
    "build_report": "verdict.report",
    "UserError": "errors",
    "MatrixError": "errors",
    "load_matrix": "matrix.yamlfile",
    "MatrixSpec": "schema",
    "export": "handoff.export",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ablate' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
