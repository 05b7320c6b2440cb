"""The model card of an export: README.md in the Hugging Face format (YAML metadata, then Markdown).

The metadata has the standard keys the Hub and its tools read (library_name, base_model and its relation,
pipeline_tag, tags, datasets, model-index with the held-out accuracy) and an `ablate:` block with everything
needed to reproduce or audit the cell: the recipe (objective and every hyperparameter), the data content
hashes, the model identity, ablate's version and commit, and the decision evidence.
"""

from __future__ import annotations

import math
from typing import Any

from ..schema import ModelSpec
from .provenance import provenance


def _num(v: Any) -> Any:
    """YAML-safe: NaN and missing → None, numpy scalars → Python."""
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    return None if isinstance(v, float) and math.isnan(v) else v


def _is_hub_id(path: str) -> bool:
    return not path.startswith("builtin:") and not path.startswith(("/", ".", "~")) and path.count("/") <= 1


def accuracy_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval, as the report's accuracy plot draws it."""
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def evidence(rep, row: dict) -> dict[str, Any]:
    """The decision evidence for one cell: its accuracy and interval, its configuration's comparison with the
    baseline under the rule, the report's flags for it, and the decision itself."""
    n, k = int(row["heldout_pairs"]), int(row["heldout_correct"])
    lo, hi = accuracy_interval(k, n)
    flags = next((r["flags"] for r in rep.rows if r.get("configuration") == row["config"]), "")  # per configuration
    ev: dict[str, Any] = {
        "heldout_accuracy": _num(row["heldout_accuracy"]),
        "heldout_correct": k,
        "heldout_pairs": n,
        "heldout_accuracy_ci95": [round(lo, 4), round(hi, 4)],
        "win_rate": _num(row.get("win_rate")),  # only when a matrix generated and judged completions
        "flags": [f for f in (x.strip() for x in flags.split(",")) if f],
    }
    d = rep.decision
    if d is None:
        return ev
    ev.update(rule=d.rule, alpha=d.alpha, baseline=d.baseline, winner=d.winner, switch=bool(d.switch))
    ev.update(decision=d.reason, mde=_num(d.mde), seeds=d.seeds)
    comp = d.comparisons.set_index("config")
    if row["config"] in comp.index:
        c = comp.loc[row["config"]]
        ev["configuration"] = {
            "config": row["config"],
            "is_baseline": bool(c["is_baseline"]),
            "seeds": int(c["seeds"]),
            "accuracy": _num(c["accuracy"]),
            "accuracy_seed_sd": _num(c["accuracy_seed_sd"]),
            "vs_baseline": None
            if c["is_baseline"]
            else {
                "diff_pairs": _num(c["diff_pairs"]),
                "wins": int(c["wins"]),
                "losses": int(c["losses"]),
                "p_value": _num(c["p_value"]),
                "p_adjusted": _num(c["p_adjusted"]),
                "ci_low": _num(c["ci_low"]),
                "ci_high": _num(c["ci_high"]),
                "significant": bool(c["significant"]),
            },
        }
    return ev


