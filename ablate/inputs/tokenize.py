"""Turn preference rows into token ids: render message lists with the chat template, tokenize, truncate.

Truncation rule (documented in the README): a prompt keeps its *last* `prompt_budget` tokens (the part
nearest the answer); each completion then keeps its *first* `max_length - len(prompt)` tokens, EOS included
when it fits. A pair whose chosen and rejected become identical after truncation is an error, never a
silent zero-signal pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .data import Row, row_where


def render(row: Row, tokenizer) -> tuple[str, str, str]:
    """Plain strings pass through; TRL-style message lists go through the tokenizer's chat template."""
    p, c, r = row["prompt"], row["chosen"], row["rejected"]
    if not isinstance(p, list):
        return p, c, r
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(["conversational rows need a tokenizer with a chat template; this model has none"])
    prompt = tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)

    def completion(msgs):
        full = tokenizer.apply_chat_template(p + msgs, tokenize=False)
        if not full.startswith(prompt):  # templates that rewrite earlier turns: fall back to the last turn
            return "".join(m["content"] for m in msgs)
        return full[len(prompt) :]

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
    pairs, identical, shortest = [], [], None
    for i, row in enumerate(rows):
        p, c, r = render(row, tokenizer)
        pid = bos + tokenizer(p, add_special_tokens=False)["input_ids"]
        pid = pid or eos or [tokenizer.pad_token_id]  # one context token, so the first completion token is scored
        cid = tokenizer(c, add_special_tokens=False)["input_ids"] + eos
        rid = tokenizer(r, add_special_tokens=False)["input_ids"] + eos
        shortest = len(pid) if shortest is None else min(shortest, len(pid))
        truncated = len(pid) > prompt_budget or max(len(cid), len(rid)) > max_length - min(len(pid), prompt_budget)
        pid = pid[-prompt_budget:]
        room = max_length - len(pid)
        cid, rid = cid[:room], rid[:room]
        if cid == rid:
            identical.append(i)
        pairs.append(Pair(pid, cid, rid, truncated))
    problems = []
    if shortest is not None and shortest > max_length:
        problems.append(
            f"{where}: data.max_length={max_length} is shorter than every prompt (shortest: {shortest} tokens), so "
            f"every prompt would be cut to its last {prompt_budget} tokens; allowed: max_length > {shortest}, "
            "with room for the completions"
        )
    if identical:
        problems.append(
            f"{where}: {len(identical)} pair(s) have identical chosen and rejected after truncation to "
            f"max_length={max_length} (prompt keeps its last {prompt_budget} tokens; "
            f"first: {row_where(rows, identical[0])}); "
            "raise data.max_length or shorten the prompts"
        )
    if problems:
        raise UserError(problems)
    return pairs


def equal_lengths(pairs: list[Pair]) -> list[Pair]:
    """POET (Xiao et al., "Bridging the reward-generation gap"): chosen and rejected keep their first
    min(|y_w|, |y_l|) tokens, so a summed log-prob can no longer be won by length alone (the longer answer
    loses its tail and its EOS). A pair whose shorter answer is a prefix of the longer one becomes two equal
    answers and, for these objectives, contributes no gradient."""
    out = []
    for p in pairs:
        m = min(len(p.chosen), len(p.rejected))
        out.append(Pair(p.prompt, p.chosen[:m], p.rejected[:m], p.truncated))
    return out
