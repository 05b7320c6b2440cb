"""Orchestration speed on CPU (issue #7): planning, resuming and collecting a 1,000-cell matrix.

    python bench/orchestration.py                  # 1,000 cells; about a minute on 2 cores
    python bench/orchestration.py --cells 2000     # any multiple of 100

Targets (per operation, measured in a fresh Python process after `import ablate`, so the time includes
whatever ablate imports lazily on the way; the warm median of repeated calls is shown beside it):

  plan     make_plan on a 1,000-cell matrix (load + validate the YAML, read and check the data,
           tokenize it for the truncation check, expand and hash the cells)                 <= 2 s
  resume   make_plan + plan.status() on the same matrix when 90% of the cells are done,
           5% failed and 5% pending                                                       <= 1 s
  collect  ablate.collect.collect on 1,000 finished cells, writing cells.parquet and
           pairs.parquet                                                                   <= 5 s

The finished cells are made from one real cell: the bench trains a one-cell matrix with
`ablate.api.run` on the same model and data, then copies that cell's directory (cell.json,
train_log.jsonl, eval_log.jsonl, pairs.parquet, adapter/, DONE) under each of the 1,000 cell ids,
rewriting only cell.json's id, params and config. Failed cells get the layout ablate writes for a
failure (cell.json with status "failed" and error.txt).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGETS = {"plan": 2.0, "resume": 1.0, "collect": 5.0}
DATA = {
    "train": {"builtin": "letters", "n": 256, "length_skew": 0.5, "signal": 0.8, "seed": 0},
    "heldout": {"builtin": "letters", "n": 128, "length_skew": -0.3, "signal": 0.8, "seed": 0},
    "max_length": 128,
}


def matrix_yaml(name: str, n_cells: int) -> dict:
    """20 objective variants (DPO × 10 β, SimPO × 5 β × 2 γ) × 5 LoRA ranks × n/100 seeds."""
    if n_cells % 100:
        raise SystemExit("--cells must be a multiple of 100")
    return {
        "name": name,
        "model": {"path": "builtin:tiny-llama", "dtype": "float32"},
        "data": DATA,
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "logging_steps": 2},
        "matrix": {"objective": ["dpo", "simpo"], "lora_rank": [4, 8, 16, 32, 64], "seed": list(range(n_cells // 100))},
        "objectives": {
            "dpo": {"beta": [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0]},
            "simpo": {"beta": [1.0, 2.0, 2.5, 5.0, 10.0], "gamma": [0.3, 0.5]},
        },
        "decision": {"baseline": {"objective": "dpo", "lora_rank": 16, "beta": 0.1}},
    }


def template_yaml(name: str) -> dict:
    return {
        "name": name,
        "model": {"path": "builtin:tiny-llama", "dtype": "float32"},
        "data": DATA,
        "train": {"epochs": 1, "max_steps": 2, "batch_size": 16, "lr": 1e-3, "logging_steps": 1},
        "matrix": {"objective": ["dpo"], "lora_rank": [16], "seed": [0]},
        "resources": {"cpus_per_cell": 1},
    }


# ---------------------------------------------------------------------------------------------
# Worker: one operation, cold then warm, in a fresh process


def worker(op: str, matrix: str, results: str, repeats: int) -> dict:
    t = time.perf_counter()
    import ablate  # noqa: F401
    from ablate.matrix.plan import make_plan
    from ablate.results.collect import collect  # ablate.inputs.data imports torch: most of this

    import_s = time.perf_counter() - t

    def once():
        t0 = time.perf_counter()
        if op == "plan":
            plan = make_plan(matrix, results=results)
            out = {"cells": len(plan.cells)}
        elif op == "resume":
            plan = make_plan(matrix, results=results)
            st = plan.status()
            out = {
                "cells": len(plan.cells),
                "states": {s: list(st.values()).count(s) for s in sorted(set(st.values()))},
            }
        else:
            cells, pairs = collect(Path(results) / Path(matrix).stem)
            out = {"cells": len(cells), "pair_rows": len(pairs), "done": int((cells.status == "done").sum())}
        return time.perf_counter() - t0, out

    cold, out = once()
    warm = [once()[0] for _ in range(repeats)]
    extra = {}
    if op == "plan":  # the pure expansion, for reference (ablate.cells.expand on the validated spec)
        from ablate.matrix.cells import expand

        plan = make_plan(matrix, results=results)
        ident, hashes = plan.cells[0].config["model"], plan.cells[0].config["data"]["hashes"]
        ts = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            n = len(expand(plan.spec, ident, hashes))
            ts.append(time.perf_counter() - t0)
        extra = {"expand_only_seconds": statistics.median(ts), "expand_cells": n}
    return {
        "op": op,
        "import_seconds": import_s,
        "cold_seconds": cold,
        "warm_seconds": warm,
        "warm_median_seconds": statistics.median(warm) if warm else None,
        **out,
        **extra,
    }


def spawn(op: str, matrix: Path, results: Path, repeats: int, env: dict) -> dict:
    p = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            op,
            "--matrix",
            str(matrix),
            "--results",
            str(results),
            "--repeats",
            str(repeats),
        ],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-6000:])
        raise SystemExit(f"{op} worker failed (exit {p.returncode})")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Synthetic finished cells from a real one


def train_template(work: Path, env: dict) -> Path:
    """Train one real cell with ablate.api.run (in a child process, so Ray stops with it)."""
    import yaml

    (work / "template.yaml").write_text(yaml.safe_dump(template_yaml("template"), sort_keys=False))
    code = (
        "import ablate.api, sys; c, _ = ablate.api.run(sys.argv[1], results=sys.argv[2]); "
        "assert (c.status == 'done').all(), c[['status', 'error']]"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(work / "template.yaml"), str(work / "results")],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-6000:])
        raise SystemExit("training the template cell failed")
    cells = [d for d in (work / "results" / "template" / "cells").iterdir() if (d / "DONE").is_file()]
    return cells[0]


def plant(results: Path, plan, template: Path, ids: list[str], status: str) -> None:
    """Write cell directories in ablate's layout: a copy of the real cell (done) or a failure record."""
    by_id = {c.id: c for c in plan.cells}
    tj = json.loads((template / "cell.json").read_text())
    root = results / "cells"
    root.mkdir(parents=True, exist_ok=True)
    for cid in ids:
        c = by_id[cid]
        d = root / cid
        if status == "done":
            shutil.copytree(template, d)
            cj = {**tj, "id": cid, "params": c.params, "config": c.config}
        else:
            d.mkdir()
            cj = {
                "id": cid,
                "params": c.params,
                "config": c.config,
                "status": "failed",
                "error_type": "ValueError",
                "error": "synthetic failure (bench)",
                "torch_version": tj.get("torch_version"),
            }
            (d / "error.txt").write_text("Traceback (most recent call last):\nValueError: synthetic failure (bench)\n")
        (d / "cell.json").write_text(json.dumps(cj, indent=2, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="warm repetitions per operation")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--worker", choices=sorted(TARGETS), help=argparse.SUPPRESS)
    ap.add_argument("--matrix", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.matrix, a.results, a.repeats)))
        return 0

    import yaml

    env = dict(
        os.environ,
        RAY_USAGE_STATS_ENABLED="0",
        CUDA_VISIBLE_DEVICES="",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    work = Path(tempfile.mkdtemp(prefix="ablate-bench-orch-"))
    print(f"# ablate orchestration · {a.cells} cells · work dir {work}", flush=True)
    try:
        t = time.perf_counter()
        template = train_template(work, env)
        print(
            f"template cell trained with ablate.api.run in {time.perf_counter() - t:.0f}s: "
            + ", ".join(sorted(p.name for p in template.iterdir())),
            flush=True,
        )

        name = "orch"
        matrix = work / f"{name}.yaml"
        matrix.write_text(yaml.safe_dump(matrix_yaml(name, a.cells), sort_keys=False))
        res_root = work / "results"
        rows = {}
        rows["plan"] = spawn("plan", matrix, res_root, a.repeats, env)
        assert rows["plan"]["cells"] == a.cells, rows["plan"]

        # 90% done, 5% failed, 5% pending, as after an interrupted run
        sys.path.insert(0, str(REPO))
        from ablate.matrix.plan import make_plan

        plan = make_plan(matrix, results=res_root)
        plan.write()
        ids = [c.id for c in plan.cells]
        n_done, n_failed = int(0.9 * len(ids)), int(0.05 * len(ids))
        t = time.perf_counter()
        plant(res_root / name, plan, template, ids[:n_done], "done")
        plant(res_root / name, plan, template, ids[n_done : n_done + n_failed], "failed")
        print(f"planted {n_done} done + {n_failed} failed cell dirs in {time.perf_counter() - t:.1f}s", flush=True)
        rows["resume"] = spawn("resume", matrix, res_root, a.repeats, env)
        want = {"done": n_done, "failed": n_failed, "pending": len(ids) - n_done - n_failed}
        assert rows["resume"]["states"] == want, (rows["resume"]["states"], want)

        # all done, then collect
        for cid in ids[n_done : n_done + n_failed]:
            shutil.rmtree(res_root / name / "cells" / cid)
        plant(res_root / name, plan, template, ids[n_done:], "done")
        rows["collect"] = spawn("collect", matrix, res_root, a.repeats, env)
        n_pairs = DATA["heldout"]["n"]
        assert rows["collect"]["done"] == len(ids) and rows["collect"]["pair_rows"] == len(ids) * n_pairs, rows[
            "collect"
        ]

        for op, r in rows.items():
            r["target_seconds"] = TARGETS[op]
            r["pass"] = r["cold_seconds"] <= TARGETS[op]
        date = _dt.date.today().isoformat()
        out = {
            "bench": "orchestration",
            "date": date,
            "cells": a.cells,
            "repeats": a.repeats,
            "machine": machine_info(),
            "results": rows,
        }
        md = markdown(out)
        print()
        print(md)
        out["markdown"] = md
        outdir = Path(a.out)
        outdir.mkdir(parents=True, exist_ok=True)
        path = outdir / f"orchestration-{date}{('-' + a.tag) if a.tag else ''}.json"
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {path}")
        return 0 if all(r["pass"] for r in rows.values()) else 1
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        info["load_average"] = os.getloadavg()
        info["ablate_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        pass
    return info


def markdown(out: dict) -> str:
    what = {
        "plan": "expand + validate (`make_plan`)",
        "resume": "plan a resume (`make_plan` + `plan.status()`, 90% done)",
        "collect": "collect into Parquet (`ablate.collect.collect`)",
    }
    m = out["machine"]
    lines = [
        f"**orchestration** · {out['date']} · {m.get('cpu')} · {m.get('cpu_count')} cores · {out['cells']} cells",
        "",
        "| operation | cold (s) | warm median (s) | target (s) | pass | cold + module imports (s) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for op, r in out["results"].items():
        lines.append(
            f"| {what[op]} | {r['cold_seconds']:.2f} | {r['warm_median_seconds']:.2f} | ≤ {r['target_seconds']:g} "
            f"| {'PASS' if r['pass'] else 'FAIL'} | {r['cold_seconds'] + r['import_seconds']:.2f} |"
        )
    p = out["results"].get("plan", {})
    if "expand_only_seconds" in p:
        lines += [
            "",
            "Cold = the first call in a fresh process, after importing `ablate.matrix.plan` and `ablate.results.collect` "
            f"({p['import_seconds']:.2f} s here, shown in the last column, a fixed cost whatever the matrix size); "
            "pass/fail is judged on it. Warm = median of the repeated calls in that process. "
            f"`ablate.cells.expand` alone: {p['expand_only_seconds'] * 1e3:.0f} ms for {p['expand_cells']} cells.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
