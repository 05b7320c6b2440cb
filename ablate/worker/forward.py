"""One forward pass per batch of pairs → summed and per-token-mean log-probs of each chosen and rejected
completion. Two things make it cheaper than the textbook [2B, T] logits pass, without changing the math:

* **Shared prompt.** With `share_prompt`, a pair is one row [prompt, chosen, rejected]. Position ids restart
  at the end of the prompt for the rejected tokens, and a 4-D mask stops them from seeing the chosen ones,
  so each completion sees exactly what it would see after its own copy of the prompt; the prompt is
  computed once instead of twice. (Without it: 2B rows [prompt, completion], the usual layout; also the
  fallback for flash-attention kernels, which take no 4-D mask.)
* **LM head at completion positions only.** The backbone's hidden states are gathered at the positions
  that predict a completion token, and only those go through the LM head and the fp32 log-softmax
  (in chunks), so no [rows, T, vocab] logits tensor ever exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..inputs.tokenize import Pair

HEAD_CHUNK = 2048  # completion tokens per LM-head + log-softmax chunk


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, L]
    position_ids: torch.Tensor  # [rows, L]
    attention_mask: torch.Tensor  # [rows, L] padding mask, or [rows, 1, L, L] bool (True = may attend)
    pred: torch.Tensor  # [N] flat index (row * L + t) of the hidden state that predicts each scored token
    target: torch.Tensor  # [N] the scored token ids
    seq: torch.Tensor  # [N] which output each token belongs to: 0..B-1 chosen, B..2B-1 rejected
    index: list[int]  # pair indices
    tokens: int  # tokens as an unshared [prompt, completion] layout would count them

    def to(self, device) -> Batch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(
            move(self.input_ids),
            move(self.position_ids),
            move(self.attention_mask),
            move(self.pred),
            move(self.target),
            move(self.seq),
            self.index,
            self.tokens,
        )


def collate(pairs: list[Pair], index: list[int], pad_id: int, share_prompt: bool = True) -> Batch:
    B = len(index)
    rows = (
        [[(pairs[i].prompt, 0), (pairs[i].chosen, 1), (pairs[i].rejected, 2)] for i in index]
        if share_prompt
        else [[(pairs[i].prompt, 0), (pairs[i].chosen, 1)] for i in index]
        + [[(pairs[i].prompt, 0), (pairs[i].rejected, 2)] for i in index]
    )
    L = max(sum(len(part) for part, _ in row) for row in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), L), dtype=torch.long)
    seg = torch.full((len(rows), L), 3, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, 3 padding
    pred, target, seq = [], [], []
    tokens = 0
    for r, row in enumerate(rows):
        t, plen = 0, len(row[0][0])
        for part, kind in row:
            n = len(part)
            ids[r, t : t + n] = torch.tensor(part, dtype=torch.long)
            seg[r, t : t + n] = kind
            start = 0 if kind == 0 else plen  # a completion's positions continue from the prompt
            pos[r, t : t + n] = torch.arange(start, start + n)
            if kind:
                out = (r if share_prompt or kind == 1 else r - B) + (B if kind == 2 else 0)
                before = torch.arange(t - 1, t + n - 1)
                before[0] = plen - 1  # the first token is predicted by the prompt's end
                keep = before >= 0  # an empty prompt leaves the first token unpredicted
                pred.append(r * L + before[keep])
                target.append(torch.tensor(part, dtype=torch.long)[keep])
                seq.append(torch.full((int(keep.sum()),), out, dtype=torch.long))
            t += n
        tokens += t + (plen if share_prompt else 0)
    if share_prompt:
        q, k = seg.unsqueeze(2), seg.unsqueeze(1)
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        mask = causal & (k != 3) & ~((q == 2) & (k == 1))
        mask |= torch.eye(L, dtype=torch.bool) & (q == 3)  # padding rows see themselves: no empty softmax
        attn = mask.unsqueeze(1)
    else:
        attn = (seg != 3).long()
    return Batch(ids, pos, attn, torch.cat(pred), torch.cat(target), torch.cat(seq), list(index), tokens)


def _plain_head(hf) -> bool:
    """True when logits are just lm_head(last hidden state): no soft-capping or scaling after the head."""
    cfg = hf.config
    extra = any(
        getattr(cfg, k, None) not in (None, 1, 1.0)
        for k in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
    )
    return not extra and hf.get_output_embeddings() is not None and hasattr(hf, hf.base_model_prefix)


class Forward:
    """Log-probs of a batch's completions under `model` (a PEFT model or a plain causal LM)."""

    def __init__(self, model, compile: bool = False):
        self.model = model
        hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.fast = _plain_head(hf)
        if self.fast:
            self.backbone = getattr(hf, hf.base_model_prefix)
            self.head = hf.get_output_embeddings()
            self.run_backbone = torch.compile(self.backbone) if compile else self.backbone
        else:
            self.run_model = torch.compile(model) if compile else model

    def __call__(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sum [2B], mean [2B], scored tokens [2B]): chosen outputs first, then rejected."""
        if self.fast:
            h = self.run_backbone(
                input_ids=b.input_ids, attention_mask=self._mask(b), position_ids=b.position_ids, use_cache=False
            ).last_hidden_state
            h = h.reshape(-1, h.shape[-1])[b.pred]
            lp = torch.cat(
                [
                    self._logp(self.head(h[s : s + HEAD_CHUNK]), b.target[s : s + HEAD_CHUNK])
                    for s in range(0, len(b.pred), HEAD_CHUNK)
                ]
            )
        else:
            logits = self.run_model(
                input_ids=b.input_ids, attention_mask=self._mask(b), position_ids=b.position_ids, use_cache=False
            ).logits
            lp = self._logp(logits.reshape(-1, logits.shape[-1])[b.pred], b.target)
        n_out = 2 * len(b.index)
        total = torch.zeros(n_out, dtype=lp.dtype, device=lp.device).index_add(0, b.seq, lp)
        n = torch.bincount(b.seq, minlength=n_out).to(lp.dtype)
        return total, total / n.clamp(min=1), n

    def _mask(self, b: Batch) -> torch.Tensor:
        if b.attention_mask.dim() == 2:
            return b.attention_mask
        # An additive mask in the model's dtype works for both the sdpa and the eager attention.
        dtype = self.model.get_input_embeddings().weight.dtype
        return torch.zeros(b.attention_mask.shape, dtype=dtype, device=b.attention_mask.device).masked_fill(
            ~b.attention_mask, torch.finfo(dtype).min
        )

    @staticmethod
    def _logp(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits.float().log_softmax(-1).gather(1, target.unsqueeze(1)).squeeze(1)
