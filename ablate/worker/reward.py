"""A reward model's scores for answers (the `{reward_model: …}` judge), on a Ray worker: the driver never loads
torch. One score per (prompt, answer): the model's single output for the pair, rendered with the reward
model's own chat template when it has one (that is how such models are trained), else prompt + answer."""

from __future__ import annotations

import json

import torch


def _text(tok, prompt: str, messages: str | None, answer: str) -> str:
    if getattr(tok, "chat_template", None):
        turns = json.loads(messages) if messages else [{"role": "user", "content": prompt}]
        return tok.apply_chat_template([*turns, {"role": "assistant", "content": answer}], tokenize=False)
    return prompt + answer


@torch.no_grad()
def reward_scores(path: str, revision: str | None, items: list[dict], batch_size: int, device: str = "auto",
                  max_length: int = 4096) -> list[float]:  # fmt: skip
    """Scores for items {prompt, messages, answer}, in order. A model that is not a one-output sequence
    classifier is refused with a ValueError that says so."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dev = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(path, revision=revision)
    model = AutoModelForSequenceClassification.from_pretrained(path, revision=revision).to(dev).eval()
    if model.config.num_labels != 1:
        raise ValueError(f"{path}: not a reward model: {model.config.num_labels} outputs (a reward model has 1)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id  # the classifier pools the last token that is not padding
    tok.padding_side = "right"
    texts = [_text(tok, it["prompt"], it.get("messages"), it["answer"]) for it in items]
    out: list[float] = []
    for s in range(0, len(texts), batch_size):
        enc = tok(texts[s : s + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out += model(**enc.to(dev)).logits[:, 0].float().cpu().tolist()
    return out
