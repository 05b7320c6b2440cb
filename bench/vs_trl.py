"""ablate vs TRL, side by side in one run: per-cell throughput, memory and first-step loss, and the
2x2 matrix wall time (issue #7).

    python bench/vs_trl.py --preset cpu-small              # anywhere, a few minutes on 2 CPU cores
    python bench/vs_trl.py --preset qwen2-0.5b             # GPU, bf16 (random init, real Qwen2-0.5B config)
    python bench/vs_trl.py --preset llama-1b               # GPU, bf16 (random init, real Llama-3.2-1B config)
    python bench/vs_trl.py --preset qwen2-0.5b --device cpu --steps 1 --batch-size 1 --short   # smoke test

What runs (every run in its own fresh Python process, so memory peaks and start-up are per run):

1. Per cell, DPO and SimPO at LoRA r16, one after another: ablate (`ablate.api.run` on a one-cell
   matrix, local Ray) and TRL (`DPOTrainer`; SimPO = `trl.experimental.cpo.CPOTrainer(loss_type="simpo",
   cpo_alpha=0)`). Same model weights, same token ids (TRL gets ablate's tokenization pre-tokenized and
   the bench checks the token count against ablate's own), same batches in the same order (TRL's sampler
   is replaced by ablate's permutation), same precision, max_length, LoRA config, optimizer
   (torch AdamW), lr, warmup and schedule, no gradient checkpointing (TRL's default is on), no
   evaluation or checkpointing inside training. One epoch, so DPO's reference forward covers each pair
   exactly once in both systems (ablate precomputes it, TRL runs it inside each step).
   tokens/s = non-padding tokens through the policy / seconds of the training phase (ablate: the
   cell's `train_seconds`; TRL: from `on_train_begin` to `on_train_end`). Peak memory: CUDA max
   allocated, or the process's max RSS on CPU.
2. The whole DPO/SimPO x r16/r8 matrix: one `ablate.api.run` (Ray start, 4 cells, held-out eval,
   report) vs the four TRL runs one after another (each: start Python, load, train, evaluate on the
   held-out pairs, save the adapter). Wall time of the processes.

Results: a Markdown table on stdout and bench/results/<preset>-<date>.json. See bench/README.md for
the FLOPs formula behind the MFU column.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import resource
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# ---------------------------------------------------------------------------------------------
# Presets

QWEN2_05B = dict(  # Qwen/Qwen2-0.5B config.json
    arch="qwen2",
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151936,
    tie_word_embeddings=True,
    rope_theta=1_000_000.0,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
)
LLAMA32_1B = dict(  # meta-llama/Llama-3.2-1B config.json (rope scaling omitted: irrelevant below 8k tokens)
    arch="llama",
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=8192,
    vocab_size=128256,
    tie_word_embeddings=True,
    rope_theta=500_000.0,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    head_dim=64,
)

PRESETS = {
    "cpu-small": dict(
        model="builtin:tiny-llama",
        dtype="float32",
        data="letters",
        batch_size=16,
        steps=32,
        heldout=128,
        max_length=128,
        lr=1e-3,
        beta_dpo=0.1,
        beta_simpo=2.0,
        gamma=0.5,
        matrix_gpus_per_cell=0.0,
    ),
    "qwen2-0.5b": dict(
        model=QWEN2_05B,
        dtype="bfloat16",
        data="long",
        batch_size=8,
        steps=20,
        heldout=64,
        max_length=1024,
        lr=5e-5,
        beta_dpo=0.1,
        beta_simpo=2.0,
        gamma=0.5,
        matrix_gpus_per_cell=0.25,
    ),
    "llama-1b": dict(
        model=LLAMA32_1B,
        dtype="bfloat16",
        data="long",
        batch_size=8,
        steps=20,
        heldout=64,
        max_length=1024,
        lr=5e-5,
        beta_dpo=0.1,
        beta_simpo=2.0,
        gamma=0.5,
        matrix_gpus_per_cell=0.5,
    ),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALPHA_OVER_RANK = 2.0
WARMUP_RATIO = 0.1
SCHEDULER = "cosine"
LOGGING_STEPS = 5
SEED = 0


# ---------------------------------------------------------------------------------------------
# Data


def long_rows(n: int, seed: int, split: str, short: bool) -> list[dict]:
    """Byte-level text with realistic lengths: prompts and completions ~256 tokens each (96-400),
    or ~24 (12-40) with --short. Chosen answers lean on letters a-m, rejected on n-z."""
    rng = random.Random(f"bench/{split}/{seed}")
    lo, mid, hi, sd = (12, 24, 40, 6) if short else (96, 256, 400, 64)

    def text(n_bytes: int, favoured: str, other: str) -> str:
        out = []
        while sum(len(w) + 1 for w in out) < n_bytes:
            w = "".join(
                rng.choice(favoured) if rng.random() < 0.8 else rng.choice(other) for _ in range(rng.randint(2, 8))
            )
            out.append(w)
        return " ".join(out)[:n_bytes]

    length = lambda: int(min(hi, max(lo, rng.gauss(mid, sd))))  # noqa: E731
    good, bad = string.ascii_lowercase[:13], string.ascii_lowercase[13:]
    rows = []
    for i in range(n):
        prompt = f"Q{split}{i}: " + text(length(), string.ascii_lowercase, string.ascii_lowercase)
        rows.append(
            {
                "prompt": prompt[: max(lo, len(prompt))] + "\n",
                "chosen": text(length(), good, bad),
                "rejected": text(length(), bad, good),
            }
        )
    return rows


def tokenize(rows: list[dict], tok, max_length: int, prompt_budget: int) -> list[list[list[int]]]:
    """ablate's documented rule (README, Truncation): BOS (if any) + prompt; completion + EOS. The bench
    keeps every pair below the limits so neither system truncates (their truncation rules differ)."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    out = []
    for r in rows:
        p = bos + tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(r["chosen"], add_special_tokens=False)["input_ids"] + eos
        j = tok(r["rejected"], add_special_tokens=False)["input_ids"] + eos
        if len(p) > prompt_budget or len(p) + max(len(c), len(j)) > max_length:
            raise SystemExit(
                f"bench data would be truncated ({len(p)}+{max(len(c), len(j))} > {max_length}); raise max_length"
            )
        out.append([p, c, j])
    return out


def epoch_order(n: int, seed: int) -> list[int]:
    """ablate's batch order for the first epoch (torch.randperm with a generator seeded by the cell's seed)."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def padding_stats(toks, order, micro: int) -> dict:
    """Both systems right-pad each micro-batch's 2B sequences to its longest one."""
    real = padded = 0
    for s in range(0, len(order), micro):
        lens = [len(toks[i][0]) + len(toks[i][k]) for i in order[s : s + micro] for k in (1, 2)]
        real += sum(lens)
        padded += max(lens) * len(lens)
    return {"nonpad_tokens": real, "padded_tokens": padded, "padding_fraction": 1 - real / padded}


