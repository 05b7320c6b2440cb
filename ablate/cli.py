"""`ablate` command line: run, resume, validate, status, report."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Run preference-tuning ablations (DPO / SimPO / ORPO × LoRA rank × β × γ × seed) on Ray, "
    "evaluate every cell on held-out pairs, and decide honestly which one wins.",
)
console = Console()
err = Console(stderr=True)

MATRIX = typer.Argument(..., help="Matrix YAML file, e.g. matrices/quickstart.yaml.", show_default=False)
RESULTS = typer.Option(
    None,
    "--results",
    "-r",
    help="Results root: a path or a URI such as s3://bucket/ablate (default: the matrix's `storage`, 'results').",
)
ADDRESS = typer.Option(
    None, "--address", "-a", help="Existing Ray cluster: 'auto' or 'ray://HOST:10001'. Default: start Ray locally."
)
JOB_ADDRESS = typer.Option(
    None,
    "--address",
    "-a",
    show_default=False,
    help="The cluster's Ray dashboard, http://HEAD:8265 (default: $RAY_ADDRESS if it is an "
    "http(s) URL). Token auth: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in the environment.",
)
EXPORT_OUT = typer.Option(..., "--out", "-o", help="A new (or empty) local folder to write.", show_default=False)
JOB_ID = typer.Option(..., "--job", "-j", help="The Ray job id printed by `ablate submit`.", show_default=False)


def _fail(e: UserError) -> None:
    if getattr(e, "one_line", False):  # a cluster job's error: one line (or nothing after Ctrl-C)
        if e.code != 130:
            from rich.text import Text

            err.print(Text.assemble(("error: ", "bold red"), str(e)), highlight=False, soft_wrap=True)
        raise typer.Exit(e.code)
    err.print(f"[bold red]{len(e.problems)} problem(s); nothing was run:[/bold red]")
    for p in e.problems:
        err.print(f"  ✗ {p}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Every mistake a user can fix ends as `_fail`'s message and exit code, never a traceback."""
    try:
        yield
    except UserError as e:
        _fail(e)


def _run(matrix: Path, results: Optional[str], address: Optional[str], verb: str) -> None:
    from .cluster.replication import run_matrix
    from .cluster.runner import RunStopped, shutdown
    from .handoff.trackers import Trackers
    from .live import RunView
    from .matrix.plan import make_plan
    from .results.progress import RunProgress
    from .verdict.report import build_report, print_report

    t0 = time.perf_counter()
    try:
        plan = make_plan(matrix, results)
    except UserError as e:
        _fail(e)
    tracking = Trackers.for_plan(
        plan, warn=lambda msg: err.print(f"warning: {msg}", markup=False, highlight=False, soft_wrap=True)
    )
    status = plan.status()
    n_done = sum(s == "done" for s in status.values())
    console.print(
        f"[bold]{plan.spec.name}[/bold]: {len(plan.cells)} cells, {n_done} already done → results in {plan.results}"
    )
    failed = []
    view = RunView(console)
    # One progress for the whole command: replication's second round (more seeds) grows its total.
    progress = RunProgress(plan.results, view.show)

    def on_start(n):
        if n:
            console.print(
                f"{verb}: training {n} cell(s) on Ray ({address or os.environ.get('RAY_ADDRESS') or 'local'})…"
            )
            view.start()

    def on_done(out):
        acc = out.get("heldout_accuracy")
        if out["status"] == "done":
            view.print(
                f"  [green]✓[/green] {out['label']:<28} held-out acc {acc:.3f}  ({out['train_seconds']:.1f}s training)"
            )
        else:
            failed.append(out)
            view.print(f"  [red]✗[/red] {out['label']:<28} {out.get('error_type')}: {out.get('error')}")
        tracking.log_cell(out)  # report_to: read back from the results store; never fails the cell

    def on_replicate(added, why):
        view.print(f"  replication: training {len(added)} more cell(s): {escape(why)}")

    again = (
        "submit the matrix again (`ablate submit`)"
        if os.environ.get("ABLATE_CLIENT_PYTHON")
        else f"run `ablate resume {matrix}`"
    )
    try:
        run_matrix(plan, address, on_start, on_done, on_replicate=on_replicate, progress=progress)
    except RunStopped as e:  # the same failure kept repeating, or the results cannot be written
        view.stop()
        tracking.close(ok=False)
        err.print(Text.assemble(("error: ", "bold red"), str(e)), highlight=False, soft_wrap=True)
        err.print(f"Finished cells are kept; {again} to train the rest.", markup=False, highlight=False)
        shutdown()
        raise typer.Exit(1) from None
    except UserError as e:  # the results are locked by another run, or no node can run a cell
        view.stop()
        tracking.close(ok=False)
        shutdown()
        _fail(e)
    except KeyboardInterrupt:
        view.stop()
        tracking.close(ok=False)
        err.print(f"[yellow]Interrupted: finished cells are kept; {again} to train the rest.[/yellow]")
        shutdown()
        raise typer.Exit(130) from None
    finally:
        view.stop()
    shutdown()
    rep = build_report(plan.results)
    tracking.log_decision(rep)
    tracking.close()
    console.print()
    print_report(rep, console)
    r = plan.results.uri
    console.print(
        f"\nTables: {r}/cells.parquet, {r}/pairs.parquet; report: {r}/report.md  ({time.perf_counter() - t0:.0f}s)"
    )
    if rep.judge_error:  # the cells are done; the verdicts are missing, and that is never skipped silently
        err.print(f"[red]The judge failed:[/red] {escape(rep.judge_error)}. `ablate resume {matrix}` judges again.")
    if failed:
        err.print(
            f"[red]{len(failed)} cell(s) failed:[/red] "
            + ", ".join(f["label"] for f in failed)
            + f". Stack traces: {plan.results.uri}/cells/<id>/error.txt; `ablate resume {matrix}` retries them."
        )
    if failed or rep.judge_error:
        raise typer.Exit(1)


