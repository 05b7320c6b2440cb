"""Preference pairs: load (builtin or JSONL), check, hash, render, tokenize, truncate, batch.

Truncation rule (documented in the README): a prompt keeps its *last* `prompt_budget` tokens (the
part nearest the answer); the completion then keeps its *first* `max_length - len(prompt)` tokens,
EOS included when it fits. A pair whose chosen and rejected become identical after truncation is an
error, never a silent zero-signal pair.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .builtin import builtin_rows
from .spec import BuiltinData, MatrixError

Row = dict[str, Any]


def load_rows(source: BuiltinData | str, split: str) -> list[Row]:
    """Raw rows, with every problem in the file collected into one MatrixError."""
    if isinstance(source, BuiltinData):
        return builtin_rows(source, split)
    if source.startswith("builtin:"):
        raise MatrixError([f"data.{split}: {source!r}: builtin data is written as a mapping, e.g. {{builtin: letters}}"])
    path = Path(source)
    if not path.is_file():
        raise MatrixError([f"data.{split}: {source}: no such file (expected a JSONL file of prompt/chosen/rejected)"])
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise MatrixError([f"{source}: not UTF-8 text (byte {e.start})"]) from None
    rows, problems = [], []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{source}:{i}: not valid JSON ({e.msg})")
            continue
        problems += [f"{source}:{i}: {p}" for p in _row_problems(row)]
        rows.append(row)
    if not rows and not problems:
        problems.append(f"{source}: no pairs (the {split} set must not be empty)")
    if problems:
        raise MatrixError(problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []))
    return rows


def _row_problems(row: Any) -> list[str]:
    if not isinstance(row, dict):
        return ["each line must be a JSON object with prompt, chosen, rejected"]
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
    if missing:
        return [f"missing field(s) {missing}; each row needs prompt, chosen, rejected"]
    out = []
    for k in ("prompt", "chosen", "rejected"):
        v = row[k]
        if isinstance(v, list):
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in v):
                out.append(f"{k}: a message list must hold {{role, content}} objects")
            elif k != "prompt" and not v:
                out.append(f"{k}: empty completion")
        elif not isinstance(v, str):
            out.append(f"{k}: must be a string or a list of messages, got {type(v).__name__}")
        elif k != "prompt" and not v.strip():
            out.append(f"{k}: empty completion")
    if not out and row["chosen"] == row["rejected"]:
        out.append("chosen == rejected; a pair must differ")
    return out


def rows_hash(rows: list[Row]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["prompt"], r["chosen"], r["rejected"]], sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def check_leakage(train: list[Row], heldout: list[Row], where: str) -> list[str]:
    key = lambda r: json.dumps([r["prompt"], r["chosen"], r["rejected"]], sort_keys=True)  # noqa: E731
    seen = {key(r) for r in train}
    dup = [i for i, r in enumerate(heldout, 1) if key(r) in seen]
    if dup:
        return [f"{where}: {len(dup)} held-out pair(s) also appear in the training set (first: held-out row {dup[0]}); "
                "held-out pairs must be unseen"]
    return []


# ---------------------------------------------------------------------------------------------
# Rendering and tokenization.


def render(row: Row, tokenizer) -> tuple[str, str, str]:
    """Plain strings pass through; TRL-style message lists go through the tokenizer's chat template."""
    p, c, r = row["prompt"], row["chosen"], row["rejected"]
    if not isinstance(p, list):
        return p, c, r
    if not getattr(tokenizer, "chat_template", None):
        raise MatrixError(["conversational rows need a tokenizer with a chat template; this model has none"])
    prompt = tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)

    def completion(msgs):
        full = tokenizer.apply_chat_template(p + msgs, tokenize=False)
        if not full.startswith(prompt):  # templates that rewrite earlier turns: fall back to the last turn
            return "".join(m["content"] for m in msgs)
        return full[len(prompt):]

    return prompt, completion(c), completion(r)


@dataclass
class Pair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    truncated: bool


def encode(rows: list[Row], tokenizer, max_length: int, prompt_budget: int, where: str) -> list[Pair]:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pairs, identical = [], []
    for i, row in enumerate(rows, 1):
        p, c, r = render(row, tokenizer)
        pid = bos + tokenizer(p, add_special_tokens=False)["input_ids"]
        cid = tokenizer(c, add_special_tokens=False)["input_ids"] + eos
        rid = tokenizer(r, add_special_tokens=False)["input_ids"] + eos
        truncated = len(pid) > prompt_budget or max(len(cid), len(rid)) > max_length - min(len(pid), prompt_budget)
        pid = pid[-prompt_budget:]
        room = max_length - len(pid)
        cid, rid = cid[:room], rid[:room]
        if cid == rid:
            identical.append(i)
        pairs.append(Pair(pid, cid, rid, truncated))
    if identical:
        raise MatrixError([
            f"{where}: {len(identical)} pair(s) have identical chosen and rejected after truncation to "
            f"max_length={max_length} (prompt keeps its last {prompt_budget} tokens; first: row {identical[0]}); "
            "raise data.max_length or shorten the prompts"
        ])
    return pairs


@dataclass
class Batch:
    input_ids: torch.Tensor  # [2B, T]: chosen rows first, then rejected rows
    attention_mask: torch.Tensor  # [2B, T]
    loss_mask: torch.Tensor  # [2B, T]: 1 on completion tokens only, aligned with input_ids
    index: list[int]  # pair indices

    def to(self, device):
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device), self.index)


def collate(pairs: list[Pair], index: list[int], pad_id: int) -> Batch:
    """Chosen and rejected of each pair, right-padded into one [2B, T] batch for one forward pass."""
    seqs = [(pairs[i].prompt, pairs[i].chosen) for i in index] + [(pairs[i].prompt, pairs[i].rejected) for i in index]
    T = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for row, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[row, :n] = torch.tensor(p + c)
        attn[row, :n] = 1
        mask[row, len(p):n] = 1
    return Batch(ids, attn, mask, list(index))