# ---------------------------------------------------------------------------------------------
# FLOPs (see bench/README.md)


def model_dims(cfg: dict) -> dict:
    d, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or d // nh
    return dict(
        d=d,
        L=cfg["num_hidden_layers"],
        nh=nh,
        nkv=cfg["num_key_value_heads"],
        hd=hd,
        I=cfg["intermediate_size"],
        V=cfg["vocab_size"],
    )


def flops(cfg: dict, seq_lens: list[int], rank: int, with_reference: bool) -> float:
    """Model FLOPs of one LoRA training pass over sequences of these (unpadded) lengths.

    Per sequence of s tokens, with N = base matmul weights (attention + MLP projections of every layer,
    plus the LM head; embeddings are a lookup) and N_lora = LoRA A and B weights:
      forward            2(N + N_lora)s + 2·L·nh·hd·s²   (causal attention: QKᵀ and AV, half of the s² scores each)
      backward (act.)    2(N + N_lora)s + 4·L·nh·hd·s²   (gradients w.r.t. activations only; the base is frozen)
      LoRA weight grads  2·N_lora·s
      DPO reference fwd  2·N·s + 2·L·nh·hd·s²          (adapter off, no grad; once per pair per epoch)
    Padding is not counted: the same useful FLOPs are credited to both systems.
    """
    m = model_dims(cfg)
    d, L, nh, nkv, hd, I, V = (m[k] for k in ("d", "L", "nh", "nkv", "hd", "I", "V"))  # noqa: E741 - I: the MLP width, as in the papers
    q, kv = nh * hd, nkv * hd
    n_base = L * (d * q + 2 * d * kv + q * d + 3 * d * I) + d * V
    lora_in_out = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d)}
    n_lora = L * sum(rank * (a + b) for a, b in (lora_in_out[t] for t in TARGETS))
    total = 0.0
    for s in seq_lens:
        attn = 2 * L * q * s * s
        total += (2 * (n_base + n_lora) * s + attn) + (2 * (n_base + n_lora) * s + 2 * attn) + 2 * n_lora * s
        if with_reference:
            total += 2 * n_base * s + attn
    return total


# ---------------------------------------------------------------------------------------------
# Workers (each runs in its own process)