@app.command()
def run(matrix: Path = MATRIX, results: Optional[str] = RESULTS, address: Optional[str] = ADDRESS) -> None:
    """Validate MATRIX, train every cell not already done, then print the decision report."""
    from .cluster.jobclient import check_client_versions

    check_client_versions()  # a no-op unless this runs inside `ablate submit`'s job
    _run(matrix, results, address, "run")


@app.command()
def resume(matrix: Path = MATRIX, results: Optional[str] = RESULTS, address: Optional[str] = ADDRESS) -> None:
    """Train only the cells of MATRIX that are failed or unfinished; finished cells are untouched."""
    _run(matrix, results, address, "resume")


@app.command()
def validate(matrix: Path = MATRIX, results: Optional[str] = RESULTS) -> None:
    """Check MATRIX and its data files and list every problem at once. Starts no Ray and loads no model."""
    from .matrix.plan import make_plan

    try:
        plan = make_plan(matrix, results)
    except UserError as e:
        _fail(e)
    status = plan.status()
    console.print(
        f"[green]OK[/green] {matrix}: {len(plan.cells)} cells "
        f"({sum(s == 'done' for s in status.values())} already done), "
        f"{len(plan.train_rows)} training pairs, {len(plan.heldout_rows)} held-out pairs."
    )
    for c in plan.cells:
        console.print(
            f"  {c.id}  {c.label:<28} {status[c.id]}{'  (baseline)' if c.id in plan.baseline_ids else ''}",
            highlight=False,
        )


_TARGET = "TARGET is a results directory (results/<name>, s3://…/<name>) or a matrix YAML file"


def _results_dir(target: str, results: Optional[str]) -> str:
    """Accept a results directory or URI, or a matrix file (whose results directory is then used)."""
    from .results.storage import join

    path = Path(target)
    if "://" not in target and path.is_file() and path.suffix.lower() not in (".yaml", ".yml"):
        inside = next((d for d in (path.parent, path.parent.parent) if (d / "plan.json").is_file()), None)
        if inside is not None or path.suffix.lower() in (".parquet", ".json", ".jsonl", ".md", ".png", ".txt"):
            hint = f"; {path.name} belongs to the results directory {inside}: give that" if inside else ""
            raise UserError([f"{target}: not a matrix file or a results directory; {_TARGET}{hint}"])
    if "://" not in target and path.is_file():
        from .matrix.yamlfile import load_matrix

        spec = load_matrix(target)
        return join(str(results or spec.storage), spec.name)
    return target


@app.command()
def status(
    target: Optional[str] = typer.Argument(
        None, help="A results directory (results/<name>, s3://…/<name>) or a matrix file.", show_default=False
    ),
    results: Optional[str] = RESULTS,
    job: Optional[str] = typer.Option(
        None, "--job", "-j", show_default=False, help="A Ray job id from `ablate submit`: show the job and its cells."
    ),
    address: Optional[str] = JOB_ADDRESS,
) -> None:
    """Show each cell's state (pending / running / failed / done), a running cell's step, loss, margin and
    elapsed time, headline numbers, and the matrix's ETA."""
    from .live import status_table, summary_line
    from .results.collect import collect
    from .results.progress import snapshot

    if job is not None:  # a submitted Ray Job: its state, and its cells when the results are readable here
        from .cluster import jobs

        with _user_errors():
            jobs.show_status(job, address, console, err)
        return
    if target is None:
        _fail(UserError(["status: give a results directory or a matrix file, or --job ID --address URL"]))

    assert target is not None  # _fail above exits
    try:
        where = _results_dir(target, results)
        cells, _ = collect(where, write=False)
    except UserError as e:
        _fail(e)
    snap = snapshot(where, list(zip(cells["cell_id"], cells["label"], cells["status"])))
    console.print(status_table(cells, snap, str(target)))
    console.print(summary_line(snap), highlight=False)


