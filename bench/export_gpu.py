"""Export a bf16 merged model from a GPU-trained cell and record sizes and load times (issue #16).

A ~1.1B-parameter Llama (TinyLlama's shape, random weights, ByT5's byte tokenizer: nothing from the network) is
saved as a local model directory; one SimPO cell trains on it on the GPU (bf16) without Ray, exactly as a
worker would; `ablate export --merge` writes the adapter and the merged weights; then the adapter
(AutoPeftModelForCausalLM) and the merged model (AutoModelForCausalLM) are loaded onto the GPU, timed, and
compared on held-out log-probs.

    python bench/export_gpu.py [--out bench/results] [--layers 22]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--smoke", action="store_true", help="a tiny model on CPU: checks the script, times nothing")
    args = ap.parse_args()
    dev = "cpu" if args.smoke else "cuda"

    import torch
    import yaml
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    from ablate.cluster.runner import runtime_for
    from ablate.handoff.export import export
    from ablate.matrix.plan import make_plan
    from ablate.worker.cell import run_cell

    work = Path(tempfile.mkdtemp(prefix="ablate-export-gpu-"))
    shape = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2)
    if not args.smoke:
        shape = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_hidden_layers=args.layers)
    cfg = LlamaConfig(
        vocab_size=32000,
        **shape,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    t0 = time.perf_counter()
    with torch.device(dev):
        base = LlamaForCausalLM(cfg).to(torch.bfloat16)
    base.save_pretrained(work / "base-model")
    ByT5Tokenizer().save_pretrained(work / "base-model")
    n_params = sum(p.numel() for p in base.parameters())
    del base
    make_s = time.perf_counter() - t0

    matrix = {
        "name": "export-gpu",
        "model": {"path": str(work / "base-model"), "dtype": "bfloat16"},
        "data": {
            "train": {"builtin": "letters", "n": 64, "length_skew": 0.5},
            "heldout": {"builtin": "letters", "n": 32, "length_skew": -0.3},
            "max_length": 96,
        },
        "train": {"epochs": 1, "batch_size": 16, "lr": 1.0e-4, "logging_steps": 1},
        "matrix": {"objective": ["simpo"], "lora_rank": [16], "seed": [0]},
        "resources": {"gpus_per_cell": 0 if args.smoke else 1},
        "storage": str(work / "results"),
    }
    (work / "m.yaml").write_text(yaml.safe_dump(matrix))
    plan = make_plan(work / "m.yaml")
    plan.write()
    cell = plan.cells[0]
    t0 = time.perf_counter()
    out = run_cell(
        cell.config, plan.spec.model, plan.train_rows, plan.heldout_rows, str(plan.results), runtime_for(plan.spec)
    )
    train_s = time.perf_counter() - t0
    assert out["status"] == "done", out

    t0 = time.perf_counter()
    (exp,) = export(plan.results.uri, work / "export", cell=cell.id, merge=True)
    export_s = time.perf_counter() - t0

    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from ablate.inputs.models import load_tokenizer
    from ablate.inputs.tokenize import encode

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def timed_load(fn):
        sync()
        t = time.perf_counter()
        m = fn().to(dev).eval()
        sync()
        return m, time.perf_counter() - t

    tok = load_tokenizer(plan.spec.model)
    pairs = encode(plan.heldout_rows[:8], tok, 96, 48, "bench")

    def logps(model):
        out = []
        with torch.no_grad():
            for p in pairs:
                ids = torch.tensor([p.prompt + p.chosen], device=dev)
                lp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
                out.append(lp.gather(1, ids[0, 1:, None])[:, 0][len(p.prompt) - 1 :].mean().item())
        return out

    merged, merged_load_s = timed_load(
        lambda: AutoModelForCausalLM.from_pretrained(exp.merged, dtype=torch.bfloat16, device_map=dev)
    )
    merged_lp = logps(merged)
    dtype = str(next(merged.parameters()).dtype)
    del merged
    adapter, adapter_load_s = timed_load(
        lambda: AutoPeftModelForCausalLM.from_pretrained(exp.path, dtype=torch.bfloat16, device_map=dev)
    )
    adapter_lp = logps(adapter)
    result = {
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "params": n_params,
        "layers": args.layers,
        "make_base_s": make_s,
        "train_cell_s": train_s,
        "heldout_accuracy": out["heldout_accuracy"],
        "export_merge_s": export_s,
        "merge_only_s": exp.merge_seconds,
        "adapter_folder_mb": (exp.bytes - size(exp.merged)) / 1e6,
        "merged_mb": size(exp.merged) / 1e6,
        "merged_dtype": dtype,
        "merged_load_s": merged_load_s,
        "adapter_load_s": adapter_load_s,
        "max_abs_diff_mean_logp": max(abs(a - b) for a, b in zip(merged_lp, adapter_lp)),
    }
    print(json.dumps(result, indent=2))
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"export-gpu-{time.strftime('%Y%m%d')}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