def _peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def worker_trl(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import Sampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    device, dtype = job["device"], getattr(torch, job["dtype"])
    t_start = time.perf_counter()
    if job["model"].startswith("builtin:"):
        from ablate.inputs.models import builtin_model, builtin_tokenizer  # the same weights ablate's cells start from

        model, tok = builtin_model(job["model"].removeprefix("builtin:"), dtype), builtin_tokenizer()
    else:
        model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=dtype)
        tok = AutoTokenizer.from_pretrained(job["model"])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device)
    data = json.loads(Path(job["tokens"]).read_text())
    train_toks, held_toks = data["train"], data["heldout"]
    objective, rank = job["objective"], job["rank"]
    seed, micro = job["seed"], job["micro_batch"]
    total_steps = job["steps"]

    class AblateOrder(Sampler):
        """ablate's permutation, one per epoch from one seeded generator: the same batches in the same order."""

        def __init__(self, n):
            self.n, self.gen = n, torch.Generator().manual_seed(seed)

        def __len__(self):
            return self.n

        def __iter__(self):
            return iter(torch.randperm(self.n, generator=self.gen).tolist())

    class Clock(TrainerCallback):
        def __init__(self):
            self.begin = self.end = None
            self.logs = []

        def _sync(self):
            if device == "cuda":
                torch.cuda.synchronize()

        def on_train_begin(self, args, state, control, **kw):
            self._sync()
            self.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self._sync()
            self.end = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append({**(logs or {}), "step": state.global_step})

    common = dict(
        output_dir=str(Path(job["workdir"]) / "trl-out"),
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=job["eval_batch_size"],
        gradient_accumulation_steps=job["grad_accum"],
        max_steps=total_steps,
        learning_rate=job["lr"],
        lr_scheduler_type=SCHEDULER,
        warmup_steps=int(WARMUP_RATIO * total_steps),
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_steps=LOGGING_STEPS,
        logging_first_step=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        bf16=job["dtype"] == "bfloat16",
        gradient_checkpointing=False,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        max_length=job["max_length"],
    )
    lora = LoraConfig(
        r=rank, lora_alpha=ALPHA_OVER_RANK * rank, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    clock = Clock()
    if objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        class Trainer(DPOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset  # already tokenized exactly as ablate tokenizes

            def _get_train_sampler(self, train_dataset=None):
                return AblateOrder(len(train_dataset if train_dataset is not None else self.train_dataset))

        ds = lambda toks: Dataset.from_dict(
            {
                "prompt_ids": [t[0] for t in toks],
                "chosen_ids": [t[1] for t in toks],  # noqa: E731
                "rejected_ids": [t[2] for t in toks],
            }
        )
        cfg = DPOConfig(**common, beta=job["beta"], loss_type=["sigmoid"], precompute_ref_log_probs=False)
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        class Trainer(CPOTrainer):
            def tokenize_row(self, feature, model=None):
                p, c, r = feature["p_tok"], feature["c_tok"], feature["r_tok"]
                out = {"prompt_input_ids": p, "prompt_attention_mask": [1] * len(p)}
                for side, ids in (("chosen", c), ("rejected", r)):
                    out[f"{side}_input_ids"] = p + ids
                    out[f"{side}_attention_mask"] = [1] * (len(p) + len(ids))
                    out[f"{side}_labels"] = [-100] * len(p) + ids
                return out

            def _get_train_sampler(self, train_dataset=None):
                return AblateOrder(len(train_dataset if train_dataset is not None else self.train_dataset))

        ds = lambda toks: Dataset.from_dict(
            {
                "prompt": ["x"] * len(toks),
                "chosen": ["y"] * len(toks),  # noqa: E731
                "rejected": ["z"] * len(toks),
                "p_tok": [t[0] for t in toks],
                "c_tok": [t[1] for t in toks],
                "r_tok": [t[2] for t in toks],
            }
        )
        cfg = CPOConfig(**common, beta=job["beta"], loss_type="simpo", simpo_gamma=job["gamma"], cpo_alpha=0.0)
    trainer = Trainer(
        model=model,
        args=cfg,
        train_dataset=ds(train_toks),
        eval_dataset=ds(held_toks) if job["evaluate"] else None,
        processing_class=tok,
        peft_config=lora,
        callbacks=[clock],
    )
    # What TRL will actually feed the model: check it is ablate's token ids.
    tds = trainer.train_dataset
    if objective == "dpo":
        seen = [[a, b, c] for a, b, c in zip(tds["prompt_ids"], tds["chosen_ids"], tds["rejected_ids"])]
    else:
        p_len = [len(x) for x in tds["prompt_input_ids"]]
        seen = [
            [ci[:n], ci[n:], ri[n:]] for n, ci, ri in zip(p_len, tds["chosen_input_ids"], tds["rejected_input_ids"])
        ]
    same_ids = seen == train_toks
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # model weights stay allocated, so they count, as in ablate
    t_train = time.perf_counter()
    trainer.train()
    train_call = time.perf_counter() - t_train
    peak = _peak_mb(device)
    out = {
        "system": "trl",
        "objective": objective,
        "rank": rank,
        "train_seconds": clock.end - clock.begin,
        "train_call_seconds": train_call,
        "peak_memory_mb": peak,
        "same_token_ids": same_ids,
        "steps": trainer.state.global_step,
        "logs": clock.logs,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }
    if job["evaluate"]:
        out["eval"] = trainer.evaluate()
        trainer.save_model(str(Path(job["workdir"]) / f"trl-adapter-{objective}-r{rank}"))
    out["process_seconds"] = time.perf_counter() - t_start
    return out


def worker_ablate(job: dict) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import ablate.api

    t0 = time.perf_counter()
    cells, _pairs = ablate.api.run(job["matrix"], results=job["results"], num_cpus=job.get("num_cpus"))
    wall = time.perf_counter() - t0
    results = Path(job["results"]) / job["name"]
    ref_tasks = []
    try:  # DPO's shared reference task (ablate >= 0b384ee): its duration, imports and model load included
        import ray

        ref_tasks = [e["dur"] / 1e6 for e in ray.timeline() if "ablate-reference" in str(e.get("cat", ""))]
    except Exception:  # noqa: BLE001 - diagnostic only
        pass
    rows = []
    for rec in cells.to_dict("records"):
        log = results / "cells" / rec["cell_id"] / "train_log.jsonl"
        logs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.is_file() else []
        cj = results / "cells" / rec["cell_id"] / "cell.json"
        info = json.loads(cj.read_text()) if cj.is_file() else {}
        rec["reference_seconds"] = info.get("reference_seconds")
        rec["setup_seconds"], rec["kept_base"] = info.get("setup_seconds"), info.get("kept_base")
        clean = {}
        for k, v in rec.items():
            v = v.item() if hasattr(v, "item") else v  # numpy scalars
            if isinstance(v, float) and v != v or not isinstance(v, (str, int, float, bool)):
                v = None  # NaN, pd.NA
            clean[k] = v
        rows.append(clean | {"logs": logs})
    return {"system": "ablate", "run_seconds": wall, "cells": rows, "reference_task_seconds": ref_tasks}


def worker_profile(job: dict) -> dict:
    """Where a DPO cell's time goes, phase by phase, in the textbook layout ([prompt, completion] rows, full
    logits) that ablate's forward.py improves on (diagnostic: uses ablate internals, so it may need updating
    when they move; the comparison itself uses only ablate.api.run).

    Cold model load, the reference pass over the train pairs (what the shared reference task computes),
    then a few training steps in ablate's order timed per phase: collate, backbone forward, LM head +
    log-softmax, backward, optimizer. Also times the LM head forward+backward on every position (what
    ablate does) against completion positions only (what TRL's fused head does on GPU)."""
    import torch

    torch.set_num_threads(job["threads"])
    import warnings

    warnings.filterwarnings("ignore")
    from peft import LoraConfig, get_peft_model

    from ablate import objectives
    from ablate.inputs.models import load_model, load_tokenizer
    from ablate.inputs.tokenize import encode
    from ablate.matrix.plan import make_plan
    from ablate.worker.forward import Forward
    from ablate.worker.logps import all_logps
    from ablate.worker.losses import LogProbs, loss_for
    from ablate.worker.textbook import collate, token_logprobs

    dev = torch.device(job["device"])
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)  # noqa: E731

    def clock(fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t

    plan = make_plan(job["matrix"], results=job["results"])
    cell = plan.cells[0]
    cfg = cell.config.to_json()
    d, t, p = cfg["data"], cfg["train"], cfg["params"]
    tok, t_tok = clock(lambda: load_tokenizer(plan.spec.model))
    pairs, t_enc = clock(lambda: encode(plan.train_rows, tok, d["max_length"], d["prompt_budget"], "train"))
    model, t_load = clock(lambda: load_model(plan.spec.model, dev).eval())
    pad = tok.pad_token_id
    with torch.no_grad():
        ref, t_ref = clock(lambda: all_logps(Forward(model), pairs, t["eval_batch_size"], pad, dev, True))
    model = get_peft_model(
        model,
        LoraConfig(
            r=p["lora_rank"],
            lora_alpha=t["lora"]["alpha_over_rank"] * p["lora_rank"],
            lora_dropout=0.0,
            target_modules=t["lora"]["targets"],
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    base = model.get_base_model()
    params = [x for x in model.parameters() if x.requires_grad]
    opt = torch.optim.AdamW(params, lr=t["lr"])
    bs = t["batch_size"]
    order = epoch_order(len(pairs), int(p["seed"]))
    n_steps = min(job["profile_steps"], len(order) // bs)
    phases = {
        k: 0.0
        for k in (
            "collate",
            "backbone_forward",
            "head_logsoftmax_forward",
            "backward",
            "optimizer",
            "head_all_positions_fwd_bwd",
            "head_completion_only_fwd_bwd",
        )
    }
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    objective, needs_ref = loss_for(p["objective"]), objectives.get(p["objective"]).reference
    batches = [order[j * bs : (j + 1) * bs] for j in range(max(1, n_steps))]
    for i in range(n_steps + 1):  # the first pass warms up (on the first batch) and is not counted
        idx = batches[max(0, i - 1)]
        b, t1 = clock(lambda: collate(pairs, idx, pad).to(dev))
        h, t2 = clock(
            lambda: (
                base.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).last_hidden_state
            )
        )
        (total, avg, n), t3 = clock(lambda: token_logprobs(base.lm_head(h), b.input_ids, b.loss_mask))
        B = len(idx)
        ix = torch.tensor(idx)
        c = LogProbs(total[:B], avg[:B], ref["c_sum"][ix].to(dev) if needs_ref else None, n[:B])
        r = LogProbs(total[B:], avg[B:], ref["r_sum"][ix].to(dev) if needs_ref else None, n[B:])
        loss = objective(c, r, p)[0]
        _, t4 = clock(lambda: (loss.sum() / B).backward())
        h = None  # free the activations before the next phase

        def _step():
            torch.nn.utils.clip_grad_norm_(params, t["max_grad_norm"])
            opt.step()
            opt.zero_grad(set_to_none=True)

        _, t5 = clock(_step)
        # The LM head alone, forward + backward, on every position vs on completion positions only.
        with torch.no_grad():
            hd = base.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).last_hidden_state
        hd.requires_grad_(True)

        def head_all():
            tot = token_logprobs(base.lm_head(hd), b.input_ids, b.loss_mask)[0]
            tot.sum().backward()

        def head_completion():
            m = b.loss_mask[:, 1:].bool()
            lg = base.lm_head(hd[:, :-1][m]).float()
            lp = lg.log_softmax(-1).gather(1, b.input_ids[:, 1:][m].unsqueeze(1)).squeeze(1)
            lp.sum().backward()

        _, t6 = clock(head_all)
        hd.grad = None
        _, t7 = clock(head_completion)
        hd = None
        if i:
            for k, v in zip(phases, (t1, t2, t3, t4, t5, t6, t7)):
                phases[k] += v / n_steps
    V = base.lm_head.weight.shape[0]
    lens = [len(x.prompt) + len(y) for x in pairs for y in (x.chosen, x.rejected)]
    comp = sum(len(x.chosen) + len(x.rejected) for x in pairs)
    return {
        "tokenizer_load_seconds": t_tok,
        "encode_seconds": t_enc,
        "model_load_seconds": t_load,
        "reference_forward_train_seconds": t_ref,
        "profile_steps": n_steps,
        "per_step_seconds": phases,
        "completion_token_fraction": comp / sum(lens),
        "vocab_size": V,
        "logits_mb_per_step": 2 * bs * max(lens) * V * base.lm_head.weight.element_size() / 2**20,
        "peak_memory_mb": _peak_mb(dev.type),
    }


def worker_peak(job: dict) -> dict:
    """Dense matmul peak in the preset's dtype: 8192³ on CUDA (bf16 for the GPU presets), 2048³ on CPU at
    the bench's thread count."""
    import torch

    torch.set_num_threads(job["threads"])
    dt = getattr(torch, job["dtype"])
    if job["device"] == "cuda":
        n, dev, reps = 8192, "cuda", 50
    else:
        n, dev, reps = 2048, "cpu", 5
    a, b = torch.randn(n, n, dtype=dt, device=dev), torch.randn(n, n, dtype=dt, device=dev)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / reps)
    return {
        "peak_flops": 2 * n**3 / best,
        "dtype": str(dt).removeprefix("torch."),
        "n": n,
        "device_name": torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or "cpu",
    }


def spawn(kind: str, job: dict, workdir: Path, env: dict) -> tuple[dict, float]:
    """Run a worker in a fresh Python process; return its result and the process wall time."""
    jf = workdir / f"job-{kind}-{time.monotonic_ns()}.json"
    of = jf.with_suffix(".out.json")
    jf.write_text(json.dumps(job))
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--job", str(jf), "--result", str(of)],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    if p.returncode != 0 or not of.is_file():
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-8000:])
        raise SystemExit(f"{kind} worker failed (exit {p.returncode}); job {jf}")
    return json.loads(of.read_text()), wall


