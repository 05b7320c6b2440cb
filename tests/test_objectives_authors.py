"""Objectives TRL does not have, against their authors' arithmetic (transcribed here, with the source named,
never imported into the package), the paper's equation by hand, or a hand-built batch: values and gradients.

* γ-PO: sunjie279/gammaPO, scripts/simpo_trainer.py, `SimPOTrainer.get_gamma_b` (the batch version; one
  process, so its all_gather is the identity) and the `gm-simpo` branch of `SimPOTrainer.simpo_loss`.
* AMaPO: Shiroha-Offical/AMaPO, scripts/amapo_trainer.py, `AMaPOTrainer.amapo_loss` (loss_type sigmoid,
  label_smoothing 0, one process).
* R-DPO: Park et al. 2024, "Disentangling length from quality in DPO", by hand.
* POET (`truncate: equal`): a hand-built batch through the real tokenizer, model and forward pass.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ablate.worker.losses import LogProbs, amapo_loss, dpo_loss, gamma_po_loss, gamma_po_margins, rdpo_loss

B = 9


def avg_logps(seed: int, n: int = B):
    g = torch.Generator().manual_seed(seed)
    w = (-torch.rand(n, generator=g, dtype=torch.float64) * 2 - 0.05).requires_grad_(True)
    lose = (-torch.rand(n, generator=g, dtype=torch.float64) * 2 - 0.05).requires_grad_(True)
    return w, lose


def side(avg):
    return LogProbs(avg * 10, avg, None, torch.full_like(avg, 10.0))


# -- γ-PO ------------------------------------------------------------------------------------------------


def authors_get_gamma_b(reward_gaps, gamma0, tau, eps=1e-10):
    """gammaPO scripts/simpo_trainer.py, SimPOTrainer.get_gamma_b, transcribed (world size 1)."""
    p_lr = min(0.5 / tau, 1)
    batch_size = reward_gaps.numel()
    p = torch.full_like(reward_gaps, fill_value=1 / batch_size, requires_grad=True)
    for _ in range(20):
        gamma = gamma0 * batch_size * p
        gamma_grad = gamma0 * batch_size
        KL_grad = tau * (1 + torch.log(batch_size * (p + eps)))
        p_grad = KL_grad + gamma_grad / (1 + torch.exp(reward_gaps - gamma)) / batch_size
        with torch.no_grad():
            exp_grad = torch.exp(-p_lr * p_grad)
            p = p * exp_grad / torch.sum(p * exp_grad)
    return gamma.detach()


def authors_gm_simpo(chosen_logps, rejected_logps, beta, gamma_beta_ratio, tau):
    """SimPOTrainer.simpo_loss, loss_type 'gm-simpo', with the batch margins of get_gamma_b."""
    pi_logratios = chosen_logps - rejected_logps
    reward_gap = beta * pi_logratios
    gamma0 = gamma_beta_ratio * beta
    margins = authors_get_gamma_b(reward_gap.detach(), gamma0, tau)
    logits = pi_logratios - margins / beta
    losses = -F.logsigmoid(beta * logits)
    return losses, beta * chosen_logps.detach(), beta * rejected_logps.detach(), margins


@pytest.mark.parametrize("beta,ratio,tau", [(10.0, 0.4, 10.0), (2.5, 0.15, 10.0), (10.0, 0.3, 3.0), (2.0, 0.5, 0.2)])
def test_gamma_po_matches_the_authors_batch_version(beta, ratio, tau):
    w, lose = avg_logps(seed=int(beta + tau))
    want, want_c, want_r, want_m = authors_gm_simpo(w, lose, beta, ratio, tau)
    out = gamma_po_loss(side(w), side(lose), beta, ratio * beta, tau)
    torch.testing.assert_close(out.logs["margins/gamma"], want_m, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.loss, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.chosen_reward, want_c)
    torch.testing.assert_close(out.rejected_reward, want_r)
    ours_g = torch.autograd.grad(out.loss.sum(), (w, lose))
    want_g = torch.autograd.grad(want.sum(), (w, lose))
    for a, b in zip(ours_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # The weights stay on the simplex, so the margins average to the base margin γ0.
    assert out.logs["margins/gamma"].mean().item() == pytest.approx(ratio * beta, rel=1e-9)


def test_gamma_po_margins_track_the_gap_and_reduce_to_simpo():
    gaps = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 2.5, 6.0], dtype=torch.float64)
    m = gamma_po_margins(gaps, gamma0=1.0, tau=0.5)
    assert (m.diff() > 0).all()  # a pair already past its margin takes more of it from the pairs that are not
    assert gamma_po_margins(gaps, 1.0, tau=1e6).sub(1.0).abs().max() < 1e-5  # large τ: every margin is γ0
    assert gamma_po_margins(gaps[:1], 1.0, tau=0.5).item() == pytest.approx(1.0)  # one pair: SimPO


# -- AMaPO -----------------------------------------------------------------------------------------------


def authors_amapo(policy_chosen_logps, policy_rejected_logps, beta):
    """AMaPO scripts/amapo_trainer.py, AMaPOTrainer.amapo_loss, transcribed (sigmoid, label_smoothing 0)."""
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    batch_margin = pi_logratios.detach()
    batch_margin_mean = torch.mean(batch_margin)
    batch_margin_std = torch.std(batch_margin)
    instance_margin = pi_logratios
    margin = (
        beta
        * torch.where(
            instance_margin - batch_margin_mean < 0,
            torch.exp(((batch_margin_mean - instance_margin) / batch_margin_std) * batch_margin_mean),
            0,
        ).detach()
    )
    losses = -F.logsigmoid(beta * pi_logratios - margin)
    return losses, margin, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


@pytest.mark.parametrize("beta,shift", [(2.0, 0.0), (3.0, 0.8), (2.0, -0.6)])
def test_amapo_matches_the_authors_loss(beta, shift):
    w, lose = avg_logps(seed=int(beta * 10 + shift * 10))
    w2 = (w.detach() + shift).requires_grad_(True)  # shift the gaps' mean: the exponent scales with it
    want, want_m, want_c, want_r = authors_amapo(w2, lose, beta)
    out = amapo_loss(side(w2), side(lose), beta)
    torch.testing.assert_close(out.logs["margins/amapo"], want_m, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.chosen_reward, want_c)
    torch.testing.assert_close(out.rejected_reward, want_r)
    for a, b in zip(torch.autograd.grad(out.loss.sum(), (w2, lose)), torch.autograd.grad(want.sum(), (w2, lose))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    below = (w2 - lose).detach() < (w2 - lose).detach().mean()
    assert below.any() and (~below).any() and (want_m[~below] == 0).all() and (want_m[below] > 0).all()


def test_amapo_without_spread_has_no_margin_and_no_warning():
    w, lose = avg_logps(seed=1, n=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.std of one value warns (and is nan) in the authors' code
        out = amapo_loss(side(w), side(lose), 2.0)
    assert out.logs["margins/amapo"].item() == 0.0
    assert out.loss.item() == pytest.approx(-F.logsigmoid(2.0 * (w - lose)).item())


# -- R-DPO -----------------------------------------------------------------------------------------------


def test_rdpo_is_the_papers_equation_by_hand():
    """L = -log σ(β log π(y_w)/π_ref(y_w) - β log π(y_l)/π_ref(y_l) + α|y_w| - α|y_l|): the RLHF objective with a
    length penalty α|y| has the optimal-policy reward r = β log π/π_ref + α|y| (+ a prompt term); put into
    Bradley-Terry, the length term enters with a plus sign and α unscaled by β."""
    g = torch.Generator().manual_seed(7)
    S = (-torch.rand(2, B, generator=g, dtype=torch.float64) * 30).requires_grad_(True)
    R = -torch.rand(2, B, generator=g, dtype=torch.float64) * 30
    N = torch.randint(1, 40, (2, B), generator=g).double()
    beta, alpha = 0.1, 0.05
    out = rdpo_loss(LogProbs(S[0], S[0] / N[0], R[0], N[0]), LogProbs(S[1], S[1] / N[1], R[1], N[1]), beta, alpha)
    (gs,) = torch.autograd.grad(out.loss.sum(), S)
    for i in range(B):
        x = beta * (S[0, i] - R[0, i]).item() - beta * (S[1, i] - R[1, i]).item() + alpha * (N[0, i] - N[1, i]).item()
        assert out.loss[i].item() == pytest.approx(math.log1p(math.exp(-x)), rel=1e-12)
        # d/dS_w of -log σ(x) is -β·σ(-x); d/dS_l is +β·σ(-x)
        s = 1 / (1 + math.exp(x))
        assert gs[0, i].item() == pytest.approx(-beta * s, rel=1e-10)
        assert gs[1, i].item() == pytest.approx(beta * s, rel=1e-10)
        assert out.logs["margins/length"][i].item() == pytest.approx(alpha * (N[0, i] - N[1, i]).item())
    # Rewards are the DPO ones, α = 0 is DPO, and a longer chosen answer lowers the loss (its length explains it).
    dpo = dpo_loss(LogProbs(S[0], None, R[0]), LogProbs(S[1], None, R[1]), beta)
    torch.testing.assert_close(out.chosen_reward, dpo.chosen_reward)
    zero = rdpo_loss(LogProbs(S[0], None, R[0], N[0]), LogProbs(S[1], None, R[1], N[1]), beta, 0.0)
    torch.testing.assert_close(zero.loss, dpo.loss)
    longer = N[0] > N[1]
    assert (out.loss[longer] < dpo.loss[longer]).all() and (
        out.loss[~longer & (N[0] < N[1])] > dpo.loss[~longer & (N[0] < N[1])]
    ).all()


# -- POET (truncate: equal) ------------------------------------------------------------------------------


def test_poet_cuts_training_pairs_to_the_shorter_answer_and_scores_prefixes():
    from ablate.inputs.models import load_model, load_tokenizer
    from ablate.inputs.tokenize import Pair, equal_lengths
    from ablate.schema import ModelSpec
    from ablate.worker.forward import Forward, collate
    from ablate.worker.textbook import collate as full_collate
    from ablate.worker.textbook import token_logprobs

    EOS = 1
    pairs = [
        Pair([5, 6, 7], [10, 11, 12, 13, 14, EOS], [20, 21, EOS], False),  # chosen longer
        Pair([5, 8], [30, EOS], [40, 41, 42, 43, EOS], False),  # rejected longer
        Pair([9], [50, 51, EOS], [52, 53, EOS], False),  # equal: untouched
        Pair([9], [60, 61, EOS], [60, 61, 62, 63, EOS], False),  # shorter is a prefix: equal after the cut
    ]
    cut = equal_lengths(pairs)
    assert [(p.chosen, p.rejected) for p in cut] == [
        ([10, 11, 12], [20, 21, EOS]),
        ([30, EOS], [40, 41]),
        ([50, 51, EOS], [52, 53, EOS]),
        ([60, 61, EOS], [60, 61, 62]),
    ]
    assert [p.prompt for p in cut] == [p.prompt for p in pairs]

    # The real forward on the cut pairs gives the log-probs of the full answers' first m tokens.
    spec = ModelSpec(path="builtin:tiny-llama")
    tok = load_tokenizer(spec)
    model = load_model(spec, torch.device("cpu")).eval()
    idx = list(range(len(pairs)))
    with torch.no_grad():
        total, _, n = Forward(model)(collate(cut, idx, tok.pad_token_id))
        fb = full_collate(pairs, idx, tok.pad_token_id)
        logits = model(input_ids=fb.input_ids, attention_mask=fb.attention_mask).logits
    per_token = torch.gather(logits[:, :-1].float().log_softmax(-1), 2, fb.input_ids[:, 1:, None])[..., 0]
    mask = fb.loss_mask[:, 1:].float()
    for row in range(2 * len(pairs)):
        m = int(n[row])
        first = mask[row].nonzero()[:m, 0]  # positions of the first m completion tokens
        assert per_token[row, first].sum().item() == pytest.approx(total[row].item(), abs=1e-4)
    assert n.tolist() == [3, 2, 3, 3, 3, 2, 3, 3]  # chosen outputs first, then rejected
    assert token_logprobs(logits, fb.input_ids, fb.loss_mask)[2].tolist() == [6, 2, 3, 3, 3, 5, 3, 5]


def test_poet_reference_is_its_own_and_applies_to_training_pairs_only():
    from ablate.config import CellConfig, DataConfig, Runtime
    from ablate.schema import ModelSpec, TrainRecipe
    from ablate.worker.logps import load_base

    base = dict(objective="dpo", lora_rank=4, seed=0, beta=0.1, lr=1e-3, epochs=1)
    cfg = lambda **p: CellConfig({**base, **p}, TrainRecipe(), {"builtin": "x"}, DataConfig({}, 64, 32), "v")  # noqa: E731
    rt = Runtime()
    assert cfg().reference_key(rt) != cfg(truncate="equal").reference_key(rt)
    assert cfg(beta=0.5).reference_key(rt) == cfg().reference_key(rt)  # β never changes the reference

    rows = [
        {"prompt": "q", "chosen": "abcdefgh", "rejected": "no"},
        {"prompt": "q", "chosen": "ab", "rejected": "wxyz"},
    ]
    data = DataConfig({}, 64, 32)
    spec = ModelSpec(path="builtin:tiny-llama")
    _, plain, _ = load_base(spec, rt, {"train": rows, "heldout": rows}, data)
    _, poet, _ = load_base(spec, rt, {"train": rows, "heldout": rows}, data, "equal")
    assert [(len(p.chosen), len(p.rejected)) for p in poet["train"]] == [(3, 3), (3, 3)]
    assert [(len(p.chosen), len(p.rejected)) for p in poet["heldout"]] == [(9, 3), (3, 5)]
    assert [(p.chosen, p.rejected) for p in poet["heldout"]] == [(p.chosen, p.rejected) for p in plain["heldout"]]
