"""Objectives as small pure functions over per-sequence log-prob tensors.

Each takes `LogProbs` for chosen and rejected (summed and averaged over completion tokens, plus the
reference's sums when the objective uses one) and returns (per-pair loss, chosen reward, rejected
reward). What else an objective needs (its knobs, whether it uses the reference) is its entry in the
registry, ablate/objectives.py; the training loop never branches on the objective's name.
Rewards are not comparable across objectives: DPO's are summed and reference-relative, SimPO's and
ORPO's are per-token averages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import objectives


@dataclass
class LogProbs:
    """Per-sequence statistics of one side (chosen or rejected) of a batch of pairs, shape [B]."""

    sum: torch.Tensor
    avg: torch.Tensor
    ref_sum: torch.Tensor | None = None  # same sequences, adapter disabled (DPO only)
    nll: torch.Tensor | None = None  # per-token-averaged NLL (= -avg), kept for ORPO's SFT term


LossOut = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def dpo_loss(c: LogProbs, r: LogProbs, beta: float) -> LossOut:
    """Rafailov et al. 2023: -log σ(β·((Σπ_w - Σπref_w) - (Σπ_l - Σπref_l)))."""
    chosen = beta * (c.sum - c.ref_sum)
    rejected = beta * (r.sum - r.ref_sum)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


def simpo_loss(c: LogProbs, r: LogProbs, beta: float, gamma: float) -> LossOut:
    """Meng et al. 2024: -log σ(β·(p̄_w - p̄_l) - γ), γ in reward units (TRL's simpo_gamma)."""
    chosen, rejected = beta * c.avg, beta * r.avg
    return -F.logsigmoid(chosen - rejected - gamma), chosen.detach(), rejected.detach()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (Mächler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(c: LogProbs, r: LogProbs, lam: float) -> LossOut:
    """Hong et al. 2024: NLL(y_w) - λ·log σ(log odds(y_w) - log odds(y_l)), odds from average log-probs."""
    cw, cl = c.avg.float(), r.avg.float()
    log_odds = (cw - log1mexp(cw)) - (cl - log1mexp(cl))
    loss = -cw - lam * F.logsigmoid(log_odds)
    return loss, (lam * cw).detach(), (lam * cl).detach()


def loss_for(name: str) -> Callable[[LogProbs, LogProbs, dict], LossOut]:
    """The registered objective's loss as f(chosen, rejected, cell params): its knobs, in the registry's order."""
    entry = objectives.get(name)
    fn = globals()[entry.loss]
    return lambda c, r, params: fn(c, r, *(params[k] for k in entry.knobs))