# ---------------------------------------------------------------------------------------------
# Driver


def build_model_dir(spec: dict, dtype: str, path: Path):
    """Random-initialised model with the real HF configuration, saved with a byte-level tokenizer (ids stay
    far inside the real vocabulary; the embedding and LM head keep their real size)."""
    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = dict(spec)
    arch = spec.pop("arch")
    if arch == "qwen2":
        # transformers 5 forces Qwen2Tokenizer on a qwen2 config whatever tokenizer_config.json says, so give
        # it one: byte-level BPE with no merges (one token per byte, ids 0-255, <|endoftext|> = 256).
        from transformers import Qwen2Tokenizer
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        vocab = {ch: b for b, ch in bytes_to_unicode().items()}
        vocab["<|endoftext|>"] = 256
        tok = Qwen2Tokenizer(vocab=vocab, merges=[])
    else:
        tok = ByT5Tokenizer()
    cfg_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    cfg = cfg_cls(**spec, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None, dtype=dtype)
    torch.manual_seed(1234)
    with torch.device("cpu"):
        model = model_cls(cfg).to(getattr(torch, dtype))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    return cfg.to_dict()


def write_matrix(
    path: Path,
    name: str,
    model: str,
    dtype: str,
    data: dict,
    P: dict,
    objectives,
    ranks,
    steps: int,
    resources: dict,
    seeds=(SEED,),
) -> None:
    import yaml

    m = {
        "name": name,
        "model": {"path": model, "dtype": dtype},
        "data": data,
        "train": {
            "epochs": 1,
            "batch_size": P["batch_size"],
            "grad_accum": P["grad_accum"],
            "lr": P["lr"],
            "warmup_ratio": WARMUP_RATIO,
            "scheduler": SCHEDULER,
            "logging_steps": LOGGING_STEPS,
            "eval_steps": steps,
            "eval_batch_size": P["eval_batch_size"],
            "lora": {"alpha_over_rank": ALPHA_OVER_RANK, "dropout": 0.0, "targets": TARGETS},
        },
        "matrix": {"objective": list(objectives), "lora_rank": list(ranks), "seed": list(seeds)},
        "objectives": {"dpo": {"beta": P["beta_dpo"]}, "simpo": {"beta": P["beta_simpo"], "gamma": P["gamma"]}},
        "resources": resources,
        "decision": {"baseline": {"objective": objectives[0], "lora_rank": ranks[0]}, "replicate": "off"},
    }
    path.write_text(yaml.safe_dump(m, sort_keys=False, allow_unicode=True))


