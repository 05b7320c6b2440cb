"""Generation throughput: ablate's path (ablate/worker/generate.py: batched, left-padded, KV cache, LoRA merged
for the final answers) against a plain `model.generate` loop, one prompt at a time, over the same prompts.

    python bench/generation.py --preset cpu-small      # builtin tiny Llama, fp32, CPU (about a minute on 2 cores)
    python bench/generation.py --preset qwen2-0.5b     # random init, real Qwen2-0.5B config, bf16, GPU

Both paths generate greedily with the KV cache and never stop early (no EOS), so they produce the same
number of tokens; tokens/s = generated tokens / wall seconds (after one warm-up call each). Rows: the
plain loop on the LoRA model as training leaves it (PEFT, adapter unmerged), ablate's batched path on the
same unmerged model, and ablate's batched path with the adapter merged (what a cell's final generation
runs). `same tokens` is the share of prompts whose greedy answer equals the plain loop's (padding and
batching change float rounding: 100% in fp32, less in bf16 where near-ties flip). Results: a Markdown
table on stdout and bench/results/generation-<preset>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ablate.worker.generate import generate_hf  # noqa: E402  (torch + transformers only: runs on a bare GPU box)

PRESETS = {
    "cpu-small": {"device": "cpu", "dtype": "float32", "prompts": 64, "new": 64, "batch": 32, "loop_prompts": 64,
                  "lens": (12, 60)},
    "qwen2-0.5b": {"device": "cuda", "dtype": "bfloat16", "prompts": 64, "new": 128, "batch": 32, "loop_prompts": 16,
                   "lens": (32, 256)},
}  # fmt: skip
QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)  # fmt: skip


def build(preset: str, device: str, dtype):
    if preset == "cpu-small":
        from ablate.inputs.models import builtin_model

        return builtin_model("tiny-llama", dtype).to(device), 384
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_05B, pad_token_id=0)).to(dtype)
    return model, QWEN2_05B["vocab_size"]


def with_lora(model, rank=16):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    m = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                    "o_proj"], init_lora_weights=False))  # fmt: skip
    return m.eval()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(model, prompts, new, device):
    out = []
    for p in prompts:
        x = torch.tensor([p], device=device)
        g = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, pad_token_id=0, eos_token_id=None)  # fmt: skip
        out.append(g[0, len(p) :].tolist())
    return out


def timed(fn, device):
    fn()  # warm-up (kernels, caches)
    sync(device)
    t = time.perf_counter()
    res = fn()
    sync(device)
    return res, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="cpu-small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args()
    cfg = PRESETS[a.preset]
    torch.set_num_threads(a.threads)
    device, dtype = cfg["device"], getattr(torch, cfg["dtype"])
    model, vocab = build(a.preset, device, dtype)
    rng = random.Random(0)
    prompts = [
        [rng.randrange(3, min(vocab, 30000)) for _ in range(rng.randint(*cfg["lens"]))] for _ in range(cfg["prompts"])
    ]
    loop_prompts = prompts[: cfg["loop_prompts"]]
    peft = with_lora(model)
    new = cfg["new"]

    def ours(m, ps):
        return lambda: [o.ids for o in generate_hf(m, ps, pad_id=0, eos_id=None, max_new_tokens=new,
                                                   batch_size=cfg["batch"], device=torch.device(device))]  # fmt: skip

    rows = []
    ref, t_loop = timed(lambda: plain_loop(peft, loop_prompts, new, device), device)
    rows.append(("plain model.generate loop, LoRA unmerged", len(loop_prompts), t_loop, 1.0))
    got, t = timed(ours(peft, loop_prompts), device)
    same = sum(x == y for x, y in zip(got, ref)) / len(ref)
    rows.append((f"ablate batched (batch {cfg['batch']}), LoRA unmerged", len(loop_prompts), t, same))
    if len(prompts) > len(loop_prompts):  # the plain loop ran on fewer prompts (it is slow on a GPU)
        _, t_all = timed(ours(peft, prompts), device)
        rows.append((f"ablate batched, LoRA unmerged, {len(prompts)} prompts", len(prompts), t_all, float("nan")))
    merged = peft.merge_and_unload()
    got_m, t_m = timed(ours(merged, prompts), device)
    same_m = sum(x == y for x, y in zip(got_m[: len(ref)], ref)) / len(ref)
    rows.append((f"ablate batched, LoRA merged (final answers), {len(prompts)} prompts", len(prompts), t_m, same_m))

    base_tps = len(loop_prompts) * new / t_loop
    table = ["| path | prompts | new tokens each | seconds | tokens/s | vs plain loop | same tokens as loop |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    result = []
    for name, n, secs, same_share in rows:
        tps = n * new / secs
        same_txt = "–" if same_share != same_share else f"{same_share:.0%}"
        table.append(f"| {name} | {n} | {new} | {secs:.2f} | {tps:,.0f} | {tps / base_tps:.1f}× | {same_txt} |")
        result.append({"path": name, "prompts": n, "new_tokens": new, "seconds": secs, "tokens_per_second": tps,
                       "speedup": tps / base_tps, "same_tokens_as_loop": same_share})  # fmt: skip
    device_name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"generation bench, preset {a.preset}: {device_name}, {cfg['dtype']}, torch {torch.__version__}, "
          f"threads {a.threads}")  # fmt: skip
    print("\n".join(table))
    try:
        import vllm  # type: ignore[import-not-found]  # noqa: F401

        has_vllm = True
    except ImportError:
        has_vllm = False
    print(f"vLLM installed: {has_vllm}")
    import transformers

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"generation-{a.preset}-{_dt.date.today().isoformat()}.json"
    f.write_text(json.dumps({"preset": a.preset, "config": cfg, "device": device_name, "torch": torch.__version__,
                             "transformers": transformers.__version__, "threads": a.threads, "vllm_installed": has_vllm,
                             "rows": result}, indent=1))  # fmt: skip
    print(f"wrote {f}")


if __name__ == "__main__":
    main()
