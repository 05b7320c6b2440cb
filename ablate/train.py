"""train_cell: the one recipe. Load model and data → LoRA → train (only the loss differs) → held-out eval
→ write logs, per-pair results and the adapter into a staging directory.

worker.py wraps it with what a cluster needs (heartbeat, OOM retries, checkpoints, publishing).
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .checkpoint import Checkpointer
from .data import Pair, encode
from .forward import Forward, collate
from .losses import OBJECTIVES, LogProbs
from .models import load_model, load_tokenizer
from .spec import ModelSpec


def share_prompt(runtime: dict) -> bool:
    """The [prompt, chosen, rejected] layout needs a 4-D mask, which flash-attention kernels do not take."""
    return runtime.get("share_prompt", True) and runtime.get("attention", "sdpa") != "flash_attention_2"


@torch.no_grad()
def _all_logps(fwd: Forward, pairs: list[Pair], batch_size: int, pad_id: int, device, share: bool
               ) -> dict[str, torch.Tensor]:
    """Summed/averaged log-probs and lengths of every pair (eval mode); with the adapter disabled this is
    the reference, computed once per cell instead of once per step."""
    cols = {k: [] for k in ("c_sum", "r_sum", "c_avg", "r_avg", "c_len", "r_len")}
    for s in range(0, len(pairs), batch_size):
        b = collate(pairs, list(range(s, min(s + batch_size, len(pairs)))), pad_id, share).to(device)
        total, avg, n = fwd(b)
        B = len(b.index)
        for key, t in (("sum", total), ("avg", avg), ("len", n)):
            cols[f"c_{key}"].append(t[:B].cpu())
            cols[f"r_{key}"].append(t[B:].cpu())
    return {k: torch.cat(v) for k, v in cols.items()}


def _sides(total, avg, B, ref=None, idx=None) -> tuple[LogProbs, LogProbs]:
    c = LogProbs(total[:B], avg[:B], None if ref is None else ref["c_sum"][idx].to(total.device))
    r = LogProbs(total[B:], avg[B:], None if ref is None else ref["r_sum"][idx].to(total.device))
    return c, r


def _metrics(prefix: str, loss, cr, rr, c: LogProbs, r: LogProbs, objective: str) -> dict[str, float]:
    # TRL logs the log-prob the objective uses: summed for DPO, per-token mean for SimPO/ORPO.
    use = (lambda x: x.sum) if objective == "dpo" else (lambda x: x.avg)
    return {
        f"{prefix}loss": loss.mean().item(),
        f"{prefix}rewards/chosen": cr.mean().item(),
        f"{prefix}rewards/rejected": rr.mean().item(),
        f"{prefix}rewards/margins": (cr - rr).mean().item(),
        f"{prefix}rewards/accuracies": (cr > rr).float().mean().item(),
        f"{prefix}logps/chosen": use(c).detach().mean().item(),
        f"{prefix}logps/rejected": use(r).detach().mean().item(),
    }


def evaluate(fwd: Forward, pairs, objective: str, params: dict, ref, batch_size: int, pad_id: int, device,
             share: bool):
    """Held-out metrics (eval_ prefix) and one row per pair, scored under the cell's own reward."""
    was_training = fwd.model.training
    fwd.model.eval()
    lp = _all_logps(fwd, pairs, batch_size, pad_id, device, share)
    fwd.model.train(was_training)
    idx = torch.arange(len(pairs))
    c, r = _sides(torch.cat([lp["c_sum"], lp["r_sum"]]), torch.cat([lp["c_avg"], lp["r_avg"]]), len(pairs), ref, idx)
    loss, cr, rr = OBJECTIVES[objective](c, r, params)
    m = _metrics("eval_", loss, cr, rr, c, r, objective)
    m["eval_accuracy"] = m["eval_rewards/accuracies"]
    rows = pd.DataFrame({
        "pair": idx.numpy(),
        "chosen_logp_sum": lp["c_sum"].numpy(), "rejected_logp_sum": lp["r_sum"].numpy(),
        "chosen_logp_avg": lp["c_avg"].numpy(), "rejected_logp_avg": lp["r_avg"].numpy(),
        "chosen_len": lp["c_len"].numpy().astype("int64"), "rejected_len": lp["r_len"].numpy().astype("int64"),
        "chosen_reward": cr.numpy(), "rejected_reward": rr.numpy(),
        "margin": (cr - rr).numpy(), "correct": (cr > rr).numpy(),
    })
    if ref is not None:
        rows["chosen_ref_logp_sum"] = ref["c_sum"].numpy()
        rows["rejected_ref_logp_sum"] = ref["r_sum"].numpy()
    return m, rows


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


