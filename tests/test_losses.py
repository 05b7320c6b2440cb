"""Each objective TRL has, against TRL 1.16's own code on the same log-probs: values, rewards and gradients.

* DPO, IPO, hinge, robust: `DPOTrainer._compute_loss` itself, with a stand-in model whose per-token
  log-probs are a tensor we hold (TRL sums them; the IPO branch divides by the completion mask), and the
  reference log-probs given as precomputed, as TRL does with `precompute_ref_logps`.
* cDPO (`label_smoothing`): TRL 1.16's DPO sigmoid loss no longer smooths; its CPOTrainer keeps the cDPO
  formula, applied here to DPO's log-ratios.
* SimPO (+ `sft_weight`) and CPO: `CPOTrainer.get_batch_loss_metrics`, the whole path from logits
  (concatenation, label shift, its token-pooled cross-entropy NLL) to the loss, against our loss on
  log-probs from the same logits (worker/textbook.py).
* ORPO: `ORPOTrainer.odds_ratio_loss`.
γ-PO, AMaPO, R-DPO and POET have no TRL counterpart: see tests/test_objectives_authors.py.
"""

import math
import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from ablate.worker.losses import (
    LogProbs,
    cpo_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    log1mexp,
    loss_for,
    orpo_loss,
    robust_loss,
    simpo_loss,
)
from ablate.worker.textbook import token_logprobs

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
from trl import DPOTrainer  # noqa: E402
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402

g = torch.Generator().manual_seed(0)
B, T = 7, 14
SUM_W, SUM_L = -torch.rand(B, generator=g) * 40, -torch.rand(B, generator=g) * 40
AVG_W, AVG_L = -torch.rand(B, generator=g) * 3 - 0.01, -torch.rand(B, generator=g) * 3 - 0.01
ACC = SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x)
TRL_SELF = dict(alpha=0.0, label_smoothing=0.0, accelerator=ACC)


def per_token_batch(seed: int):
    """[2B, T-1] per-token log-probs (a leaf), zero outside each completion, as TRL's fused head returns them,
    with completion lengths 1..T-1 and a one-token prompt; plus reference sums."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, T, (2 * B,), generator=gen)
    completion_mask = torch.zeros(2 * B, T, dtype=torch.long)
    for i, n in enumerate(lens.tolist()):
        completion_mask[i, 1 : 1 + n] = 1
    shift = completion_mask[:, 1:].double()
    leaf = (-torch.rand(2 * B, T - 1, generator=gen, dtype=torch.float64) * 4).requires_grad_(True)
    ref = -torch.rand(2 * B, generator=gen, dtype=torch.float64) * 4 * lens
    return leaf, shift, completion_mask, ref


def trl_dpo(loss_type: str, beta: float, eps: float, leaf, shift, completion_mask, ref) -> torch.Tensor:
    """TRL 1.16's DPO loss (the mean over the batch) through DPOTrainer._compute_loss."""
    per_token = leaf * shift

    def model(**_):
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    trl_self = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=ACC,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=eps,
        use_weighting=False,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref[:B],
        "ref_rejected_logps": ref[B:],
    }
    loss = DPOTrainer._compute_loss(trl_self, model, inputs, return_outputs=False)
    return loss, trl_self._metrics["train"]


def ours(fn, leaf, shift, ref, *knobs):
    total = (leaf * shift).sum(1)
    n = shift.sum(1)
    c = LogProbs(total[:B], total[:B] / n[:B], ref[:B], n[:B])
    r = LogProbs(total[B:], total[B:] / n[B:], ref[B:], n[B:])
    return fn(c, r, *knobs)


def grad_of(loss, leaf):
    (g,) = torch.autograd.grad(loss, leaf)
    return g


