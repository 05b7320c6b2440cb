"""Turn preference rows into token ids: render message lists with the chat template, tokenize, truncate.

Truncation rule (documented in the README): a prompt keeps its *last* `prompt_budget` tokens (the part
nearest the answer); each completion then keeps its *first* `max_length - len(prompt)` tokens, its end (EOS, or
the chat template's end of turn) included when it fits. A pair whose chosen and rejected become identical after
truncation is an error, never a silent zero-signal pair.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .data import Row, row_where


def is_conversational(row: Row) -> bool:
    """TRL's conversational layout: prompt, chosen and rejected are message lists (data.py refuses mixed rows)."""
    return isinstance(row["prompt"], list)


def template_problem(rows: dict[str, list[Row]], tokenizer, model: str) -> str | None:
    """Conversational rows need the tokenizer's chat template: one line for all splits, naming the first row."""
    if getattr(tokenizer, "chat_template", None):
        return None
    found = {split: [i for i, r in enumerate(rs) if is_conversational(r)] for split, rs in rows.items()}
    found = {split: idx for split, idx in found.items() if idx}
    if not found:
        return None
    split, idx = next(iter(found.items()))
    counts = ", ".join(f"{len(v)} in data.{k}" for k, v in found.items())
    return (
        f"{row_where(rows[split], idx[0])}: data.{split}: prompt: a conversational row (message lists) needs a chat "
        f"template, and the tokenizer of {model} has none ({counts}); give plain-text rows (prompt, chosen, "
        "rejected as strings) or a model whose tokenizer has a chat template"
    )


def render(row: Row, tokenizer) -> tuple[str, tuple[str, bool], tuple[str, bool]]:
    """The prompt text, and each completion's text with whether the chat template wrote it (then it already ends
    with the template's end of turn). Plain strings pass through; message lists go through the chat template."""
    p, c, r = row["prompt"], row["chosen"], row["rejected"]
    if not is_conversational(row):
        return p, (c, False), (r, False)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(["conversational rows need a tokenizer with a chat template; this model has none"])
    prompt = tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)

    def completion(msgs) -> tuple[str, bool]:
        full = tokenizer.apply_chat_template(p + msgs, tokenize=False)
        if not full.startswith(prompt):  # templates that rewrite earlier turns: fall back to the last turn
            return "".join(m["content"] for m in msgs), False
        return full[len(prompt) :], True

    return prompt, completion(c), completion(r)


@dataclass
class Pair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    truncated: bool


def encode(rows: list[Row], tokenizer, max_length: int, prompt_budget: int, where: str) -> list[Pair]:
    """Token ids of every pair. Plain text gets the tokenizer's BOS before the prompt and EOS after each completion.
    A chat template already writes both: its own start (e.g. Llama 3's <|begin_of_text|>) and each turn's end
    (ChatML's <|im_end|>, which Qwen uses as EOS). Adding them again doubled the end of turn, the bug TRL fixed in
    its DPO preprocessing in January 2026 (EOS only for non-conversational data); ablate does the same."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if not getattr(tokenizer, "chat_template", None):
        conversational = next((i for i, row in enumerate(rows) if is_conversational(row)), None)
        if conversational is not None:
            raise UserError(
                [
                    f"{where}: {row_where(rows, conversational)}: prompt: a conversational row (message lists) needs "
                    "a chat template, and this model's tokenizer has none; give plain-text rows or such a model"
                ]
            )
    pairs, identical, shortest = [], [], None
    for i, row in enumerate(rows):
        p, (c, c_templated), (r, r_templated) = render(row, tokenizer)
        pid = ([] if is_conversational(row) else bos) + tokenizer(p, add_special_tokens=False)["input_ids"]
        pid = pid or eos or [tokenizer.pad_token_id]  # one context token, so the first completion token is scored
        cid = tokenizer(c, add_special_tokens=False)["input_ids"] + ([] if c_templated else eos)
        rid = tokenizer(r, add_special_tokens=False)["input_ids"] + ([] if r_templated else eos)
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