def reference_logps(model_spec: dict, config: dict, train_rows: list[dict], heldout_rows: list[dict],
                    runtime: dict | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """DPO's reference log-probs (the frozen base model) for every train and held-out pair. They depend only
    on model, data, lengths and eval batch — not on rank, β or seed — so one computation serves every DPO
    cell (see worker.reference_key)."""
    runtime = runtime or {}
    device = _device(runtime)
    mspec = ModelSpec(**model_spec)
    tok = load_tokenizer(mspec)
    d = config["data"]
    model = load_model(mspec, device, runtime.get("attention", "sdpa")).eval()
    pairs = {s: encode(rows, tok, d["max_length"], d["prompt_budget"], f"data.{s}")
             for s, rows in (("train", train_rows), ("heldout", heldout_rows))}
    return _reference(Forward(model), pairs, runtime.get("eval_batch_size") or config["train"]["eval_batch_size"],
                      tok.pad_token_id, device, share_prompt(runtime))


def _reference(fwd: Forward, pairs: dict[str, list[Pair]], batch_size: int, pad: int, device, share: bool) -> dict:
    return {s: _all_logps(fwd, ps, batch_size, pad, device, share) for s, ps in pairs.items()}


def _device(runtime: dict | None = None) -> torch.device:
    """CUDA when the cell asked for a GPU (Ray then exposes only its share), or when run outside Ray with one;
    a cell with gpus_per_cell 0 stays on CPU even on a GPU node, since Ray accounted no GPU for it."""
    if (runtime or {}).get("device") == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _oom_hook(micro: int) -> None:
    """Test hook: simulate a GPU OOM on CPU when the micro-batch is above ABLATE_TEST_OOM_ABOVE."""
    limit = os.environ.get("ABLATE_TEST_OOM_ABOVE")
    if limit is not None and micro > int(limit):
        raise torch.OutOfMemoryError(f"simulated CUDA out of memory at micro-batch {micro} (ABLATE_TEST_OOM_ABOVE)")


def _fault_hooks(step: int, objective: str, resumed: bool) -> None:
    """Test hooks for the failure tests (never set in normal use):
    ABLATE_TEST_KILL_AT_STEP=N dies like a preempted node (no cleanup, no exception) at step N of a cell's
    first attempt, so a retry resumes from its checkpoint; ABLATE_TEST_RAISE_AT=objective@N raises at step N
    of that objective's cells, like bad data discovered mid-training."""
    kill = os.environ.get("ABLATE_TEST_KILL_AT_STEP")
    if kill is not None and step == int(kill) and not resumed:
        os._exit(137)
    target, _, at = os.environ.get("ABLATE_TEST_RAISE_AT", "").partition("@")
    if target == objective and step == int(at):
        raise ValueError(f"simulated bad batch at step {step} (ABLATE_TEST_RAISE_AT)")


def train_cell(config: dict, model_spec: dict, train_rows: list[dict], heldout_rows: list[dict], staging: Path,
               ref: dict | None = None, micro_batch: int | None = None, checkpoint: Checkpointer | None = None,
               runtime: dict | None = None) -> dict[str, Any]:
    """Train and evaluate one cell, writing its logs, pairs and adapter into `staging`. Returns its summary.

    `ref` holds DPO's reference log-probs (see reference_logps); `micro_batch` overrides batch_size/grad_accum
    (same effective batch) after an OOM; `checkpoint` saves and restores the full training state."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_scheduler

    p, t = config["params"], config["train"]
    runtime = runtime or {}
    eval_bs = runtime.get("eval_batch_size") or t["eval_batch_size"]  # halved with the micro-batch after an OOM
    objective = OBJECTIVES[p["objective"]]
    seed = int(p["seed"])
    random.seed(seed)
    torch.manual_seed(seed)
    device = _device(runtime)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # a Ray worker may train several cells: peak per cell

    mspec = ModelSpec(**model_spec)
    tok = load_tokenizer(mspec)
    pad = tok.pad_token_id
    d = config["data"]
    train_pairs = encode(train_rows, tok, d["max_length"], d["prompt_budget"], "data.train")
    held_pairs = encode(heldout_rows, tok, d["max_length"], d["prompt_budget"], "data.heldout")

    model = load_model(mspec, device, runtime.get("attention", "sdpa"))
    lora = t["lora"]
    model = get_peft_model(model, LoraConfig(
        r=p["lora_rank"], lora_alpha=lora["alpha_over_rank"] * p["lora_rank"], lora_dropout=lora["dropout"],
        target_modules=lora["targets"], task_type="CAUSAL_LM",
    ))
    if runtime.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    trainable = sum(x.numel() for x in model.parameters() if x.requires_grad)
    share = share_prompt(runtime)
    fwd = Forward(model)
    policy = Forward(model, compile=True) if runtime.get("compile") else fwd  # training forward only

    t_ref = time.perf_counter()
    if objective.needs_reference and ref is None:  # not shared by the runner: the policy with its adapter off
        model.eval()
        with model.disable_adapter():
            ref = _reference(fwd, {"train": train_pairs, "heldout": held_pairs}, eval_bs, pad, device, share)
    ref_seconds = time.perf_counter() - t_ref
    ref_train = ref["train"] if objective.needs_reference else None
    ref_held = ref["heldout"] if objective.needs_reference else None

    bs = t["batch_size"]
    micro = micro_batch or bs // t["grad_accum"]
    steps_per_epoch = math.ceil(len(train_pairs) / bs)
    total_steps = t["max_steps"] or steps_per_epoch * t["epochs"]
    params = [x for x in model.parameters() if x.requires_grad]
    opt = torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])
    sched = get_scheduler(t["scheduler"], opt, num_warmup_steps=int(t["warmup_ratio"] * total_steps),
                          num_training_steps=total_steps)
    gen = torch.Generator().manual_seed(seed)
    eval_every = t["eval_steps"] or max(1, total_steps // 4)
    es = t.get("early_stopping")

    # Everything a resumed cell needs to continue exactly where it stopped.
    st = {"step": 0, "order": None, "pos": 0, "train_log": [], "eval_log": [], "best": None, "since_best": 0,
          "stopped_early": False, "tokens": 0, "seconds": 0.0}
    resumed_from = checkpoint.restore(model, opt, sched, gen, st) if checkpoint else None

    t0 = time.perf_counter() - st["seconds"]
    model.train()
    while st["step"] < total_steps and not st["stopped_early"]:
        if st["order"] is None or st["pos"] >= len(st["order"]):  # a new epoch
            st["order"], st["pos"] = torch.randperm(len(train_pairs), generator=gen).tolist(), 0
        idx = st["order"][st["pos"] : st["pos"] + bs]
        st["pos"] += bs
        opt.zero_grad(set_to_none=True)
        stats = []
        for m in range(0, len(idx), micro):
            _oom_hook(micro)
            b = collate(train_pairs, idx[m : m + micro], pad, share).to(device)
            total, avg, _ = policy(b)
            c, r = _sides(total, avg, len(b.index), ref_train, torch.tensor(b.index))
            loss, cr, rr = objective(c, r, p)
            (loss.sum() / len(idx)).backward()
            st["tokens"] += b.tokens  # counted as [prompt, completion] rows, as TRL would see them
            stats.append((loss.detach(), cr, rr, c, r))
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t["max_grad_norm"])
        lr_used = sched.get_last_lr()[0]  # the rate this step trained with, as TRL logs it
        opt.step()
        sched.step()
        st["step"] = step = st["step"] + 1
        if step % t["logging_steps"] == 0 or step == 1 or step == total_steps:
            cat = lambda f: torch.cat([f(x) for x in stats])  # noqa: E731
            c = LogProbs(cat(lambda x: x[3].sum), cat(lambda x: x[3].avg))
            r = LogProbs(cat(lambda x: x[4].sum), cat(lambda x: x[4].avg))
            row = _metrics("", cat(lambda x: x[0]), cat(lambda x: x[1]), cat(lambda x: x[2]), c, r, p["objective"])
            row.update(step=step, epoch=step / steps_per_epoch, learning_rate=lr_used,
                       grad_norm=float(grad_norm))
            st["train_log"].append(row)
        if step % eval_every == 0 and step != total_steps:
            m_eval, _ = evaluate(fwd, held_pairs, p["objective"], p, ref_held, eval_bs, pad, device, share)
            st["eval_log"].append({**m_eval, "step": step, "epoch": step / steps_per_epoch})
            if es:  # lower is better for the loss, higher for accuracy and margins
                value = m_eval[es["metric"]] * (1 if es["metric"] == "eval_loss" else -1)
                if st["best"] is None or value < st["best"]:
                    st["best"], st["since_best"] = value, 0
                else:
                    st["since_best"] += 1
                st["stopped_early"] = st["since_best"] >= es["patience"]
        if checkpoint and step < total_steps and not st["stopped_early"] and checkpoint.due(step):
            st["seconds"] = time.perf_counter() - t0
            checkpoint.save(model, opt, sched, gen, st)
        if checkpoint:
            checkpoint.progress(step, total_steps)
        _fault_hooks(step, p["objective"], resumed_from is not None)
    train_seconds = time.perf_counter() - t0
    step, train_log, eval_log = st["step"], st["train_log"], st["eval_log"]

    m_eval, pair_rows = evaluate(fwd, held_pairs, p["objective"], p, ref_held, eval_bs, pad, device,
                                 share)
    eval_log.append({**m_eval, "step": step, "epoch": step / steps_per_epoch})

    (staging / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_log))
    (staging / "eval_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eval_log))
    pair_rows["truncated"] = [pp.truncated for pp in held_pairs]  # prompt or either completion was cut
    pair_rows.to_parquet(staging / "pairs.parquet", index=False)
    model.save_pretrained(staging / "adapter")

    return {
        "heldout_accuracy": m_eval["eval_accuracy"],
        "heldout_margin": m_eval["eval_rewards/margins"],
        "heldout_loss": m_eval["eval_loss"],
        "train_margin_first": train_log[0]["rewards/margins"],
        "train_margin_last": train_log[-1]["rewards/margins"],
        "train_loss_last": train_log[-1]["loss"],
        "heldout_pairs": len(held_pairs),
        "train_pairs": len(train_pairs),
        "truncated_train_pairs": sum(pp.truncated for pp in train_pairs),
        "truncated_heldout_pairs": sum(pp.truncated for pp in held_pairs),
        "steps": step,
        "stopped_early": st["stopped_early"],
        "train_seconds": train_seconds,
        "reference_seconds": ref_seconds,
        "tokens_per_second": st["tokens"] / train_seconds if train_seconds > 0 else float("nan"),
        "peak_memory_mb": _peak_memory_mb(device),
        "trainable_params": trainable,
        "device": str(device),
        "micro_batch": micro,
        "grad_accum": -(-bs // micro),
        "resumed_from_step": resumed_from,
    }


