"""The textbook pass, kept as the independent reference for the fast forward (worker/forward.py): chosen and
rejected right-padded into one [2B, T] batch, full-vocabulary logits, and the shifted log-probs of the
completion tokens. tests/test_forward.py and bench/vs_trl.py compare the fast path with this."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..inputs.tokenize import Pair


@dataclass
class Batch:
    input_ids: torch.Tensor  # [2B, T]: chosen rows first, then rejected rows
    attention_mask: torch.Tensor  # [2B, T]
    loss_mask: torch.Tensor  # [2B, T]: 1 on completion tokens only, aligned with input_ids
    index: list[int]  # pair indices

    def to(self, device):
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device), self.index)


def collate(pairs: list[Pair], index: list[int], pad_id: int) -> Batch:
    """Chosen and rejected of each pair, right-padded into one [2B, T] batch (training uses forward.collate)."""
    seqs = [(pairs[i].prompt, pairs[i].chosen) for i in index] + [(pairs[i].prompt, pairs[i].rejected) for i in index]
    T = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for row, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[row, :n] = torch.tensor(p + c)
        attn[row, :n] = 1
        mask[row, len(p) : n] = 1
    return Batch(ids, attn, mask, list(index))


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor, chunk: int = 8):
    """Summed and averaged log-probs of completion tokens, with the one-token label shift, from full logits.

    Logits at position t predict token t+1, so a token counts when loss_mask is 1 at its own position.
    Rows are processed in chunks so the fp32 log-softmax never holds the whole [N, T, V] at once.
    Returns (sum [N], avg [N], n_tokens [N]).
    """
    labels = input_ids[:, 1:]
    mask = loss_mask[:, 1:].to(torch.float32)
    out = []
    for s in range(0, logits.shape[0], chunk):
        lg = logits[s : s + chunk, :-1].float()
        lp = torch.gather(lg.log_softmax(-1), 2, labels[s : s + chunk].unsqueeze(-1)).squeeze(-1)
        out.append(lp)
    per_token = torch.cat(out) * mask
    n = mask.sum(-1)
    total = per_token.sum(-1)
    return total, total / n.clamp(min=1), n
