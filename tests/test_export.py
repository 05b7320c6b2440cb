"""`ablate export`: the export loads with transformers/PEFT alone, in a fresh process, and reproduces the cell.

The cells are trained in this process without Ray (conftest.train_directly, exactly what a worker runs); the
export runs through the real CLI; the check runs in a new Python process started from another directory, with
only transformers, PEFT, torch and the exported files, and a plain full-logits log-prob loop of its own.
"""

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import ablate_cli, small_matrix, train_directly

CHECK = r"""
import json, sys, torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer
from ablate.inputs.tokenize import encode  # the same truncation rule training used, on the exported tokenizer

folder, rows_file, which = sys.argv[1], sys.argv[2], sys.argv[3]
tok = AutoTokenizer.from_pretrained(folder)
rows = json.load(open(rows_file))
pairs = encode(rows, tok, 96, 48, "check")
models = {"adapter": lambda: AutoPeftModelForCausalLM.from_pretrained(folder),
          "merged": lambda: AutoModelForCausalLM.from_pretrained(folder + "/merged")}
result = {}
for name in which.split(","):
    model = models[name]().eval()
    out = {"dtype": str(next(model.parameters()).dtype)}
    out.update({k: [] for k in ("chosen", "rejected", "chosen_avg", "rejected_avg")})
    with torch.no_grad():
        for p in pairs:
            for side in ("chosen", "rejected"):
                ids = torch.tensor([p.prompt + getattr(p, side)])
                logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
                tgt = ids[0, 1:]
                per_token = logp.gather(1, tgt[:, None])[:, 0][len(p.prompt) - 1 :]  # completion tokens only
                out[side].append(per_token.sum().item())
                out[side + "_avg"].append(per_token.mean().item())
    result[name] = out
print(json.dumps(result))
"""


