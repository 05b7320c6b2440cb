"""The judge step: after cells are done, each challenger cell's final answers are compared with each baseline
cell's answers to the same prompts (ablate/judges.py), and the verdicts are kept.

Verdicts live in judgements/<judge key>/<challenger id>-<baseline id>.parquet. Cells never change, so a pair
judged once is never judged again: a re-run, adaptive replication's second round and `ablate resume` after a
failure judge only what is missing. judgements.parquet gathers the verdicts for the current cells. When the
judge fails (an endpoint that refuses or times out after its retries, a model that is not a reward model),
the error goes to judgements/<key>/error.json and into the report; the cells stay done, and the next run
tries the judge again. The reward model scores on a Ray worker, because the driver never loads torch.
"""

from __future__ import annotations

import io
import time

import pandas as pd

from ..judges import JudgeFailed, compare, judge_info
from ..matrix.plan import Plan
from ..results.collect import JUDGEMENTS
from ..results.storage import Store, read_parquet
from ..schema import RewardModelJudge


def _reward_task(path, revision, items, batch_size, device):
    from ..worker.reward import reward_scores

    return reward_scores(path, revision, items, batch_size, device)


def _final(store: Store, cell_id: str) -> pd.DataFrame:
    g = read_parquet(store, f"cells/{cell_id}/generations.parquet")
    return g[g["final"]].set_index("prompt_index").sort_index()


def _reward_scores(plan: Plan, gens: dict[str, pd.DataFrame], address, num_cpus) -> dict[str, float]:
    """One Ray task scores every distinct answer that a pair to judge needs."""
    import ray

    from .raysetup import init_ray

    judge = plan.spec.judge
    assert isinstance(judge, RewardModelJudge)
    items, seen = [], set()
    for g in gens.values():
        for _, r in g.iterrows():
            if r["text"] not in seen:
                seen.add(r["text"])
                items.append({"prompt": r["prompt"], "messages": r["messages"], "answer": r["text"]})
    init_ray(address, num_cpus)
    res = plan.spec.resources
    opts = {"num_cpus": res.cpus_per_cell, "num_gpus": min(1.0, res.gpus_per_cell), "max_retries": res.max_retries}
    task = ray.remote(_reward_task).options(name="ablate-judge", **opts)
    device = "cuda" if res.gpus_per_cell > 0 else "cpu"
    scores = ray.get(task.remote(judge.reward_model, judge.revision, items, judge.batch_size, device))
    return {it["answer"]: s for it, s in zip(items, scores)}


def judge_matrix(plan: Plan, address: str | None = None, num_cpus: int | None = None) -> dict | None:
    """Judge every (challenger cell, baseline cell) pair not judged yet; None when the matrix has no judge.
    Returns {"judged": pairs judged now, "seconds": …, "error": message or None}."""
    info = judge_info(plan.spec)
    if info is None:
        return None
    store, key, t0 = plan.results, info["key"], time.perf_counter()
    status = plan.status()
    done = [c for c in plan.cells if status[c.id] == "done"]
    base = [c for c in done if c.id in plan.baseline_ids]
    chal = [c for c in done if c.id not in plan.baseline_ids]
    pair_file = lambda c, b: f"judgements/{key}/{c.id}-{b.id}.parquet"  # noqa: E731
    todo = [(c, b) for c in chal for b in base if not store.exists(pair_file(c, b))]
    error = None
    if todo:
        try:
            gens = {c.id: _final(store, c.id) for c in {x.id: x for pair in todo for x in pair}.values()}
            scores = (
                _reward_scores(plan, gens, address, num_cpus) if isinstance(plan.spec.judge, RewardModelJudge) else None
            )
            for c, b in todo:
                gc, gb = gens[c.id], gens[b.id]
                items = [{"prompt": gc.at[i, "prompt"], "challenger": gc.at[i, "text"], "baseline": gb.at[i, "text"]}
                         for i in gc.index]  # fmt: skip
                df = pd.DataFrame(compare(plan.spec.judge, items, scores))
                df.insert(0, "prompt_index", gc.index.to_numpy())
                df = df.assign(cell_id=c.id, baseline_cell_id=b.id, judge_key=key)
                for side, g in (("challenger", gc), ("baseline", gb)):
                    df[f"{side}_chars"], df[f"{side}_tokens"] = g["chars"].to_numpy(), g["tokens"].to_numpy()
                buf = io.BytesIO()
                df.to_parquet(buf, index=False)
                store.write_bytes(pair_file(c, b), buf.getvalue())
        except JudgeFailed as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - e.g. the reward-model task: a load error, not a reward model
            cause = getattr(e, "cause", None) or e
            error = f"{info['name']}: {type(cause).__name__}: {(str(cause).splitlines() or [''])[0][:300]}"
    if error:
        store.write_text(f"judgements/{key}/error.json", _json({"error": error, "at": time.time()}))
    else:
        store.delete(f"judgements/{key}/error.json")
    frames = [read_parquet(store, pair_file(c, b)) for c in chal for b in base if store.exists(pair_file(c, b))]
    if frames:
        buf = io.BytesIO()
        pd.concat(frames, ignore_index=True).to_parquet(buf, index=False)
        store.write_bytes(JUDGEMENTS, buf.getvalue())
    return {"judged": len(todo), "seconds": time.perf_counter() - t0, "error": error}


def _json(obj) -> str:
    import json

    return json.dumps(obj, indent=1)