@pytest.mark.parametrize(
    "fn,loss_type,knobs,eps",
    [
        (dpo_loss, "sigmoid", (0.1,), 0.0),
        (dpo_loss, "sigmoid", (0.5,), 0.0),
        (ipo_loss, "ipo", (0.1,), 0.0),
        (ipo_loss, "ipo", (1.0,), 0.0),
        (hinge_loss, "hinge", (0.1,), 0.0),
        (hinge_loss, "hinge", (0.02,), 0.0),
        (robust_loss, "robust", (0.1, 0.1), 0.1),
        (robust_loss, "robust", (0.3, 0.4), 0.4),
    ],
)
def test_dpo_family_matches_trl_dpotrainer(fn, loss_type, knobs, eps):
    leaf, shift, mask, ref = per_token_batch(seed=len(loss_type) + int(knobs[0] * 100))
    want, metrics = trl_dpo(loss_type, knobs[0], eps, leaf, shift, mask, ref)
    out = ours(fn, leaf, shift, ref, *knobs)
    got = out.loss.mean()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_of(got, leaf), grad_of(want, leaf), rtol=1e-10, atol=1e-12)
    if loss_type != "ipo":  # TRL logs summed-log-ratio rewards; IPO's own reward is on the per-token means
        assert metrics["rewards/margins"][0] == pytest.approx((out.chosen_reward - out.rejected_reward).mean().item())
        assert metrics["rewards/accuracies"][0] == pytest.approx(
            (out.chosen_reward > out.rejected_reward).double().mean().item()
        )


def test_ipo_reward_is_tau_times_per_token_log_ratio():
    leaf, shift, _mask, ref = per_token_batch(seed=3)
    out = ours(ipo_loss, leaf, shift, ref, 0.5)
    n = shift.sum(1)
    want = 0.5 * ((leaf * shift).sum(1) - ref) / n
    torch.testing.assert_close(out.chosen_reward, want[:B].detach())
    torch.testing.assert_close(out.rejected_reward, want[B:].detach())


@pytest.mark.parametrize("beta,eps", [(0.1, 0.1), (0.5, 0.3)])
def test_cdpo_label_smoothing_matches_trl_cpo_formula(beta, eps):
    """cDPO on DPO's log-ratios = TRL's CPO sigmoid loss with label_smoothing fed those log-ratios."""
    leaf, shift, _mask, ref = per_token_batch(seed=11)
    out = ours(dpo_loss, leaf, shift, ref, beta, eps)
    ratios = (leaf * shift).sum(1) - ref
    trl_self = SimpleNamespace(loss_type="sigmoid", beta=beta, **{**TRL_SELF, "label_smoothing": eps})
    want, want_c, want_r = CPOTrainer.cpo_loss(trl_self, ratios[:B], ratios[B:])
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_of(out.loss.sum(), leaf), grad_of(want.sum(), leaf))
    torch.testing.assert_close(out.chosen_reward, want_c)
    torch.testing.assert_close(out.rejected_reward, want_r)


def test_dpo_without_smoothing_is_unchanged_bit_for_bit():
    leaf, shift, _mask, ref = per_token_batch(seed=5)
    a = ours(dpo_loss, leaf, shift, ref, 0.1).loss
    b = ours(loss_for("dpo"), leaf, shift, ref, {"beta": 0.1}).loss  # label_smoothing left out of the params
    ratios = (leaf * shift).sum(1) - ref
    plain = -torch.nn.functional.logsigmoid(0.1 * ratios[:B] - 0.1 * ratios[B:])
    assert torch.equal(a, plain) and torch.equal(b, plain)


def cpo_batch(seed: int, V: int = 11, L: int = 9):
    """A batch as TRL's CPO collator gives it (prompt labels -100, right padding) and logits we hold."""
    gen = torch.Generator().manual_seed(seed)
    sides = {}
    for side in ("chosen", "rejected"):
        ids = torch.randint(1, V, (B, L), generator=gen)
        attn = torch.zeros(B, L, dtype=torch.long)
        labels = torch.full((B, L), -100)
        for i in range(B):
            p = int(torch.randint(1, 3, (1,), generator=gen))
            n = int(torch.randint(1, L - p + 1, (1,), generator=gen))
            attn[i, : p + n] = 1
            labels[i, p : p + n] = ids[i, p : p + n]
        sides[side] = (ids, attn, labels)
    batch = {f"{s}_{k}": t for s, v in sides.items() for k, t in zip(("input_ids", "attention_mask", "labels"), v)}
    logits = torch.randn(2 * B, L, V, generator=gen).requires_grad_(True)
    return batch, logits