def fresh_logps(folder, rows, which, tmp_path) -> dict:
    """Log-probs of held-out pairs under the export (`adapter`, `merged` or both), in a new Python process
    started outside the repository."""
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(rows))
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    r = subprocess.run(
        [sys.executable, str(script), str(folder), str(rows_file), which],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def trained(tmp_path, **overrides):
    from ablate.matrix.plan import make_plan

    m = small_matrix(storage=str(tmp_path / "results"), **overrides)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    plan = make_plan(tmp_path / "m.yaml")
    plan.write()
    for c in plan.cells:
        assert train_directly(plan, c)["status"] == "done"
    return plan


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    return tmp, trained(tmp, matrix={"objective": ["dpo", "simpo"], "lora_rank": [4], "seed": [0, 1]})


def test_winner_export_loads_alone_and_reproduces_the_cells_logps(two_seeds, tmp_path):
    from huggingface_hub import ModelCard

    from ablate.verdict.report import build_report

    src, plan = two_seeds
    results = plan.results.uri
    r = ablate_cli("export", results, "--winner", "--merge", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    rep = build_report(results, write=False, plots=False)
    d = rep.decision
    pool = rep.cells[(rep.cells["config"] == d.winner) & (rep.cells["status"] == "done")]
    meta = json.loads((out / "ablate_cell.json").read_text())
    assert meta["id"] in set(pool["cell_id"]), "the export is a seed of the winning configuration"
    # The builtin base travels with the export and the adapter points at it.
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((out / "base").resolve())
    assert (out / "base" / "model.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()

    rows = plan.heldout_rows[:4]
    both = fresh_logps(out, rows, "adapter,merged", tmp_path)
    got, merged = both["adapter"], both["merged"]
    pairs = pd.read_parquet(src / "results" / "t" / "cells" / meta["id"] / "pairs.parquet").sort_values("pair")
    assert got["chosen"] == pytest.approx(list(pairs["chosen_logp_sum"][:4]), abs=2e-4)
    assert got["rejected"] == pytest.approx(list(pairs["rejected_logp_sum"][:4]), abs=2e-4)
    assert merged["dtype"] == "torch.float32"
    assert merged["chosen"] == pytest.approx(got["chosen"], abs=2e-4)
    assert merged["rejected"] == pytest.approx(got["rejected"], abs=2e-4)

    # The card parses with the Hub's own reader and carries the recipe, hashes, identity and evidence.
    card = ModelCard.load(out / "README.md").data.to_dict()
    row = rep.cells.set_index("cell_id").loc[meta["id"]]
    ab = card["ablate"]
    assert card["library_name"] == "peft" and row["objective"] in card["tags"]
    assert ab["recipe"]["objective"] == row["objective"] and ab["recipe"]["lora_rank"] == 4
    assert ab["recipe"]["train"]["batch_size"] == 16 and ab["recipe"]["train"]["lora"]["alpha_over_rank"] == 2.0
    assert ab["data"]["hashes"] == {"train": row["train_data_hash"], "heldout": row["heldout_data_hash"]}
    assert ab["model"]["path"] == "builtin:tiny-llama" and ab["model"]["builtin_seed"] == 1234
    assert ab["version"]["trained"] == "0.1.0" and "commit" in ab["version"]["exported"]
    ev = ab["evidence"]
    assert ev["rule"] == "recipe" and ev["winner"] == d.winner and ev["decision"] == d.reason
    assert ev["heldout_correct"] == row["heldout_correct"] and ev["heldout_pairs"] == 32
    lo, hi = ev["heldout_accuracy_ci95"]
    assert lo < ev["heldout_accuracy"] < hi
    assert ev["configuration"]["seeds"] == 2
    assert card["model-index"][0]["results"][0]["metrics"][0]["value"] == pytest.approx(row["heldout_accuracy"])
    assert ModelCard.load(out / "merged" / "README.md").data.to_dict()["library_name"] == "transformers"


def test_seed_pool_exports_every_seed_and_reports_pvalues(two_seeds, tmp_path):
    from huggingface_hub import ModelCard

    src, plan = two_seeds
    simpo = [c for c in plan.cells if c.params["objective"] == "simpo"]
    r = ablate_cli("export", plan.results.uri, "--cell", simpo[0].id[:6], "--seed-pool", "--out", tmp_path / "pool")
    assert r.returncode == 0, r.stderr
    for c in simpo:
        folder = tmp_path / "pool" / f"seed-{c.params['seed']}"
        assert json.loads((folder / "ablate_cell.json").read_text())["id"] == c.id
        cfg = json.loads((folder / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == str((folder / "base").resolve())
        vs = ModelCard.load(folder / "README.md").data.to_dict()["ablate"]["evidence"]["configuration"]["vs_baseline"]
        assert 0 <= vs["p_adjusted"] <= 1 and vs["wins"] + vs["losses"] <= 32  # a challenger: its test result
    assert "seed-0" in (tmp_path / "pool" / "README.md").read_text()


def test_bf16_merge_matches_base_plus_adapter_within_bf16_tolerance(tmp_path):
    plan = trained(
        tmp_path,
        model={"path": "builtin:tiny-llama", "dtype": "bfloat16"},
        data={
            "train": {"builtin": "letters", "n": 32, "length_skew": 0.5},
            "heldout": {"builtin": "letters", "n": 8, "length_skew": -0.3},
            "max_length": 96,
        },
        matrix={"objective": ["simpo"], "lora_rank": [4], "seed": [0]},
        decision={},
    )
    r = ablate_cli("export", plan.results.uri, "--cell", plan.cells[0].id, "--merge", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    both = fresh_logps(tmp_path / "out", plan.heldout_rows, "adapter,merged", tmp_path)
    adapter, merged = both["adapter"], both["merged"]
    assert merged["dtype"] == "torch.bfloat16"
    # bf16 keeps 8 bits of mantissa: merging rounds W + BA once more. Per-token means agree to a few 1e-2 nats.
    assert merged["chosen_avg"] == pytest.approx(adapter["chosen_avg"], abs=0.05)
    assert merged["rejected_avg"] == pytest.approx(adapter["rejected_avg"], abs=0.05)
    assert merged["chosen_avg"] != adapter["chosen_avg"]  # it really is a separate, rounded model


@pytest.mark.parametrize(
    "args, expect",
    [
        ([], "exactly one of --cell ID or --winner"),
        (["--winner", "--cell", "abc"], "exactly one of --cell ID or --winner"),
        (["--cell", "zzzz"], "--cell zzzz: matches no cell"),
    ],
)
def test_export_mistakes_are_one_clear_error(two_seeds, tmp_path, args, expect):
    _, plan = two_seeds
    r = ablate_cli("export", plan.results.uri, *args, "--out", tmp_path / "out")
    assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_non_empty_folder(two_seeds, tmp_path):
    _, plan = two_seeds
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    r = ablate_cli("export", plan.results.uri, "--winner", "--out", tmp_path / "out")
    assert r.returncode == 2 and "exists and is not an empty folder" in r.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
