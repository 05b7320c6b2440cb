"""The fast forward (shared prompt, LM head at completion positions only) computes exactly the log-probs of
the textbook pass: full logits over [prompt, completion] rows, log-softmax, mask the prompt, sum."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from ablate.inputs.models import builtin_model, builtin_tokenizer
from ablate.inputs.tokenize import encode
from ablate.worker.forward import Forward, collate
from ablate.worker.textbook import collate as textbook_collate
from ablate.worker.textbook import token_logprobs

ROWS = [
    {"prompt": "Write a word:", "chosen": "abc", "rejected": "xyzzy and more"},
    {"prompt": "A much longer prompt that needs padding in the batch", "chosen": "hello there", "rejected": "no"},
    {"prompt": "Short", "chosen": "a fairly long chosen completion", "rejected": "b"},
]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = builtin_tokenizer()
    model = get_peft_model(
        builtin_model("tiny-llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )  # a non-zero adapter
    model.eval()
    return tok, model, encode(ROWS, tok, 96, 48, "t")


def textbook(model, pairs, pad):
    b = textbook_collate(pairs, list(range(len(pairs))), pad)
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    return token_logprobs(logits, b.input_ids, b.loss_mask)


@pytest.mark.parametrize("share", [True, False])
def test_fast_forward_equals_textbook_log_probs(setup, share):
    tok, model, pairs = setup
    with torch.no_grad():
        want = textbook(model, pairs, tok.pad_token_id)
        b = collate(pairs, list(range(len(pairs))), tok.pad_token_id, share)
        got = Forward(model)(b)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)
    # Tokens are counted as the [prompt, completion] layout would count them, whatever the layout.
    assert b.tokens == sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)


def test_fast_forward_gradients_match(setup):
    tok, model, pairs = setup
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for fn in (
        lambda: textbook(model, pairs, tok.pad_token_id),
        lambda: Forward(model)(collate(pairs, [0, 1, 2], tok.pad_token_id, True)),
    ):
        model.zero_grad()
        total, avg, _ = fn()
        (avg[:3] - avg[3:]).sum().backward()
        grads.append([p.grad.clone() for p in params])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_shared_prompt_layout_hides_chosen_from_rejected(setup):
    tok, model, pairs = setup
    b = collate(pairs, [0], tok.pad_token_id, True)
    P, C, R = (len(x) for x in (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected))
    m = b.attention_mask[0, 0]
    assert not m[P + C :, P : P + C].any()  # rejected never sees chosen
    assert m[P + C :, :P].all()  # but sees the whole prompt
    assert b.position_ids[0, P + C].item() == P  # rejected positions restart after the prompt


def test_empty_prompt_still_scores_the_first_completion_token(setup):
    tok, model, _ = setup
    pairs = encode([{"prompt": "", "chosen": "ab", "rejected": "xb"}], tok, 32, 16, "t")
    assert pairs[0].prompt  # a context token stands in for the missing prompt (the builtin tokenizer has no BOS)
    b = collate(pairs, [0], tok.pad_token_id, True)
    assert b.seq.tolist().count(0) == len(pairs[0].chosen) and b.seq.tolist().count(1) == len(pairs[0].rejected)