def trl_cpo(batch, logits, loss_type: str, beta: float, gamma: float, alpha: float):
    trl_self = SimpleNamespace(
        is_encoder_decoder=False,
        pad_token_id=0,
        aux_loss_enabled=False,
        loss_type=loss_type,
        beta=beta,
        simpo_gamma=gamma,
        cpo_alpha=alpha,
        concatenated_inputs=CPOTrainer.concatenated_inputs,
        get_batch_logps=CPOTrainer.get_batch_logps,
        **TRL_SELF,
    )
    trl_self.concatenated_forward = lambda model, b: CPOTrainer.concatenated_forward(trl_self, model, b)
    trl_self.cpo_loss = lambda cw, cl: CPOTrainer.cpo_loss(trl_self, cw, cl)
    model = lambda *a, **k: SimpleNamespace(logits=logits)  # noqa: E731
    return CPOTrainer.get_batch_loss_metrics(trl_self, model, batch)


def ours_from_logits(fn, batch, logits, *knobs):
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    mask = (torch.cat([batch["chosen_labels"], batch["rejected_labels"]]) != -100).long()
    total, avg, n = token_logprobs(logits, ids, mask)
    return fn(LogProbs(total[:B], avg[:B], None, n[:B]), LogProbs(total[B:], avg[B:], None, n[B:]), *knobs)


@pytest.mark.parametrize("beta,gamma,w", [(2.0, 0.5, 0.0), (10.0, 3.0, 0.0), (2.5, 0.0, 0.0), (2.0, 1.0, 0.7)])
def test_simpo_and_its_sft_weight_match_trl(beta, gamma, w):
    batch, logits = cpo_batch(seed=int(beta * 10 + w * 10))
    want, metrics = trl_cpo(batch, logits, "simpo", beta, gamma, w)
    out = ours_from_logits(simpo_loss, batch, logits, beta, gamma, w)
    got = out.loss.mean()
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(grad_of(got, logits), grad_of(want, logits), rtol=1e-5, atol=1e-7)
    assert metrics["rewards/margins"] == pytest.approx(
        (out.chosen_reward - out.rejected_reward).mean().item(), rel=1e-5
    )
    if w:  # TRL's CE over every chosen token of the batch, which the SimPO authors' sft_weight also uses
        assert metrics["nll_loss"] == pytest.approx(out.logs["nll_loss"].mean().item() / w, rel=1e-5)
    else:
        assert "nll_loss" not in out.logs


@pytest.mark.parametrize("beta,w", [(0.1, 1.0), (0.5, 0.0), (0.05, 2.0)])
def test_cpo_matches_trl(beta, w):
    batch, logits = cpo_batch(seed=int(beta * 100 + w))
    want, metrics = trl_cpo(batch, logits, "sigmoid", beta, 0.0, w)
    out = ours_from_logits(cpo_loss, batch, logits, beta, w)
    got = out.loss.mean()
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(grad_of(got, logits), grad_of(want, logits), rtol=1e-5, atol=1e-7)
    assert metrics["rewards/chosen"] == pytest.approx(out.chosen_reward.mean().item(), rel=1e-5)
    assert metrics["logps/chosen"] == pytest.approx((out.chosen_reward / beta).mean().item(), rel=1e-5)


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (10.0, 3.0), (2.5, 0.0)])
def test_simpo_matches_trl_cpo_loss_on_log_probs(beta, gamma):
    trl_self = SimpleNamespace(loss_type="simpo", beta=beta, simpo_gamma=gamma, **TRL_SELF)
    want, want_c, want_r = CPOTrainer.cpo_loss(trl_self, AVG_W, AVG_L)
    loss, cr, rr, _ = simpo_loss(LogProbs(SUM_W, AVG_W), LogProbs(SUM_L, AVG_L), beta, gamma)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(cr, want_c)
    torch.testing.assert_close(rr, want_r)


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_matches_trl(lam):
    trl_self = SimpleNamespace(beta=lam, **TRL_SELF)
    ratio_term, want_c, want_r, _, _ = ORPOTrainer.odds_ratio_loss(trl_self, AVG_W, AVG_L)
    loss, cr, rr, _ = orpo_loss(LogProbs(SUM_W, AVG_W), LogProbs(SUM_L, AVG_L), lam)
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