def model_card(plan: dict, rep, row: dict, info: dict, spec: ModelSpec, variant: str) -> str:
    """README.md for an export; `variant` is `adapter` (PEFT folder) or `merged` (full weights)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    cfg = info.get("config", {})
    params = {k: _num(v) for k, v in (info.get("params") or {}).items()}
    data = cfg.get("data", {})
    sources = plan.get("data", {}).get("sources", {})
    ev = evidence(rep, row)
    hub = _is_hub_id(spec.path)
    meta: dict[str, Any] = {
        "library_name": "peft" if variant == "adapter" else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["ablate", "lora", "preference-tuning", str(params.get("objective"))],
        "model_name": f"{plan['name']}: {row['label']}",
    }
    if hub:
        meta.update(base_model=spec.path, base_model_relation="adapter" if variant == "adapter" else "merge")
    hf_data = [s.removeprefix("hf:").split("@")[0].split("[")[0] for s in sources.values() if s.startswith("hf:")]
    if hf_data:
        meta["datasets"] = sorted(set(hf_data))
    meta["eval_results"] = [
        EvalResult(
            task_type="text-generation",
            task_name="held-out preference ranking",
            dataset_type=hf_data[-1] if sources.get("heldout", "").startswith("hf:") else "ablate-heldout",
            dataset_name=sources.get("heldout") or "held-out pairs",
            metric_type="accuracy",
            metric_name="pairwise accuracy (chosen ranked above rejected under the cell's reward)",
            metric_value=ev["heldout_accuracy"],
        )
    ]
    trained_with = plan.get("ablate", {})
    meta["ablate"] = {
        "matrix": plan["name"],
        "cell_id": row["cell_id"],
        "cell": row["label"],
        "recipe": {**params, "train": cfg.get("train", {})},
        "model": {**cfg.get("model", {}), "spec": spec.model_dump(mode="json")},
        "data": {
            "hashes": data.get("hashes", {}),
            "sources": sources,
            "max_length": data.get("max_length"),
            "prompt_budget": data.get("prompt_budget"),
            "split": plan.get("split", {}).get("fraction"),
        },
        "evidence": ev,
        "version": {
            "trained": cfg.get("ablate_version"),
            "commit": trained_with.get("commit"),
            "exported": provenance(),
        },
    }
    card_data = ModelCardData(**meta)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{_body(plan, row, params, cfg, spec, ev, variant)}").content


def _pct(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _body(plan, row, params, cfg, spec: ModelSpec, ev: dict, variant: str) -> str:
    knobs = ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items())
    lo, hi = ev["heldout_accuracy_ci95"]
    load = (
        "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
        'model = AutoPeftModelForCausalLM.from_pretrained("THIS_FOLDER")\n'
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")'
        if variant == "adapter"
        else "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")\n'
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")'
    )
    base = (
        f"the builtin `{spec.path}` (its weights are in `base/`; adapter_config.json points there by absolute "
        "path, so after moving the folder set `base_model_name_or_path` to the new `base/`)"
        if spec.path.startswith("builtin:")
        else f"`{spec.path}`" + (f" at revision `{spec.revision}`" if spec.revision else "")
    )
    out = [
        f"# {row['label']} · {plan['name']}",
        "",
        f"A LoRA adapter ({'merged into the base weights, ' + spec.dtype if variant == 'merged' else 'PEFT'}) "
        f"trained by ablate as one cell of the `{plan['name']}` preference-tuning ablation. "
        f"Base model: {base}.",
        "",
        "## Use",
        "",
        "```python",
        load,
        "```",
        "",
        "## Evidence",
        "",
        f"- Held-out accuracy {_pct(ev['heldout_accuracy'])} ({ev['heldout_correct']}/{ev['heldout_pairs']} pairs; "
        f"95% exact interval {lo:.3f}–{hi:.3f}).",
        f"- Win rate: {_pct(ev['win_rate'])}"
        if ev.get("win_rate") is not None
        else "- Win rate: not generated "
        "(this ablation scored held-out pairs; it did not generate and judge completions).",
        f"- Flags: {', '.join(ev['flags']) or 'none'}.",
    ]
    if "rule" in ev:
        out += [f"- Decision ({ev['rule']}, α = {ev['alpha']}): {ev['decision']}"]
        c = ev.get("configuration")
        if c and c["vs_baseline"]:
            v = c["vs_baseline"]
            if v["ci_low"] is not None and v["ci_high"] is not None:  # the bootstrap's two-sided interval
                test = f"interval on the accuracy difference [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
            elif v["p_value"] is not None:  # the recipe or exact test (one-sided; the recipe rule adds a lower bound)
                test = f"p = {v['p_value']:.3g}, {v['p_adjusted']:.3g} after Holm, one-sided"
                test += f"; lower bound {v['ci_low']:+.3f}" if v["ci_low"] is not None else ""
            else:
                test = "no test"
            out.append(
                f"- Against the baseline ({ev['baseline']}): {v['diff_pairs']:+.0f} pairs ({v['wins']} won, "
                f"{v['losses']} lost; {test}); {'significant' if v['significant'] else 'not significant'}."
            )
        elif c:
            out.append(f"- This is the baseline configuration ({ev['baseline']}).")
        if c and c["seeds"] > 1:
            out.append(
                f"- The configuration over {c['seeds']} seeds: accuracy {c['accuracy']:.3f} "
                f"± {c['accuracy_seed_sd']:.3f} (mean ± sd)."
            )
        if ev["mde"] is not None:
            out.append(f"- Smallest difference this held-out set detects at 80% power: {ev['mde']:.1%}.")
    t = cfg.get("train", {})
    out += [
        "",
        "## Recipe",
        "",
        f"- {knobs}",
        f"- Training: {', '.join(f'{k} = {v}' for k, v in t.items() if k != 'lora')}",
        f"- LoRA: {', '.join(f'{k} = {v}' for k, v in (t.get('lora') or {}).items())}, "
        f"lora_alpha = alpha_over_rank × rank",
        "",
        "## Data",
        "",
    ]
    hashes = cfg.get("data", {}).get("hashes", {})
    for s in ("train", "heldout"):
        src = plan.get("data", {}).get("sources", {}).get(s, "?")
        out.append(f"- {s}: `{src}`, content hash `{hashes.get(s)}` (sha256 of the prompt/chosen/rejected rows)")
    if plan.get("split"):
        sp = plan["split"]
        out.append(
            f"- held-out pairs: {sp['fraction']:g} of the training prompts (seed {sp['seed']}, stratified by "
            f"{', '.join(sp['stratify']) or 'nothing'}); the split is in the results' plan.json"
        )
    v = provenance()
    out += [
        "",
        "## Provenance",
        "",
        f"- Cell `{row['cell_id']}` of matrix `{plan['name']}`; trained with ablate {cfg.get('ablate_version')} "
        f"(commit {plan.get('ablate', {}).get('commit') or 'unknown'}); exported with ablate {v['version']} "
        f"(commit {v['commit'] or 'unknown'}).",
        f"- Model identity: `{cfg.get('model', {})}`"[:2000],
        "- The full record is in the YAML metadata above (`ablate:`) and in `ablate_cell.json`.",
    ]
    return "\n".join(out) + "\n"