@app.command()
def report(
    target: str = typer.Argument(..., help="A results directory (results/<name>, s3://…/<name>) or a matrix file."),
    rule: Optional[str] = typer.Option(
        None,
        help="Re-decide with another rule: recipe, adapter_exact (alias paired_exact), paired_bootstrap or "
        "seed_rule (default: the matrix's).",
    ),
    alpha: Optional[float] = typer.Option(None, help="Significance level (default: the matrix's)."),
    per_seed: bool = typer.Option(False, "--per-seed", help="One row per cell (seed) instead of per configuration."),
    results: Optional[str] = RESULTS,
) -> None:
    """Collect the tables, decide, and print the report; writes cells.parquet, pairs.parquet, report.md, PNGs."""
    from .verdict.decide import ALIASES, RULES
    from .verdict.report import build_report, print_report

    if rule is not None and rule not in (*RULES, *ALIASES):
        _fail(UserError([f"--rule: {rule!r} is not a rule; allowed: {', '.join(RULES)} (or paired_exact)"]))
    if alpha is not None and not 0 < alpha < 0.5:
        _fail(UserError([f"--alpha: {alpha} must be in (0, 0.5)"]))
    try:
        rep = build_report(_results_dir(target, results), rule=rule, alpha=alpha, per_seed=per_seed)
    except UserError as e:
        _fail(e)
    print_report(rep, console)


@app.command()
def export(
    target: str = typer.Argument(..., help="A results directory (results/<name>, s3://…/<name>) or a matrix file."),
    out: Path = EXPORT_OUT,
    cell: Optional[str] = typer.Option(None, "--cell", help="The cell id (or a unique prefix) to export."),
    winner: bool = typer.Option(False, "--winner", help="Export the configuration the decision picked."),
    merge: bool = typer.Option(False, "--merge", help="Also write merged full weights (merged/, the base's dtype)."),
    seed_pool: bool = typer.Option(False, "--seed-pool", help="Export every seed of the configuration (seed-<n>/)."),
    results: Optional[str] = RESULTS,
) -> None:
    """Export a finished cell: PEFT adapter + tokenizer + model card, loadable with AutoPeftModelForCausalLM."""
    from .handoff.export import export as export_cells

    with _user_errors():
        export_cells(_results_dir(target, results), out, cell, winner, merge, seed_pool, log=console.print)


@app.command()
def submit(
    matrix: Path = MATRIX,
    address: Optional[str] = JOB_ADDRESS,
    results: Optional[str] = typer.Option(
        None,
        "--results",
        "-r",
        show_default=False,
        help="Results root as the cluster sees it: an absolute path every node can write, or a URI "
        "(s3://…, gs://…). Default: the matrix's `storage`.",
    ),
    wait: str = typer.Option(
        "60s", "--wait", help="How long to retry a cluster that is still starting (e.g. 60s, 2m; 0: do not wait)."
    ),
) -> None:
    """Validate MATRIX here, then submit it as a Ray Job (code, matrix and local data shipped); print the job id."""
    from .cluster import jobs

    with _user_errors():
        jobs.submit(matrix, address, results, console, wait_s=jobs.parse_wait(wait), err=err)


@app.command()
def logs(
    job: str = JOB_ID,
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream until the job ends."),
    address: Optional[str] = JOB_ADDRESS,
) -> None:
    """Print a submitted job's driver log; --follow streams it until the job ends."""
    from .cluster import jobs

    with _user_errors():
        jobs.show_logs(job, address, follow, err)


@app.command()
def cancel(job: str = JOB_ID, address: Optional[str] = JOB_ADDRESS) -> None:
    """Stop a submitted job; cells already finished stay in its results."""
    from .cluster import jobs

    with _user_errors():
        jobs.cancel(job, address, console)


def main() -> None:
    try:
        app()
    except UserError as e:  # raised outside a command's own handling
        err.print("\n".join(e.problems), markup=False)
        sys.exit(2)
