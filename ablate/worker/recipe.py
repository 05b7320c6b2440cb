"""The one recipe, for every objective (only the loss differs), in the torchtune shape:

    recipe = Recipe(cell, model_spec, runtime)
    recipe.setup(train_rows, heldout_rows, reference)   # tokenizer, pairs, base model + fresh LoRA, optimizer
    state = recipe.train(TrainState(), hooks)           # the loop; hooks: progress, checkpoints, test faults
    result = recipe.finish(state)                        # final held-out evaluation → summary, logs, per-pair rows

It returns what it computed; ablate/worker/cell.py writes the files and publishes the cell. The reference
pass (π_ref, the base model without the adapter) shares `load_base` with setup (worker/logps.py).
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pandas as pd
import torch

from .. import objectives
from ..config import CellConfig, Runtime
from ..schema import ModelSpec
from . import bases
from .forward import Forward, collate
from .logps import all_logps, device_for, load_base
from .losses import LogProbs, loss_for


@dataclass
class TrainState:
    """Everything a resumed cell needs to continue exactly where it stopped (besides weights and RNGs)."""

    step: int = 0
    order: list[int] | None = None  # this epoch's pair order
    pos: int = 0  # position in `order`
    train_log: list[dict] = field(default_factory=list)
    eval_log: list[dict] = field(default_factory=list)
    best: float | None = None  # early stopping: best held-out value so far (lower is better)
    since_best: int = 0
    stopped_early: bool = False
    tokens: int = 0
    seconds: float = 0.0
    generations: list[dict] = field(default_factory=list)  # eval.generate every: eval (worker/generate.py)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class Hooks(Protocol):
    def before_batch(self, micro: int) -> None: ...
    def after_step(self, recipe: Recipe, state: TrainState, total_steps: int) -> None: ...


@dataclass
class CellResult:
    summary: dict[str, Any]  # the metrics cell.json and cells.parquet carry
    train_log: list[dict]
    eval_log: list[dict]
    pairs: pd.DataFrame  # one row per held-out pair


def _sides(total, avg, n, B, ref=None, idx=None) -> tuple[LogProbs, LogProbs]:
    c = LogProbs(total[:B], avg[:B], None if ref is None else ref["c_sum"][idx].to(total.device), n[:B])
    r = LogProbs(total[B:], avg[B:], None if ref is None else ref["r_sum"][idx].to(total.device), n[B:])
    return c, r


@dataclass
class _Stats:
    """One micro-batch's outputs, kept for the step's log row."""

    loss: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    chosen: LogProbs
    rejected: LogProbs
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # the objective's own per-pair values


def _metrics(prefix: str, s: _Stats, scoring: str) -> dict[str, float]:
    # TRL logs the log-prob the objective scores with: summed for DPO, per-token mean for SimPO/ORPO.
    c, r = (s.chosen.sum, s.rejected.sum) if scoring == "sum" else (s.chosen.avg, s.rejected.avg)
    cr, rr = s.chosen_reward, s.rejected_reward
    return {
        f"{prefix}loss": s.loss.mean().item(),
        f"{prefix}rewards/chosen": cr.mean().item(),
        f"{prefix}rewards/rejected": rr.mean().item(),
        f"{prefix}rewards/margins": (cr - rr).mean().item(),
        f"{prefix}rewards/accuracies": (cr > rr).float().mean().item(),
        f"{prefix}logps/chosen": c.detach().mean().item(),
        f"{prefix}logps/rejected": r.detach().mean().item(),
        **{f"{prefix}{k}": v.mean().item() for k, v in s.logs.items()},
    }


def _cat(stats: list[_Stats]) -> _Stats:
    cat = torch.cat
    return _Stats(
        cat([s.loss for s in stats]),
        cat([s.chosen_reward for s in stats]),
        cat([s.rejected_reward for s in stats]),
        LogProbs(cat([s.chosen.sum for s in stats]), cat([s.chosen.avg for s in stats])),
        LogProbs(cat([s.rejected.sum for s in stats]), cat([s.rejected.avg for s in stats])),
        {k: cat([s.logs[k] for s in stats]) for k in stats[0].logs},
    )


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


class Recipe:
    def __init__(
        self,
        cell: CellConfig,
        model_spec: ModelSpec,
        runtime: Runtime,
        micro_batch: int | None = None,
        adapter: str = "default",
    ):
        self.cell, self.model_spec, self.runtime = cell, model_spec, runtime
        self.adapter = adapter  # its LoRA's name in the model: "default", or its place in a pack (worker/pack.py)
        self.model: Any = None
        self.route: Any = contextlib.nullcontext  # a pack routes each forward pass's rows to their adapters
        self.pack_size = 1
        self.merge_in_place: Any = None
        self.objective = objectives.get(cell.objective)
        self.loss = loss_for(cell.objective)
        t = cell.train
        self.micro = micro_batch or t.batch_size // t.grad_accum  # smaller after an OOM; same effective batch
        self.eval_bs = runtime.eval_batch_size or t.eval_batch_size
        self.device = device_for(runtime)
        self.share = runtime.shares_prompt

    def setup(
        self,
        train_rows: list[dict],
        heldout_rows: list[dict],
        reference: dict | None = None,
        onto: Recipe | None = None,
    ) -> Recipe:
        """Tokenize, load the base model, add a fresh LoRA, get the reference log-probs, build the optimizer.
        `onto`: another cell's recipe whose model (and pairs) this cell shares, its LoRA added beside (a pack)."""
        from peft import LoraConfig, get_peft_model
        from transformers import get_scheduler

        cell, t = self.cell, self.cell.train
        t_setup, loads = time.perf_counter(), bases.CACHE.loads
        random.seed(cell.seed)
        torch.manual_seed(cell.seed)
        if self.device.type == "cuda" and onto is None:
            torch.cuda.reset_peak_memory_stats(self.device)  # a Ray worker may train several cells: peak per cell
        if onto is None:
            tok, pairs, model = load_base(
                self.model_spec, self.runtime, {"train": train_rows, "heldout": heldout_rows}, cell.data, cell.truncate
            )
            self.pad, self.train_pairs, self.held_pairs = tok.pad_token_id, pairs["train"], pairs["heldout"]
            self.loan = bases.lend(model) if self.runtime.keep_base else None
        else:  # the pack's first cell loaded (and borrowed) the base; its pairs are this cell's (same data, lengths)
            self.pad, self.train_pairs, self.held_pairs = onto.pad, onto.train_pairs, onto.held_pairs
            pairs, self.loan = {"train": self.train_pairs, "heldout": self.held_pairs}, None
            model = onto.model
        self.model = model  # until the LoRA wraps it: what `release` gives back if wrapping fails
        # The LoRA's initialisation draws from the seeded RNGs: seed again right before it, so that loading the
        # model (fresh from disk or kept by a long-lived trainer) can never shift what the adapter starts from.
        random.seed(cell.seed)
        torch.manual_seed(cell.seed)
        lora = LoraConfig(
            r=cell.rank,
            lora_alpha=t.lora.alpha_over_rank * cell.rank,  # type: ignore[arg-type]  # PEFT annotates int; a float works
            lora_dropout=t.lora.dropout,
            target_modules=list(t.lora.targets),
            task_type="CAUSAL_LM",
        )
        if onto is None:
            model = get_peft_model(model, lora, adapter_name=self.adapter)
        else:
            model.add_adapter(self.adapter, lora)  # the same draws from the same seed: the adapter a lone cell gets
        if self.runtime.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        self.model = model
        own = self.adapter_params()
        for x in own.values():  # PEFT trains only the active adapter; in a pack, each cell's optimizer its own
            x.requires_grad_(True)
        self.trainable = sum(x.numel() for x in own.values())
        self.fwd = Forward(model)
        self.policy = Forward(model, compile=True) if self.runtime.compile else self.fwd  # training forward only

        t_ref = time.perf_counter()
        if self.objective.reference and reference is None:  # not shared by the runner: the policy, adapter off
            self.model.eval()
            with model.disable_adapter():
                reference = {
                    s: all_logps(self.fwd, ps, self.eval_bs, self.pad, self.device, self.share)
                    for s, ps in pairs.items()
                }
        self.reference_seconds = time.perf_counter() - t_ref
        self.ref = reference if self.objective.reference else None

        self.steps_per_epoch = math.ceil(len(self.train_pairs) / t.batch_size)
        self.total_steps = t.max_steps or self.steps_per_epoch * t.epochs
        self.params = list(own.values())
        self.opt = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay)
        self.sched = get_scheduler(
            t.scheduler,
            self.opt,
            num_warmup_steps=int(t.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.gen = torch.Generator().manual_seed(cell.seed)  # data order
        self.setup_seconds = time.perf_counter() - t_setup - self.reference_seconds
        self.kept_base = self.runtime.keep_base and bases.CACHE.loads == loads  # the trainer had it loaded already
        if onto is not None:
            self.kept_base = onto.kept_base
        return self

    def adapter_params(self) -> dict[str, torch.nn.Parameter]:
        """This cell's LoRA parameters, named as a lone cell's ("default" adapter): what checkpoints hold."""
        tag = f".{self.adapter}."
        return {n.replace(tag, ".default."): p for n, p in self.model.named_parameters() if tag in n and "lora_" in n}

    def save_adapter(self, path) -> None:
        """The adapter as PEFT saves a lone cell's (PEFT puts any adapter but "default" in a subfolder)."""
        if self.adapter == "default":
            self.model.save_pretrained(str(path), selected_adapters=["default"])
            return
        tmp = path.parent / f"{path.name}.tmp"
        self.model.save_pretrained(str(tmp), selected_adapters=[self.adapter])
        (tmp / self.adapter).rename(path)
        for f in tmp.iterdir():  # the model card PEFT writes beside the subfolder
            f.rename(path / f.name)
        tmp.rmdir()

    def next_batch(self, state: TrainState) -> list[int]:
        """The pairs of the next optimizer step, in this cell's seeded order."""
        bs = self.cell.train.batch_size
        if state.order is None or state.pos >= len(state.order):  # a new epoch
            state.order, state.pos = torch.randperm(len(self.train_pairs), generator=self.gen).tolist(), 0
        idx = state.order[state.pos : state.pos + bs]
        state.pos += bs
        self.opt.zero_grad(set_to_none=True)
        return idx

    def micro_loss(
        self, state: TrainState, total, avg, n, B: int, index: list[int], tokens: int, of: int
    ) -> tuple[torch.Tensor, _Stats]:
        """One micro-batch's share of the step's loss (B pairs of the step's `of`), from its forward outputs, to
        backpropagate; and its values for the log."""
        ref = self.ref["train"] if self.ref else None
        c, r = _sides(total, avg, n, B, ref, torch.tensor(index))
        out = self.loss(c, r, self.cell.params)  # batch-dependent objectives see this micro-batch
        state.tokens += tokens  # counted as [prompt, completion] rows, as TRL would see them
        logs = {k: v.detach() for k, v in out.logs.items()}
        return out.loss.sum() / of, _Stats(out.loss.detach(), out.chosen_reward, out.rejected_reward, c, r, logs)

    def _step(self, state: TrainState, hooks: Hooks) -> list[_Stats]:
        """One optimizer step over the next batch, in micro-batches."""
        idx = self.next_batch(state)
        stats = []
        for m in range(0, len(idx), self.micro):
            hooks.before_batch(self.micro)
            b = collate(self.train_pairs, idx[m : m + self.micro], self.pad, self.share).to(self.device)
            total, avg, n = self.policy(b)
            loss, st = self.micro_loss(state, total, avg, n, len(b.index), b.index, b.tokens, len(idx))
            loss.backward()
            stats.append(st)
        return stats

    def done(self, state: TrainState) -> bool:
        return state.step >= self.total_steps or state.stopped_early

    def train(self, state: TrainState, hooks: Hooks) -> TrainState:
        t0 = time.perf_counter() - state.seconds
        self.model.train()
        while not self.done(state):
            self.end_step(state, self._step(state, hooks), hooks, t0)
        return state

    def end_step(self, state: TrainState, stats: list[_Stats], hooks: Hooks, t0: float) -> None:
        """After the step's backward passes: clip, step the optimizer and schedule, log, evaluate, hooks."""
        t, total = self.cell.train, self.total_steps
        eval_every = t.eval_steps or max(1, total // 4)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm)
        lr_used = self.sched.get_last_lr()[0]  # the rate this step trained with, as TRL logs it
        self.opt.step()
        self.sched.step()
        state.step += 1
        step = state.step
        if step % t.logging_steps == 0 or step == 1 or step == total:
            row = _metrics("", _cat(stats), self.objective.scoring)
            row.update(step=step, epoch=step / self.steps_per_epoch, learning_rate=lr_used, grad_norm=float(grad_norm))
            state.train_log.append(row)
        if step % eval_every == 0 and step != total:
            m_eval, _ = self.evaluate()
            state.eval_log.append({**m_eval, "step": step, "epoch": step / self.steps_per_epoch})
            self._early_stopping(state, m_eval)
        state.seconds = time.perf_counter() - t0
        hooks.after_step(self, state, total)

    def _early_stopping(self, state: TrainState, m_eval: dict) -> None:
        es = self.cell.train.early_stopping
        if es is None:
            return
        value = m_eval[es.metric] * (1 if es.metric == "eval_loss" else -1)  # lower is better from here on
        if state.best is None or value < state.best:
            state.best, state.since_best = value, 0
        else:
            state.since_best += 1
        state.stopped_early = state.since_best >= es.patience

    def evaluate(self) -> tuple[dict[str, float], pd.DataFrame]:
        """Held-out metrics (eval_ prefix) and one row per pair, scored under the cell's own reward."""
        was_training = self.model.training
        self.model.eval()
        with self.route():
            lp = all_logps(self.fwd, self.held_pairs, self.eval_bs, self.pad, self.device, self.share)
        self.model.train(was_training)
        n = len(self.held_pairs)
        idx = torch.arange(n)
        ref = self.ref["heldout"] if self.ref else None
        cat = torch.cat
        c, r = _sides(
            cat([lp["c_sum"], lp["r_sum"]]),
            cat([lp["c_avg"], lp["r_avg"]]),
            cat([lp["c_len"], lp["r_len"]]),
            n,
            ref,
            idx,
        )
        loss, cr, rr, logs = self.loss(c, r, self.cell.params)  # the held-out set is one batch
        m = _metrics("eval_", _Stats(loss, cr, rr, c, r, logs), self.objective.scoring)
        m["eval_accuracy"] = m["eval_rewards/accuracies"]
        rows = pd.DataFrame(
            {
                "pair": idx.numpy(),
                "chosen_logp_sum": lp["c_sum"].numpy(),
                "rejected_logp_sum": lp["r_sum"].numpy(),
                "chosen_logp_avg": lp["c_avg"].numpy(),
                "rejected_logp_avg": lp["r_avg"].numpy(),
                "chosen_len": lp["c_len"].numpy().astype("int64"),
                "rejected_len": lp["r_len"].numpy().astype("int64"),
                "chosen_reward": cr.numpy(),
                "rejected_reward": rr.numpy(),
                "margin": (cr - rr).numpy(),
                "correct": (cr > rr).numpy(),
            }
        )
        if ref is not None:
            rows["chosen_ref_logp_sum"] = ref["c_sum"].numpy()
            rows["rejected_ref_logp_sum"] = ref["r_sum"].numpy()
        rows["truncated"] = [p.truncated for p in self.held_pairs]  # prompt or either completion was cut
        return m, rows

    def merged(self):
        """The adapter folded into the weights, for the final generation only (the adapter is saved by then). A kept
        base gets its own weights back when the cell gives it back (bases.Loan saves them first)."""
        if self.merge_in_place is not None:  # a pack's cell: the others' adapters stay (worker/pack.py)
            return self.merge_in_place()
        if self.loan is not None:
            self.loan.before_merge(self.model)
        self.model = self.model.merge_and_unload()
        return self.model

    def release(self) -> None:
        """Give a kept base back, whatever state the cell left it in; nothing to do for a base loaded for this cell."""
        loan, self.loan = getattr(self, "loan", None), None
        if loan is not None:
            loan.give_back(getattr(self, "model", None))

    def finish(self, state: TrainState, resumed_from: int | None = None) -> CellResult:
        """The final held-out evaluation and the cell's summary row."""
        m_eval, pairs = self.evaluate()
        eval_log = [*state.eval_log, {**m_eval, "step": state.step, "epoch": state.step / self.steps_per_epoch}]
        tl, bs = state.train_log, self.cell.train.batch_size
        summary = {
            "heldout_accuracy": m_eval["eval_accuracy"],
            "heldout_margin": m_eval["eval_rewards/margins"],
            "heldout_loss": m_eval["eval_loss"],
            "train_margin_first": tl[0]["rewards/margins"],
            "train_margin_last": tl[-1]["rewards/margins"],
            "train_loss_last": tl[-1]["loss"],
            "heldout_pairs": len(self.held_pairs),
            "train_pairs": len(self.train_pairs),
            "truncated_train_pairs": sum(p.truncated for p in self.train_pairs),
            "truncated_heldout_pairs": sum(p.truncated for p in self.held_pairs),
            "steps": state.step,
            "stopped_early": state.stopped_early,
            "train_seconds": state.seconds,
            "reference_seconds": self.reference_seconds,
            "setup_seconds": self.setup_seconds,  # tokenizer, pairs, base model, LoRA, optimizer (reference apart)
            "kept_base": self.kept_base,
            "tokens_per_second": state.tokens / state.seconds if state.seconds > 0 else float("nan"),
            "peak_memory_mb": peak_memory_mb(self.device),
            "trainable_params": self.trainable,
            "device": str(self.device),
            "micro_batch": self.micro,
            "pack_size": self.pack_size,  # cells trained in one forward pass with this one (worker/pack.py)
            "grad_accum": -(-bs // self.micro),
            "resumed_from_step": resumed_from,
        }
        return CellResult(summary, tl, eval_log, pairs)
