"""The base model a cell trains on, with its tokenizer and encoded pairs, and the log-probs of every pair under a
model: the evaluation pass, and the reference pass (π_ref: the base without an adapter), which the recipe shares.
"""

from __future__ import annotations

import torch

from ..config import CellConfig, Runtime
from ..inputs.models import load_model, load_tokenizer
from ..inputs.tokenize import Pair, encode, equal_lengths
from ..schema import ModelSpec
from . import bases
from .forward import Forward, collate


def device_for(runtime: Runtime) -> torch.device:
    """CUDA when the cell asked for a GPU (Ray then exposes only its share), or when run outside Ray with one;
    a cell with gpus_per_cell 0 stays on CPU even on a GPU node, since Ray accounted no GPU for it."""
    if runtime.device == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base(model_spec: ModelSpec, runtime: Runtime, rows: dict[str, list[dict]], data, truncate="none") -> tuple:
    """Tokenizer, encoded pairs per split and the base model: what the recipe and the reference pass share.
    `truncate="equal"` (POET) cuts the training pairs only: every cell is judged on the same held-out pairs."""
    if runtime.keep_base:  # a long-lived trainer: the same objects as last cell (worker/bases.py)
        tok = bases.tokenizer(model_spec)
        pairs = {s: bases.encoded(s, r, tok, data, truncate, model_spec) for s, r in rows.items()}
        return tok, pairs, bases.base_model(model_spec, device_for(runtime), runtime.attention)
    tok = load_tokenizer(model_spec)
    pairs = {s: encode(r, tok, data.max_length, data.prompt_budget, f"data.{s}") for s, r in rows.items()}
    if truncate == "equal" and "train" in pairs:
        pairs["train"] = equal_lengths(pairs["train"])
    model = load_model(model_spec, device_for(runtime), runtime.attention)
    return tok, pairs, model


@torch.no_grad()
def all_logps(
    fwd: Forward, pairs: list[Pair], batch_size: int, pad_id: int, device, share: bool
) -> dict[str, torch.Tensor]:
    """Summed/averaged log-probs and lengths of every pair (eval mode); with the adapter disabled this is
    the reference, computed once instead of once per step."""
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("c_sum", "r_sum", "c_avg", "r_avg", "c_len", "r_len")}
    for s in range(0, len(pairs), batch_size):
        b = collate(pairs, list(range(s, min(s + batch_size, len(pairs)))), pad_id, share).to(device)
        total, avg, n = fwd(b)
        B = len(b.index)
        for key, t in (("sum", total), ("avg", avg), ("len", n)):
            cols[f"c_{key}"].append(t[:B].cpu())
            cols[f"r_{key}"].append(t[B:].cpu())
    return {k: torch.cat(v) for k, v in cols.items()}


def reference_logps(cell: CellConfig, model_spec: ModelSpec, train_rows, heldout_rows, runtime: Runtime) -> dict:
    """π_ref's log-probs (the frozen base model) for every train and held-out pair. They depend only on model,
    data, lengths and eval batch — not on rank, β or seed — so one computation serves every cell that needs
    them (see CellConfig.reference_key)."""
    tok, pairs, model = load_base(
        model_spec, runtime, {"train": train_rows, "heldout": heldout_rows}, cell.data, cell.truncate
    )
    loan = bases.lend(model) if runtime.keep_base else None
    try:
        fwd, bs = Forward(model.eval()), runtime.eval_batch_size or cell.train.eval_batch_size
        device = device_for(runtime)
        return {s: all_logps(fwd, ps, bs, tok.pad_token_id, device, runtime.shares_prompt) for s, ps in pairs.items()}
    finally:
        if loan is not None:
            loan.give_back(model)
