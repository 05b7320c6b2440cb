"""Each objective against an independent computation: TRL's own loss functions on the same log-probs
(SimPO via CPOTrainer.cpo_loss, ORPO via ORPOTrainer.odds_ratio_loss) and hand-computed DPO."""

import math
import os
from types import SimpleNamespace

import pytest
import torch

from ablate.worker.losses import LogProbs, dpo_loss, log1mexp, orpo_loss, simpo_loss
from ablate.worker.textbook import token_logprobs

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402

g = torch.Generator().manual_seed(0)
B = 7
SUM_W, SUM_L = -torch.rand(B, generator=g) * 40, -torch.rand(B, generator=g) * 40
REF_W, REF_L = -torch.rand(B, generator=g) * 40, -torch.rand(B, generator=g) * 40
AVG_W, AVG_L = -torch.rand(B, generator=g) * 3 - 0.01, -torch.rand(B, generator=g) * 3 - 0.01
TRL_SELF = dict(alpha=0.0, label_smoothing=0.0, accelerator=SimpleNamespace(device="cpu"))


def test_dpo_matches_hand_computation():
    beta = 0.1
    loss, cr, rr = dpo_loss(LogProbs(SUM_W, AVG_W, REF_W), LogProbs(SUM_L, AVG_L, REF_L), beta)
    for i in range(B):
        logits = beta * ((SUM_W[i] - REF_W[i]) - (SUM_L[i] - REF_L[i])).item()
        assert loss[i].item() == pytest.approx(math.log1p(math.exp(-logits)), rel=1e-6)
        assert cr[i].item() == pytest.approx(beta * (SUM_W[i] - REF_W[i]).item(), rel=1e-6)
        assert rr[i].item() == pytest.approx(beta * (SUM_L[i] - REF_L[i]).item(), rel=1e-6)


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (10.0, 3.0), (2.5, 0.0)])
def test_simpo_matches_trl(beta, gamma):
    trl_self = SimpleNamespace(loss_type="simpo", beta=beta, simpo_gamma=gamma, **TRL_SELF)
    want, want_c, want_r = CPOTrainer.cpo_loss(trl_self, AVG_W, AVG_L)
    loss, cr, rr = simpo_loss(LogProbs(SUM_W, AVG_W), LogProbs(SUM_L, AVG_L), beta, gamma)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(cr, want_c)
    torch.testing.assert_close(rr, want_r)


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_matches_trl(lam):
    trl_self = SimpleNamespace(beta=lam, **TRL_SELF)
    ratio_term, want_c, want_r, _, _ = ORPOTrainer.odds_ratio_loss(trl_self, AVG_W, AVG_L)
    loss, cr, rr = orpo_loss(LogProbs(SUM_W, AVG_W), LogProbs(SUM_L, AVG_L), lam)
    # TRL returns λ·log σ(log odds ratio); its total loss is NLL(y_w) - that term.
    torch.testing.assert_close(loss, -AVG_W - ratio_term)
    torch.testing.assert_close(cr, want_c)
    torch.testing.assert_close(rr, want_r)


def test_log1mexp_is_stable_on_both_branches():
    x = torch.tensor([-1e-8, -0.1, -math.log(2), -1.0, -30.0], dtype=torch.float64)
    want = torch.log(1 - torch.exp(x))
    torch.testing.assert_close(log1mexp(x), want, rtol=1e-6, atol=1e-12)
    assert torch.isfinite(log1mexp(torch.tensor([-1e-7]))).all()


def test_token_logprobs_masks_prompt_and_padding_with_label_shift():
    torch.manual_seed(0)
    V = 11
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [5, 6, 9, 3, 4, 2]])
    mask = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]])  # row 0: prompt 2, completion 2, pad 2
    logits = torch.randn(2, 6, V)
    total, avg, n = token_logprobs(logits, ids, mask, chunk=1)
    lp = logits.log_softmax(-1)
    # Token at position t is scored by the logits at t-1; prompt and padding never count.
    want0 = lp[0, 1, 7] + lp[0, 2, 8]
    want1 = lp[1, 0, 6] + lp[1, 1, 9] + lp[1, 2, 3] + lp[1, 3, 4] + lp[1, 4, 2]
    torch.testing.assert_close(total, torch.stack([want0, want1]))
    torch.testing.assert_close(avg, torch.stack([want0 / 2, want1 / 5]))
    assert n.tolist() == [2, 5]
    # Changing a padded or prompt position's logits or token must not change anything.
    logits2, ids2 = logits.clone(), ids.clone()
    logits2[0, 4:] += 100.0
    ids2[0, 5] = 3
    logits2[0, 0, 6] += 50.0  # logits at the first position score prompt token 1 (masked)
    torch.testing.assert_close(token_logprobs(logits2, ids2, mask)[0], total)
