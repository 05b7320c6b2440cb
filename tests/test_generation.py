"""Generation in a cell (worker/generate.py): batched, left-padded KV-cache generation gives what a plain
per-prompt `model.generate` gives; sampling is seeded and leaves training's RNG alone; a cell trains to the
same numbers with and without generation; generations at evals survive in the cell's table; repetition and
the prompt rendering; and the mistakes that are caught before training."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from ablate.errors import UserError
from ablate.inputs.models import builtin_model, builtin_tokenizer
from ablate.matrix.plan import make_plan
from ablate.worker.generate import encode_prompts, generate_hf, sample_prompts, seq_rep

from conftest import ablate_cli, small_matrix, train_directly

PROMPTS = ["Write about owls #12:\n", "Hi", "Write a long line about salt and rain and maps #4:\n", "tea?"]


@pytest.fixture(scope="module")
def model_tok():
    torch.manual_seed(0)
    return builtin_model("tiny-llama").eval(), builtin_tokenizer()


def plain_loop(model, tok, ids, max_new_tokens, eos):
    """The reference: one unpadded prompt at a time through model.generate, greedy."""
    out = []
    for p in ids:
        x = torch.tensor([p])
        g = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id, eos_token_id=eos)[0, len(p):].tolist()  # fmt: skip
        out.append(g[: g.index(eos)] if eos in g else g)
    return out


def test_batched_left_padded_greedy_equals_a_plain_generate_loop(model_tok):
    model, tok = model_tok
    ids = encode_prompts([{"prompt": p} for p in PROMPTS], tok, prompt_budget=64)
    assert len({len(i) for i in ids}) == len(ids)  # different lengths: left padding is exercised
    for eos in (tok.eos_token_id, None):  # the random model rarely says EOS; a forced token tests the cut
        want = plain_loop(model, tok, ids, 12, eos if eos is not None else 999)
        got = generate_hf(model, ids, pad_id=tok.pad_token_id, eos_id=eos, max_new_tokens=12, batch_size=3)
        assert [o.ids for o in got] == want
        assert all(o.finish == ("eos" if len(o.ids) < 12 else "length") for o in got)


def test_eos_cuts_the_answer_and_says_why(model_tok):
    model, tok = model_tok
    ids = encode_prompts([{"prompt": p} for p in PROMPTS], tok, prompt_budget=64)
    free = generate_hf(model, ids, pad_id=tok.pad_token_id, eos_id=None, max_new_tokens=10)
    stop = free[0].ids[3]  # make the 4th generated token of the first prompt the "EOS"
    cut = generate_hf(model, ids, pad_id=tok.pad_token_id, eos_id=stop, max_new_tokens=10)
    assert cut[0].ids == free[0].ids[:3] and cut[0].finish == "eos"


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(model_tok):
    model, tok = model_tok
    ids = encode_prompts([{"prompt": p} for p in PROMPTS], tok, prompt_budget=64)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = generate_hf(model, ids, pad_id=0, eos_id=1, max_new_tokens=16, temperature=1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = generate_hf(model, ids, pad_id=0, eos_id=1, max_new_tokens=16, temperature=1.0, seed=7)
    c = generate_hf(model, ids, pad_id=0, eos_id=1, max_new_tokens=16, temperature=1.0, seed=8)
    assert [o.ids for o in a] == [o.ids for o in b] != [o.ids for o in c]


def test_repetition_and_prompt_sample():
    assert seq_rep([1, 2, 3, 4, 5, 6]) == 0.0
    assert seq_rep([7] * 10) == pytest.approx(1 - 1 / 7)  # one distinct 4-gram among 7
    assert seq_rep([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 - 4 / 5)
    assert seq_rep([1, 2, 3]) == 0.0
    s = sample_prompts(100, 10, 0)
    assert s == sorted(set(s)) and len(s) == 10 and s == sample_prompts(100, 10, 0) != sample_prompts(100, 10, 1)


def test_conversational_prompts_use_the_chat_template():
    tok = builtin_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    (ids,) = encode_prompts([{"prompt": [{"role": "user", "content": "hi"}]}], tok, prompt_budget=64)
    assert tok.decode(ids) == "<user>hi<assistant>"
    with pytest.raises(UserError, match="chat template"):
        encode_prompts([{"prompt": [{"role": "user", "content": "hi"}]}], builtin_tokenizer(), prompt_budget=64)


def _plan(tmp_path, **gen):
    m = small_matrix(train={"epochs": 1, "batch_size": 16, "lr": 1.0e-3, "logging_steps": 1, "eval_steps": 2,
                            "checkpoint_every_steps": 1})  # fmt: skip
    if gen:
        m["eval"] = {"generate": gen}
    p = tmp_path / f"m{len(gen)}.yaml"
    p.write_text(yaml.safe_dump(m))
    return make_plan(p, tmp_path / "r")


def test_a_cell_trains_the_same_with_generation_and_keeps_its_eval_generations(tmp_path):
    plain = _plan(tmp_path)
    gen = _plan(tmp_path, prompts=6, max_new_tokens=8, temperature=1.0, every="eval")
    a, b = plain.cells[0], gen.cells[0]
    assert a.id != b.id and a.config_id != b.config_id  # what a cell writes is one of its outputs
    assert make_plan(tmp_path / "m0.yaml", tmp_path / "r").cells[0].id == a.id  # ids without eval.generate: as before
    ra, rb = train_directly(plain, a), train_directly(gen, b)
    assert ra["status"] == rb["status"] == "done", (ra.get("error"), rb.get("error"))
    pa = pd.read_parquet(tmp_path / "r" / "t" / "cells" / a.id / "pairs.parquet")
    pb = pd.read_parquet(tmp_path / "r" / "t" / "cells" / b.id / "pairs.parquet")
    pd.testing.assert_frame_equal(pa, pb)  # generation (sampling at evals included) does not touch training
    assert ra["heldout_accuracy"] == rb["heldout_accuracy"] and ra["train_margin_last"] == rb["train_margin_last"]
    g = pd.read_parquet(tmp_path / "r" / "t" / "cells" / b.id / "generations.parquet")
    assert set(g.columns) >= {
        "prompt_index",
        "prompt",
        "text",
        "tokens",
        "chars",
        "finish",
        "repetition",
        "step",
        "final",
    }
    assert sorted(g["step"].unique()) == [2, 4]  # the eval at step 2, and the final answers at step 4
    assert (g.groupby("step").size() == 6).all() and g.loc[g["final"], "step"].eq(4).all()
    assert g["finish"].isin(["eos", "length"]).all() and (g["tokens"] <= 8).all()
    assert (g.loc[g["finish"] == "length", "tokens"] == 8).all()
    assert rb["generation_seconds"] > 0 and rb["generation_backend"] == "hf"


def test_generation_mistakes_are_caught_before_training(tmp_path, write_matrix, write_jsonl):
    m = small_matrix()
    m["eval"] = {"generate": {"prompts": 33}}  # the held-out set has 32 pairs
    r = ablate_cli("validate", write_matrix(m), "--results", tmp_path / "r")
    assert r.returncode == 2 and "eval.generate.prompts: 33 is more than the 32 held-out pairs" in r.stderr
    m["eval"] = {"generate": {"prompts": 4}}
    m["decision"] = {**m["decision"], "metric": "win_rate"}
    r = ablate_cli("validate", write_matrix(m), "--results", tmp_path / "r")
    assert r.returncode == 2 and "decision.metric: win_rate needs a judge" in r.stderr
    m["decision"]["metric"] = "heldout_accuracy"
    m["judge"] = "builtin"
    del m["eval"]
    r = ablate_cli("validate", write_matrix(m), "--results", tmp_path / "r")
    assert r.returncode == 2 and "judge: a judge compares generations; add eval.generate" in r.stderr
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "abc"}],
             "rejected": [{"role": "assistant", "content": f"xyz{i}"}]} for i in range(8)]  # fmt: skip
    m = small_matrix(
        data={"train": str(write_jsonl(rows[:4], "tr.jsonl")), "heldout": str(write_jsonl(rows[4:], "h.jsonl"))}
    )
    m["eval"] = {"generate": {"prompts": 2}}
    r = ablate_cli("validate", write_matrix(m), "--results", tmp_path / "r")
    assert r.returncode == 2 and "chat template" in r.stderr
    m["judge"] = "builtin"
    r = ablate_cli("validate", write_matrix(m), "--results", tmp_path / "r")
    assert "judge: builtin knows the truth of builtin tasks only" in r.stderr
    assert not (tmp_path / "r").exists()