def machine_info(device: str) -> dict:
    import peft
    import ray
    import torch
    import transformers
    import trl

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "ray": ray.__version__,
        "device": device,
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["ablate_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        pass
    return info


def step1(logs: list[dict]) -> dict:
    row = next((r for r in logs if r.get("step") == 1 and "loss" in r), None)
    if row is None:
        return {}
    return {"loss": row["loss"], "logps_chosen": row.get("logps/chosen"), "logps_rejected": row.get("logps/rejected")}


def fmt(x, spec=".1f"):
    return "–" if x is None else format(x, spec)


# ---------------------------------------------------------------------------------------------
# Matrices: ablate (one process per run, each way of running cells) against TRL's runs in one process

MATRICES = {"2x2": dict(ranks=(16, 8), seeds=(SEED,)), "8-cell": dict(ranks=(16, 8), seeds=(SEED, SEED + 1))}
# How ablate runs the cells (resources fields; none of them is part of a cell id)
MODES = {
    "off": {"actors": "off"},  # a Ray task per cell (ablate before issue #14)
    "auto": {"actors": "auto", "pack": "off"},  # long-lived trainer actors, one per slot, a cell per pass
    "pack": {"actors": "auto", "pack": "auto"},  # the default: actors, several cells per forward pass
}
MODE_NAMES = {
    "off": "a Ray task per cell (actors: off)",
    "auto": "trainer actors, a cell per pass (pack: off)",
    "pack": "trainer actors, cells packed (default)",
}


def run_matrices(a, work: Path, env: dict, model_path: str, P: dict, data: dict, steps: int, res_m: dict,
                 base_job: dict, knobs: dict) -> dict:  # fmt: skip
    """Each matrix size, `--matrix-repeats` times, the systems side by side within each repeat (ablate in each
    mode, then TRL's runs in one process; for 2x2 in the first repeat also TRL with a process per run).
    Replication is off, so ablate trains exactly the cells TRL does."""
    modes = [m for m in a.ablate_modes.split(",") if m]
    out: dict = {}
    for size in [x for x in a.matrices.split(",") if x]:
        ranks, seeds = MATRICES[size]["ranks"], MATRICES[size]["seeds"]
        n_cells = 2 * len(ranks) * len(seeds)
        trl_jobs = [
            {**base_job, **knobs[o], "objective": o, "rank": r, "seed": sd, "evaluate": True}
            for o in ("dpo", "simpo")
            for r in ranks
            for sd in seeds
        ]
        rec: dict = {"cells": n_cells, "ablate": {m: [] for m in modes}, "ablate_runs": {m: [] for m in modes},
                     "trl_one_process": [], "trl_processes": [], "ablate_resources": res_m}  # fmt: skip
        for rep in range(a.matrix_repeats):
            for mode in modes:
                name = f"m{size.replace('-', '')}-{mode}-{rep}"
                write_matrix(work / f"{name}.yaml", name, model_path, P["dtype"], data, P, ["dpo", "simpo"], ranks,
                             steps, {**res_m, **MODES[mode]}, seeds=seeds)  # fmt: skip
                ab, wall = spawn(
                    "ablate", {"matrix": str(work / f"{name}.yaml"), "results": str(work / "results"), "name": name},
                    work, env,
                )  # fmt: skip
                bad = [c for c in ab["cells"] if c["status"] != "done"]
                if bad or len(ab["cells"]) != n_cells:
                    raise SystemExit(f"ablate {size} ({mode}): {len(bad)} failed of {len(ab['cells'])}: {bad[:1]}")
                rec["ablate"][mode].append(wall)
                rec["ablate_runs"][mode].append({
                    "process_seconds": wall,
                    "api_run_seconds": ab["run_seconds"],
                    "train_seconds": sum(c["train_seconds"] for c in ab["cells"]),
                    "setup_seconds": sum(c.get("setup_seconds") or 0.0 for c in ab["cells"]),
                    "kept_base": sum(bool(c.get("kept_base")) for c in ab["cells"]),
                })  # fmt: skip
                print(f"matrix {size} run {rep + 1}: ablate {mode} {wall:.1f}s", flush=True)
            _, trl_one = spawn("trl-seq", {"jobs": trl_jobs}, work, env)
            rec["trl_one_process"].append(trl_one)
            print(f"matrix {size} run {rep + 1}: TRL, {n_cells} runs in one process {trl_one:.1f}s", flush=True)
            if size == "2x2" and rep == 0 and not a.skip_trl_processes:
                total = 0.0
                for job in trl_jobs:
                    total += spawn("trl", job, work, env)[1]
                rec["trl_processes"].append(total)
                print(f"matrix {size}: TRL, a process per run {total:.1f}s", flush=True)
        rec["ratio_vs_one_process"] = {
            m: [w / t for w, t in zip(rec["ablate"][m], rec["trl_one_process"])] for m in modes
        }
        out[size] = rec
    return out


def _span(xs: list[float], spec: str = ".1f") -> str:
    if not xs:
        return "–"
    lo, hi = min(xs), max(xs)
    return format(lo, spec) if f"{lo:{spec}}" == f"{hi:{spec}}" else f"{lo:{spec}}–{hi:{spec}}"


def matrix_markdown(mxs: dict) -> str:
    lines = [
        "| matrix | system | wall time (s), min–max | vs TRL in one process (per repeat) |",
        "|---|---|---:|---:|",
    ]
    for size, mx in mxs.items():
        label = f"{size} ({mx['cells']} cells)"
        for mode, walls in mx["ablate"].items():
            lines.append(
                f"| {label} | ablate, {MODE_NAMES.get(mode, mode)} | {_span(walls)} | "
                f"{_span(mx['ratio_vs_one_process'][mode], '.2f')}× |"
            )
        lines.append(f"| {label} | TRL, {mx['cells']} runs in one process | {_span(mx['trl_one_process'])} | 1.00× |")
        if mx.get("trl_processes"):
            lines.append(f"| {label} | TRL, a process per run | {_span(mx['trl_processes'])} | – |")
    return "\n".join(lines)


def worker_objectives(job: dict) -> dict:
    """Where the training loop's time goes for DPO and SimPO (ablate's own Recipe.train, phases timed by wrapping
    the recipe's collate, forward, loss, backward, clip and optimizer calls; DPO with its reference precomputed,
    as in a matrix). Each objective trains `repeats` times alternately; the fastest run is kept."""
    import torch

    torch.set_num_threads(job["threads"])
    import warnings

    warnings.filterwarnings("ignore")
    import ablate.worker.recipe as R
    from ablate.cluster.runner import runtime_for
    from ablate.matrix.plan import make_plan
    from ablate.worker.logps import device_for, reference_logps

    plan = make_plan(job["matrix"], results=job["results"])
    rt = runtime_for(plan.spec)
    cells = {c.config.objective: c.config for c in plan.cells}
    ref = reference_logps(cells["dpo"], plan.spec.model, plan.train_rows, plan.heldout_rows, rt)
    dev = device_for(rt)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)  # noqa: E731

    class NoHooks:
        def before_batch(self, micro):
            pass

        def after_step(self, recipe, state, total):
            pass

    best: dict = {}
    for _ in range(job["repeats"]):
        for obj in ("dpo", "simpo"):
            r = R.Recipe(cells[obj], plan.spec.model, rt).setup(plan.train_rows, plan.heldout_rows, ref)
            phases: dict = {}

            def timed(name, fn):
                def run(*args, **kw):
                    sync()
                    t = time.perf_counter()
                    out = fn(*args, **kw)
                    sync()
                    phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
                    return out

                return run

            saved = (R.collate, torch.Tensor.backward, torch.nn.utils.clip_grad_norm_)
            r.policy, r.loss, r.opt.step = (
                timed("forward", r.policy),
                timed("loss", r.loss),
                timed("optimizer", r.opt.step),
            )
            R.collate, torch.Tensor.backward = timed("collate", R.collate), timed("backward", torch.Tensor.backward)
            torch.nn.utils.clip_grad_norm_ = timed("clip", torch.nn.utils.clip_grad_norm_)
            try:
                sync()
                t0 = time.perf_counter()
                state = r.train(R.TrainState(), NoHooks())
                sync()
                total = time.perf_counter() - t0
            finally:
                R.collate, torch.Tensor.backward, torch.nn.utils.clip_grad_norm_ = saved
            phases["other"] = total - sum(phases.values())
            if obj not in best or total < best[obj]["seconds"]:
                best[obj] = {"seconds": total, "tokens": state.tokens, "steps": state.step, "phases": phases}
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    ap.add_argument("--steps", type=int, help="optimizer steps (one epoch: train pairs = steps × batch size)")
    ap.add_argument("--batch-size", type=int, help="pairs per step (= micro-batch, grad_accum 1)")
    ap.add_argument("--heldout", type=int, help="held-out pairs")
    ap.add_argument("--short", action="store_true", help="~24-token prompts/completions instead of ~256 (smoke tests)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, help="CPU threads per run (default: all cores for a lone run)")
    ap.add_argument("--repeats", type=int, default=1, help="per-cell runs per system; the fastest is reported")
    ap.add_argument("--skip-cells", action="store_true")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--matrix-gpus-per-cell", type=float, help="ablate resources.gpus_per_cell in the matrix run")
    ap.add_argument("--matrices", default="2x2,8-cell", help="matrix sizes to time: 2x2 (4 cells), 8-cell (+ 2 seeds)")
    ap.add_argument("--ablate-modes", default=",".join(MODES), help=f"how ablate runs cells, any of {list(MODES)}")
    ap.add_argument("--matrix-repeats", type=int, default=2, help="runs of each matrix per system (ranges reported)")
    ap.add_argument("--skip-trl-processes", action="store_true", help="no 2x2 TRL run with a process per cell")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for the JSON (default bench/results)")
    ap.add_argument("--tag", default="", help="suffix for the JSON file name")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument(
        "--worker", choices=["trl", "trl-seq", "ablate", "peak", "profile", "objectives"], help=argparse.SUPPRESS
    )
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        job = json.loads(Path(a.job).read_text())
        res = {
            "trl": worker_trl,
            "trl-seq": lambda j: [worker_trl(x) for x in j["jobs"]],
            "ablate": worker_ablate,
            "peak": worker_peak,
            "profile": worker_profile,
            "objectives": worker_objectives,
        }[a.worker](job)
        Path(a.result).write_text(json.dumps(res, default=str))
        return 0

    import torch
    from transformers import AutoTokenizer

    P = dict(PRESETS[a.preset])
    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if a.preset != "cpu-small" and device == "cpu" and not a.short:
        print(
            "note: a GPU preset on CPU at full length is very slow; use --steps 1 --batch-size 1 --short to smoke-test",
            file=sys.stderr,
        )
    if a.steps:
        P["steps"] = a.steps
    if a.batch_size:
        P["batch_size"] = a.batch_size
    if a.heldout:
        P["heldout"] = a.heldout
    P.update(grad_accum=1, eval_batch_size=32)
    ncpu = os.cpu_count() or 1
    # Per-cell runs: 1 thread on CPU (ablate's default cpus_per_cell; tiny models gain nothing from more,
    # and a shared machine makes spinning OpenMP threads noisy). The TRL matrix runs get every core.
    threads = a.threads or (1 if device == "cpu" else min(8, ncpu))
    steps, bs = P["steps"], P["batch_size"]
    n_train = steps * bs

    env = dict(
        os.environ,
        RAY_USAGE_STATS_ENABLED="0",
        TOKENIZERS_PARALLELISM="false",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    work = Path(tempfile.mkdtemp(prefix=f"ablate-bench-{a.preset}-"))
    print(f"# ablate vs TRL · preset {a.preset} · {device} · work dir {work}", flush=True)
    try:
        # Model
        if isinstance(P["model"], str):
            from ablate.inputs.models import builtin_model

            model_path = P["model"]
            model_cfg = builtin_model(model_path.removeprefix("builtin:")).config.to_dict()
        else:
            t = time.perf_counter()
            model_path = str(work / "model")
            model_cfg = build_model_dir(P["model"], P["dtype"], Path(model_path))
            print(f"built {a.preset} (random init) in {time.perf_counter() - t:.0f}s", flush=True)

        # Data: the rows ablate reads, and ablate's tokenization of them
        if P["data"] == "letters":
            data = {
                "train": {"builtin": "letters", "n": n_train, "length_skew": 0.5, "signal": 0.8, "seed": 0},
                "heldout": {"builtin": "letters", "n": P["heldout"], "length_skew": -0.3, "signal": 0.8, "seed": 0},
                "max_length": P["max_length"],
            }
            write_matrix(
                work / "probe.yaml",
                "probe",
                model_path,
                P["dtype"],
                data,
                P,
                ["simpo"],
                [16],
                steps,
                {"cpus_per_cell": 1},
            )
            from ablate.matrix.plan import make_plan

            plan = make_plan(work / "probe.yaml", results=work / "probe-results")
            train_rows, held_rows = plan.train_rows, plan.heldout_rows
            from ablate.inputs.models import builtin_tokenizer

            tok = builtin_tokenizer()
        else:
            train_rows = long_rows(n_train, 0, "train", a.short)
            held_rows = long_rows(P["heldout"], 0, "heldout", a.short)
            for split, rows in (("train", train_rows), ("heldout", held_rows)):
                (work / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            data = {
                "train": str(work / "train.jsonl"),
                "heldout": str(work / "heldout.jsonl"),
                "max_length": P["max_length"],
            }
            tok = AutoTokenizer.from_pretrained(model_path)
        budget = P["max_length"] // 2
        toks = {
            "train": tokenize(train_rows, tok, P["max_length"], budget),
            "heldout": tokenize(held_rows, tok, P["max_length"], budget),
        }
        (work / "tokens.json").write_text(json.dumps(toks))
        order = epoch_order(n_train, SEED)
        pad = padding_stats(toks["train"], order, bs)
        seq_lens = [len(p) + len(x) for p, c, r in toks["train"] for x in (c, r)]
        n_tokens = sum(seq_lens)
        # chosen and rejected repeat the prompt: one pass over [prompt, chosen, rejected] would skip this share
        prompt_repeat_share = sum(len(p) for p, c, r in toks["train"]) / n_tokens
        lens = {k: sorted(len(t[i]) for t in toks["train"]) for i, k in enumerate(("prompt", "chosen", "rejected"))}
        med = {k: v[len(v) // 2] for k, v in lens.items()}
        print(
            f"data: {n_train} train pairs ({steps} steps × {bs}), {P['heldout']} held-out; median tokens "
            f"prompt {med['prompt']}, chosen {med['chosen']}, rejected {med['rejected']}; "
            f"{n_tokens} train tokens, padding {pad['padding_fraction']:.1%} of the batches",
            flush=True,
        )

        peak, _ = spawn("peak", {"device": device, "threads": threads, "dtype": P["dtype"]}, work, env)
        print(
            f"peak: {peak['peak_flops'] / 1e12:.2f} TFLOP/s {peak['dtype']} matmul ({peak['device_name']})", flush=True
        )

        base_job = dict(
            model=model_path,
            dtype=P["dtype"],
            device=device,
            threads=threads,
            tokens=str(work / "tokens.json"),
            workdir=str(work),
            seed=SEED,
            micro_batch=bs // P["grad_accum"],
            grad_accum=P["grad_accum"],
            steps=steps,
            lr=P["lr"],
            eval_batch_size=P["eval_batch_size"],
            max_length=P["max_length"],
        )
        knobs = {"dpo": dict(beta=P["beta_dpo"]), "simpo": dict(beta=P["beta_simpo"], gamma=P["gamma"])}
        res_cell = {"cpus_per_cell": threads, "gpus_per_cell": 1 if device == "cuda" else 0}

        # Profile of an ablate DPO cell (also gives the reference-pass time over the train pairs, which a
        # like-for-like DPO comparison needs while ablate's train_seconds leaves it out).
        write_matrix(work / "profile.yaml", "profile", model_path, P["dtype"], data, P, ["dpo"], [16], steps, res_cell)
        try:
            profile, _ = spawn(
                "profile",
                {
                    "matrix": str(work / "profile.yaml"),
                    "results": str(work / "results"),
                    "device": device,
                    "threads": threads,
                    "profile_steps": min(steps, 5),
                },
                work,
                env,
            )
            ps = profile["per_step_seconds"]
            print(
                f"profile (ablate DPO cell): model load {profile['model_load_seconds']:.2f}s, reference pass over "
                f"the train pairs {profile['reference_forward_train_seconds']:.2f}s; per step: "
                + ", ".join(f"{k} {v * 1e3:.0f}ms" for k, v in ps.items()),
                flush=True,
            )
        except SystemExit as e:
            profile = {"error": str(e)}
            print(f"profile failed (ablate internals moved?): {e}", flush=True)

        # The training loop of a DPO and a SimPO cell, phase by phase (ablate's own Recipe): what SimPO spends that
        # DPO does not, if anything.
        write_matrix(work / "objectives.yaml", "objectives", model_path, P["dtype"], data, P, ["dpo", "simpo"], [16],
                     steps, res_cell)  # fmt: skip
        try:
            objective_profile, _ = spawn(
                "objectives",
                {"matrix": str(work / "objectives.yaml"), "results": str(work / "results-objectives"),
                 "threads": threads, "repeats": 3},
                work, env,
            )  # fmt: skip
            print(
                "loop profile: "
                + "; ".join(
                    f"{o} {v['seconds']:.2f}s (" + ", ".join(f"{k} {x:.2f}" for k, x in v["phases"].items()) + ")"
                    for o, v in objective_profile.items()
                ),
                flush=True,
            )
        except SystemExit as e:
            objective_profile = {"error": str(e)}

        rows = []
        if not a.skip_cells:
            for objective in ("dpo", "simpo"):
                best = {}
                for rep in range(a.repeats):
                    # ablate: a one-cell matrix in a fresh process (local Ray, one cell at a time)
                    name = f"cell-{objective}-{rep}"
                    write_matrix(
                        work / f"{name}.yaml", name, model_path, P["dtype"], data, P, [objective], [16], steps, res_cell
                    )
                    ab, ab_wall = spawn(
                        "ablate",
                        {
                            "matrix": str(work / f"{name}.yaml"),
                            "results": str(work / "results"),
                            "name": name,
                            "num_cpus": threads,
                        },
                        work,
                        env,
                    )
                    cell = ab["cells"][0]
                    if cell["status"] != "done":
                        raise SystemExit(f"ablate cell failed: {cell.get('error_type')}: {cell.get('error')}")
                    tr, tr_wall = spawn(
                        "trl",
                        {**base_job, **knobs[objective], "objective": objective, "rank": 16, "evaluate": False},
                        work,
                        env,
                    )
                    ab_tok = cell["tokens_per_second"] * cell["train_seconds"]
                    # DPO like-for-like: TRL's train() runs the reference forward inside training. ablate's cell
                    # reports reference_seconds > 0 when its train_seconds covers its own reference pass; when the
                    # reference came from ablate's shared reference task (reference_seconds ~0) the bench adds
                    # the profiled reference forward over the train pairs.
                    added = 0.0
                    if objective == "dpo" and not (cell.get("reference_seconds") or 0) > 1e-3:
                        added = profile.get("reference_forward_train_seconds")
                        if added is None:
                            raise SystemExit("cannot time ablate's DPO reference pass (profile failed)")
                    cand = {
                        "ablate": {
                            "train_seconds": cell["train_seconds"] + added,
                            "cell_train_seconds": cell["train_seconds"],
                            "reference_added_seconds": added,
                            "cell_reference_seconds": cell.get("reference_seconds"),
                            "reference_task_seconds": ab.get("reference_task_seconds"),
                            "peak_memory_mb": cell["peak_memory_mb"],
                            "steps": cell["steps"],
                            "own_tokens_per_second": cell["tokens_per_second"],
                            "own_token_count": round(ab_tok),
                            "step1": step1(cell["logs"]),
                            "process_seconds": ab_wall,
                        },
                        "trl": {
                            "train_seconds": tr["train_seconds"],
                            "train_call_seconds": tr["train_call_seconds"],
                            "peak_memory_mb": tr["peak_memory_mb"],
                            "steps": tr["steps"],
                            "same_token_ids": tr["same_token_ids"],
                            "step1": step1(tr["logs"]),
                            "process_seconds": tr_wall,
                        },
                    }
                    for sysname in ("ablate", "trl"):
                        c = cand[sysname]
                        if sysname not in best or c["train_seconds"] < best[sysname]["train_seconds"]:
                            best[sysname] = c
                    print(
                        f"  {objective} run {rep + 1}/{a.repeats}: ablate {cell['train_seconds'] + added:.2f}s"
                        + (f" ({cell['train_seconds']:.2f}s loop + {added:.2f}s reference)" if added else "")
                        + f", TRL {tr['train_seconds']:.2f}s",
                        flush=True,
                    )
                fl = flops(model_cfg, seq_lens, 16, with_reference=objective == "dpo")
                for sysname in ("ablate", "trl"):
                    b = best[sysname]
                    b["tokens_per_second"] = n_tokens / b["train_seconds"]
                    b["mfu"] = fl / b["train_seconds"] / peak["peak_flops"]
                ra, rt = best["ablate"], best["trl"]
                ra["ratio_tokens_per_second"] = ra["tokens_per_second"] / rt["tokens_per_second"]
                ra["ratio_peak_memory"] = ra["peak_memory_mb"] / rt["peak_memory_mb"]
                l1, l2 = ra["step1"].get("loss"), rt["step1"].get("loss")
                ra["first_step_loss_abs_diff"] = None if l1 is None or l2 is None else abs(l1 - l2)
                ra["token_count_matches"] = abs(ra["own_token_count"] - n_tokens) <= 1
                ra["steps_match"] = ra["steps"] == rt["steps"] == steps
                rows += [
                    {"system": "ablate", "objective": objective, **ra},
                    {"system": "trl", "objective": objective, **rt},
                ]

        matrix = None
        if not a.skip_matrix:
            gpc = a.matrix_gpus_per_cell if a.matrix_gpus_per_cell is not None else P["matrix_gpus_per_cell"]
            res_m = {
                "cpus_per_cell": 1 if device == "cpu" else max(1, threads // 4),
                "gpus_per_cell": gpc if device == "cuda" else 0,
            }
            matrix = run_matrices(a, work, env, model_path, P, data, steps, res_m, base_job, knobs)

        # Report
        date = _dt.date.today().isoformat()
        out = {
            "preset": a.preset,
            "date": date,
            "machine": machine_info(device),
            "peak": peak,
            "settings": {
                **{k: v for k, v in P.items() if k != "model"},
                "model": model_path if isinstance(P["model"], str) else {k: v for k, v in P["model"].items()},
                "threads": threads,
                "train_pairs": n_train,
                "short": a.short,
                "repeats": a.repeats,
                "lora": {"alpha_over_rank": ALPHA_OVER_RANK, "dropout": 0.0, "targets": TARGETS},
                "warmup_ratio": WARMUP_RATIO,
                "scheduler": SCHEDULER,
                "logging_steps": LOGGING_STEPS,
            },
            "data": {
                "train_tokens": n_tokens,
                "median_lengths": med,
                "repeated_prompt_share": prompt_repeat_share,
                **pad,
            },
            "cells": rows,
            "matrix": matrix,
            "profile": profile,
            "objective_profile": objective_profile,
        }
        tol = 1e-5 if P["dtype"] == "float32" else 1e-2  # bf16: TRL autocasts, ablate runs plain bf16
        targets = {}
        for r in rows:
            if r["system"] == "ablate":
                o = r["objective"]
                targets[f"{o} tokens/s ≥ 1.5× TRL"] = r["ratio_tokens_per_second"] >= 1.5
                targets[f"{o} peak memory ≤ TRL"] = r["ratio_peak_memory"] <= 1.0
                d = r["first_step_loss_abs_diff"]
                targets[f"{o} first-step loss within {tol:g}"] = d is not None and d <= tol
        for size, mx in (matrix or {}).items():
            best = min(mx["ablate"], key=lambda mode: max(mx["ratio_vs_one_process"][mode]))
            targets[f"{size} matrix wall ≤ 0.5× TRL in one process ({best})"] = (
                max(mx["ratio_vs_one_process"][best]) <= 0.5
            )
        out["targets"] = targets
        md = markdown(out)
        print()
        print(md)
        outdir = Path(a.out)
        outdir.mkdir(parents=True, exist_ok=True)
        path = outdir / f"{a.preset}-{date}{('-' + a.tag) if a.tag else ''}.json"
        out["markdown"] = md
        path.write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"\nwrote {path}")
        return 0
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = [
        f"**{out['preset']}** · {out['date']} · {m.get('gpu') or m.get('cpu')} · {out['settings']['threads']} "
        f"threads · {out['settings']['dtype']} · {out['settings']['train_pairs']} pairs × 1 epoch "
        f"({out['settings']['steps']} steps of {out['settings']['batch_size']}) · padding "
        f"{out['data']['padding_fraction']:.1%} of batch tokens · repeated prompt {out['data']['repeated_prompt_share']:.0%} "
        f"of real tokens · peak {out['peak']['peak_flops'] / 1e12:.2f} TFLOP/s "
        f"({out['peak']['dtype']} matmul)",
        "",
    ]
    if out["cells"]:
        lines += [
            "| system | objective | tokens/s | peak memory (MB) | first-step loss | step-1 logps chosen / rejected "
            "| MFU | tokens/s vs TRL | memory vs TRL |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in out["cells"]:
            s1 = r["step1"]
            lp = f"{fmt(s1.get('logps_chosen'), '.4f')} / {fmt(s1.get('logps_rejected'), '.4f')}"
            ratio = f"{r['ratio_tokens_per_second']:.2f}×" if "ratio_tokens_per_second" in r else "1.00×"
            mem = f"{r['ratio_peak_memory']:.2f}×" if "ratio_peak_memory" in r else "1.00×"
            lines.append(
                f"| {r['system']} | {r['objective']} | {r['tokens_per_second']:,.0f} | {r['peak_memory_mb']:,.0f} "
                f"| {fmt(s1.get('loss'), '.6f')} | {lp} | {r['mfu']:.2%} | {ratio} | {mem} |"
            )
        checks = []
        for r in out["cells"]:
            if r["system"] == "ablate":
                checks.append(
                    f"{r['objective']}: |Δ first-step loss| = {fmt(r['first_step_loss_abs_diff'], '.2e')}, "
                    f"token count matches ablate's own: {r['token_count_matches']}, steps match: {r['steps_match']}"
                )
            else:
                checks.append(f"{r['objective']}: TRL trained on ablate's token ids: {r['same_token_ids']}")
        lines += ["", "Checks: " + "; ".join(checks) + "."]
        for r in out["cells"]:
            if r["system"] == "ablate" and r.get("reference_added_seconds"):
                lines += [
                    "",
                    f"ablate {r['objective']}: {r['cell_train_seconds']:.2f} s training loop (cell `train_seconds`) "
                    f"+ {r['reference_added_seconds']:.2f} s reference forward over the train pairs (profiled; "
                    "ablate ran it in its shared reference task, outside `train_seconds`) = "
                    f"{r['train_seconds']:.2f} s, against TRL's train() which runs the reference inside.",
                ]
    pr = out.get("profile") or {}
    if "per_step_seconds" in pr:
        ps = pr["per_step_seconds"]
        step = sum(ps[k] for k in ("collate", "backbone_forward", "head_logsoftmax_forward", "backward", "optimizer"))
        lines += [
            "",
            f"ablate DPO cell profile: model load {pr['model_load_seconds']:.2f} s, reference pass "
            f"{pr['reference_forward_train_seconds']:.2f} s; per step {step * 1e3:.1f} ms = "
            + ", ".join(
                f"{k.replace('_', ' ')} {ps[k] / step:.0%}"
                for k in ("collate", "backbone_forward", "head_logsoftmax_forward", "backward", "optimizer")
            )
            + f"; LM head fwd+bwd on all positions {ps['head_all_positions_fwd_bwd'] * 1e3:.1f} ms vs completion "
            f"positions only {ps['head_completion_only_fwd_bwd'] * 1e3:.1f} ms (completions are "
            f"{pr['completion_token_fraction']:.0%} of the tokens).",
        ]
    op = out.get("objective_profile") or {}
    if "dpo" in op and "simpo" in op:
        keys = list(op["dpo"]["phases"])
        lines += [
            "",
            f"| training loop ({op['dpo']['steps']} steps, reference precomputed) | seconds | "
            + " | ".join(keys)
            + " |",
            "|---|---:|" + "---:|" * len(keys),
        ]
        for o in ("dpo", "simpo"):
            v = op[o]
            lines.append(
                f"| ablate {o} | {v['seconds']:.2f} | " + " | ".join(f"{v['phases'][k]:.3f}" for k in keys) + " |"
            )
    tg = out.get("targets") or {}
    if tg:
        lines += ["", "Targets: " + "; ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in tg.items()) + "."]
    mxs = out.get("matrix") or {}
    if mxs:
        lines += ["", matrix_markdown(mxs)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
