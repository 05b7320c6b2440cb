"""Objectives as small pure functions over per-sequence log-prob tensors.

Each takes `LogProbs` for chosen and rejected (summed and averaged over completion tokens, token counts,
plus the reference's sums when the objective uses one) and its knobs, and returns a `LossOut`: per-pair
loss, chosen and rejected reward, and any objective-specific per-pair values to log (`margins/gamma`...).
What else an objective needs (its knobs, whether it uses the reference) is its entry in the registry,
ablate/objectives.py; the training loop never branches on the objective's name.
Rewards are not comparable across objectives: DPO's are summed and reference-relative, SimPO's and
ORPO's are per-token averages. γ-PO and AMaPO read statistics of the batch they are given (the
micro-batch in training, the whole held-out set in evaluation), as do the NLL terms (`sft_weight`),
which average over all chosen tokens of the batch as TRL and the SimPO authors do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import objectives


@dataclass
class LogProbs:
    """Per-sequence statistics of one side (chosen or rejected) of a batch of pairs, shape [B]."""

    sum: torch.Tensor
    avg: torch.Tensor
    ref_sum: torch.Tensor | None = None  # same sequences, adapter disabled (objectives with a reference)
    n: torch.Tensor | None = None  # completion tokens scored (after truncation)

    @property
    def log_ratio(self) -> torch.Tensor:
        """Σ log π - Σ log π_ref."""
        assert self.ref_sum is not None, "this objective needs the reference log-probs"
        return self.sum - self.ref_sum

    @property
    def tokens(self) -> torch.Tensor:
        assert self.n is not None, "this objective needs the completion lengths"
        return self.n

    @property
    def ref_avg(self) -> torch.Tensor:
        assert self.ref_sum is not None, "this objective needs the reference log-probs"
        return self.ref_sum / self.tokens.clamp(min=1)


class LossOut(NamedTuple):
    loss: torch.Tensor  # [B], the step's loss is its sum over the batch / pairs in the step
    chosen_reward: torch.Tensor  # [B], detached
    rejected_reward: torch.Tensor
    logs: dict[str, torch.Tensor] = {}  # per-pair values, logged as their mean under these names


def _sigmoid_loss(logits: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """-log σ(x), mixed with -log σ(-x) by the label-flip rate ε (cDPO); ε = 0 is the plain loss, bit for bit."""
    if not smoothing:
        return -F.logsigmoid(logits)
    return -(1 - smoothing) * F.logsigmoid(logits) - smoothing * F.logsigmoid(-logits)


def _batch_nll(c: LogProbs, weight: float) -> dict[str, torch.Tensor]:
    """weight·NLL(y_w) as TRL's CPO `cpo_alpha` and the SimPO authors' `sft_weight` compute it: the mean over
    every chosen token of the batch (a longer chosen answer weighs more), spread over the pairs so that the
    mean of the per-pair values is that number."""
    if not weight:
        return {}
    return {"nll_loss": -c.sum * (len(c.sum) / c.tokens.sum().clamp(min=1)) * weight}


def dpo_loss(c: LogProbs, r: LogProbs, beta: float, label_smoothing: float = 0.0) -> LossOut:
    """Rafailov et al. 2023: -log σ(β·((Σπ_w - Σπref_w) - (Σπ_l - Σπref_l))); ε > 0 is cDPO."""
    chosen, rejected = beta * c.log_ratio, beta * r.log_ratio
    return LossOut(_sigmoid_loss(chosen - rejected, label_smoothing), chosen.detach(), rejected.detach())


def robust_loss(c: LogProbs, r: LogProbs, beta: float, label_smoothing: float) -> LossOut:
    """Chowdhury et al. 2024 (TRL `robust`): an unbiased loss under labels flipped at rate ε,
    ((1-ε)·(-log σ(βh)) - ε·(-log σ(-βh))) / (1 - 2ε), h the DPO log-ratio margin."""
    chosen, rejected = beta * c.log_ratio, beta * r.log_ratio
    h = chosen - rejected
    eps = label_smoothing
    loss = (-(1 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1 - 2 * eps)
    return LossOut(loss, chosen.detach(), rejected.detach())


def hinge_loss(c: LogProbs, r: LogProbs, beta: float) -> LossOut:
    """SLiC (Zhao et al. 2023; TRL `hinge`): max(0, 1 - β·h), h the DPO log-ratio margin (1/β is the margin)."""
    chosen, rejected = beta * c.log_ratio, beta * r.log_ratio
    return LossOut(torch.relu(1 - (chosen - rejected)), chosen.detach(), rejected.detach())


def ipo_loss(c: LogProbs, r: LogProbs, tau: float) -> LossOut:
    """Azar et al. 2024 (TRL `ipo`): (h - 1/(2τ))², h on per-token-mean log-ratios, as TRL (and the IPO
    authors' own runs) normalise by completion length."""
    chosen, rejected = c.avg - c.ref_avg, r.avg - r.ref_avg
    loss = (chosen - rejected - 1 / (2 * tau)) ** 2
    return LossOut(loss, (tau * chosen).detach(), (tau * rejected).detach())


def rdpo_loss(c: LogProbs, r: LogProbs, beta: float, alpha: float) -> LossOut:
    """Park et al. 2024, R-DPO: -log σ(β·h + α·(|y_w| - |y_l|)). The RLHF objective with a length penalty
    α·|y| has the implicit reward β·log π/π_ref + α·|y|; the length term then explains the part of a
    preference that length predicts, so the policy need not learn it. Rewards are β·log-ratio (no α)."""
    chosen, rejected = beta * c.log_ratio, beta * r.log_ratio
    length = alpha * (c.tokens - r.tokens).to(chosen.dtype)
    return LossOut(
        -F.logsigmoid(chosen - rejected + length), chosen.detach(), rejected.detach(), {"margins/length": length}
    )


def simpo_loss(c: LogProbs, r: LogProbs, beta: float, gamma: float, sft_weight: float = 0.0) -> LossOut:
    """Meng et al. 2024: -log σ(β·(p̄_w - p̄_l) - γ), γ in reward units (TRL's simpo_gamma), + w·NLL(y_w)."""
    chosen, rejected = beta * c.avg, beta * r.avg
    loss = -F.logsigmoid(chosen - rejected - gamma)
    logs = _batch_nll(c, sft_weight)
    if logs:
        loss = loss + logs["nll_loss"]
    return LossOut(loss, chosen.detach(), rejected.detach(), logs)


def cpo_loss(c: LogProbs, r: LogProbs, beta: float, sft_weight: float) -> LossOut:
    """Xu et al. 2024 (TRL CPOTrainer, loss_type sigmoid): -log σ(β·(S_w - S_l)) + w·NLL(y_w), no reference."""
    chosen, rejected = beta * c.sum, beta * r.sum
    loss = -F.logsigmoid(chosen - rejected)
    logs = _batch_nll(c, sft_weight)
    if logs:
        loss = loss + logs["nll_loss"]
    return LossOut(loss, chosen.detach(), rejected.detach(), logs)


def gamma_po_margins(gaps: torch.Tensor, gamma0: float, tau: float, iters: int = 20) -> torch.Tensor:
    """γ-PO's instance-wise target margins for one batch of reward gaps r_i (sunjie279/gammaPO, batch version):
    mirror descent on the simplex for weights p (from 1/n), each step against the gradient
    τ·(1 + log(n·p_i)) + γ0·σ(γ_i - r_i) of a KL-regularised objective, with γ_i = γ0·n·p_i. Pairs whose gap
    already clears the margin give weight to those that do not. Returned detached: a margin is a target."""
    gaps = gaps.detach()
    n = gaps.numel()
    lr = min(0.5 / tau, 1.0)
    p = torch.full_like(gaps, 1.0 / n)
    for _ in range(iters):
        gamma = gamma0 * n * p
        grad = tau * (1 + torch.log(n * (p + 1e-10))) + gamma0 * torch.sigmoid(gamma - gaps)
        w = p * torch.exp(-lr * grad)
        p = w / w.sum()
    return gamma  # the margins the last step was taken at, as in the authors' code


def gamma_po_loss(c: LogProbs, r: LogProbs, beta: float, gamma: float, tau: float) -> LossOut:
    """γ-PO: SimPO with per-pair margins γ_i from `gamma_po_margins` over the batch: -log σ(r_i - γ_i)."""
    chosen, rejected = beta * c.avg, beta * r.avg
    gaps = chosen - rejected
    margins = gamma_po_margins(gaps, gamma, tau)
    # The margins always average to γ0 (the weights stay on the simplex); their spread is what γ-PO adds.
    logs = {"margins/gamma": margins, "margins/gamma_mad": (margins - gamma).abs()}
    return LossOut(-F.logsigmoid(gaps - margins), chosen.detach(), rejected.detach(), logs)


def amapo_loss(c: LogProbs, r: LogProbs, beta: float) -> LossOut:
    """AMaPO (Deng et al.; Shiroha-Offical/AMaPO `amapo_loss`): pairs whose gap Δ_i = p̄_w - p̄_l is below the
    batch mean μ get the margin β·exp(((μ - Δ_i)/σ)·μ) (σ the unbiased standard deviation), the others none:
    -log σ(β·Δ_i - m_i). A batch of one pair, or of equal gaps, has no spread and gets no margins."""
    chosen, rejected = beta * c.avg, beta * r.avg
    delta = (c.avg - r.avg).detach()
    margins = torch.zeros_like(delta)
    if delta.numel() > 1:
        mu, sd = delta.mean(), delta.std()
        if sd > 0:
            margins = beta * torch.where(delta < mu, torch.exp((mu - delta) / sd * mu), margins)
    return LossOut(
        -F.logsigmoid(chosen - rejected - margins), chosen.detach(), rejected.detach(), {"margins/amapo": margins}
    )


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (Mächler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(c: LogProbs, r: LogProbs, lam: float) -> LossOut:
    """Hong et al. 2024: NLL(y_w) - λ·log σ(log odds(y_w) - log odds(y_l)), odds from average log-probs."""
    cw, cl = c.avg.float(), r.avg.float()
    log_odds = (cw - log1mexp(cw)) - (cl - log1mexp(cl))
    loss = -cw - lam * F.logsigmoid(log_odds)
    return LossOut(loss, (lam * cw).detach(), (lam * cl).detach())


def loss_for(name: str) -> Callable[[LogProbs, LogProbs, dict], LossOut]:
    """The registered objective's loss as f(chosen, rejected, cell params): its knobs, in the registry's order
    (a knob left out of the cell's hashed parameters at its neutral value gets that value)."""
    fn = globals()[objectives.get(name).loss]
    return lambda c, r, params: fn(c, r, *objectives.knob_values(name, params))
