"""Data: JSONL checks with file:line, leakage, truncation rule, chat templates, local model dirs."""

import pytest

from ablate.builtin import builtin_model, builtin_tokenizer, letters_task
from ablate.data import collate, encode, load_rows
from ablate.models import load_model, load_tokenizer
from ablate.plan import make_plan
from ablate.spec import MatrixError, ModelSpec
from conftest import small_matrix

GOOD = {"prompt": "Q: hi\n", "chosen": "abc", "rejected": "xyz"}


def test_jsonl_problems_are_all_reported_with_lines(write_jsonl):
    path = write_jsonl([GOOD, "{not json", {"prompt": "p", "chosen": "a"}, {"prompt": "p", "chosen": "a", "rejected": "a"},
                        {"prompt": "p", "chosen": " ", "rejected": "b"}, {"prompt": "p", "chosen": 3, "rejected": "b"}], "d.jsonl")
    with pytest.raises(MatrixError) as e:
        load_rows(str(path), "train")
    probs = e.value.problems
    assert [p.split(":")[1] for p in probs] == ["2", "3", "4", "5", "6"], probs
    for text in ("not valid JSON", "missing field(s) ['rejected']", "chosen == rejected", "empty completion", "must be a string"):
        assert any(text in p for p in probs), (text, probs)


def test_empty_missing_and_non_utf8_files(tmp_path, write_jsonl):
    with pytest.raises(MatrixError, match="must not be empty"):
        load_rows(str(write_jsonl([], "empty.jsonl")), "heldout")
    with pytest.raises(MatrixError, match="no such file"):
        load_rows(str(tmp_path / "nope.jsonl"), "train")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(MatrixError, match="not UTF-8"):
        load_rows(str(bad), "train")


def test_leakage_between_train_and_heldout_is_an_error(write_matrix, write_jsonl, tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "abc", "rejected": "xyz"} for i in range(5)]
    m = small_matrix()
    m["data"] = {"train": str(write_jsonl(rows, "tr.jsonl")), "heldout": str(write_jsonl(rows[3:] + [GOOD], "he.jsonl"))}
    with pytest.raises(MatrixError, match="2 held-out pair"):
        make_plan(write_matrix(m), results=tmp_path / "r")


def test_truncation_keeps_prompt_end_and_completion_start():
    tok = builtin_tokenizer()
    rows = [{"prompt": "0123456789", "chosen": "abcdefgh", "rejected": "abcdxyzw"}]
    (pair,) = encode(rows, tok, max_length=10, prompt_budget=4, where="t")
    assert tok.decode(pair.prompt) == "6789"  # the end of the prompt, nearest the answer
    assert tok.decode(pair.chosen) == "abcdef" and len(pair.prompt) + len(pair.chosen) == 10
    assert pair.truncated
    (short,) = encode([GOOD], tok, max_length=64, prompt_budget=32, where="t")
    assert not short.truncated and short.chosen[-1] == tok.eos_token_id  # EOS is part of the completion
    with pytest.raises(MatrixError, match="identical chosen and rejected after truncation"):
        encode(rows, tok, max_length=8, prompt_budget=4, where="t")


def test_collate_masks_prompt_and_padding():
    tok = builtin_tokenizer()
    pairs = encode(letters_task(3, seed=1), tok, 128, 64, "t")
    b = collate(pairs, [0, 2], tok.pad_token_id)
    assert b.input_ids.shape[0] == 4  # chosen of pairs 0,2 then rejected of pairs 0,2
    for row, (i, side) in enumerate([(0, "chosen"), (2, "chosen"), (0, "rejected"), (2, "rejected")]):
        p, c = pairs[i].prompt, getattr(pairs[i], side)
        assert b.loss_mask[row].sum() == len(c)
        assert b.loss_mask[row, : len(p)].sum() == 0 and b.attention_mask[row].sum() == len(p) + len(c)
        assert b.input_ids[row, len(p) + len(c):].eq(tok.pad_token_id).all()


def test_conversational_rows_use_the_chat_template(tmp_path, write_jsonl):
    tok = builtin_tokenizer()
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    model_dir = tmp_path / "model"
    builtin_model("tiny-llama").save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    loaded = load_tokenizer(ModelSpec(path=str(model_dir)))
    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "abc"}],
           "rejected": [{"role": "assistant", "content": "xyz"}]}
    (pair,) = encode([row], loaded, 128, 64, "t")
    assert loaded.decode(pair.prompt) == "<user>hi</s><assistant>"
    assert loaded.decode(pair.chosen, skip_special_tokens=False).startswith("abc")
    # The same local directory loads as a real model through the same code path.
    model = load_model(ModelSpec(path=str(model_dir)), device=__import__("torch").device("cpu"))
    assert model.config.num_hidden_layers == 2


def test_local_model_dir_with_remote_code_needs_opt_in(tmp_path, write_matrix):
    model_dir = tmp_path / "remote"
    builtin_model("tiny-llama").save_pretrained(model_dir)
    cfg = (model_dir / "config.json").read_text().replace("{", '{"auto_map": {"AutoModelForCausalLM": "x.Y"},', 1)
    (model_dir / "config.json").write_text(cfg)
    m = small_matrix(model={"path": str(model_dir)})
    with pytest.raises(MatrixError, match="trust_remote_code"):
        make_plan(write_matrix(m), results=tmp_path / "r")
    with pytest.raises(MatrixError, match="no such directory"):
        make_plan(write_matrix(small_matrix(model={"path": str(tmp_path / "missing")})), results=tmp_path / "r")


def test_results_path_that_is_a_file_is_rejected_before_work(tmp_path, write_matrix):
    blocker = tmp_path / "results"
    blocker.write_text("not a dir")
    with pytest.raises(MatrixError, match="is a file"):
        make_plan(write_matrix(small_matrix()), results=blocker)
    assert blocker.read_text() == "not a dir"


def test_builtin_data_is_deterministic_and_length_skewed():
    a, b = letters_task(50, length_skew=0.5, seed=3), letters_task(50, length_skew=0.5, seed=3)
    assert a == b
    assert letters_task(50, seed=3, split="heldout") != a
    longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in a)
    assert longer >= 45
    shorter = sum(len(r["chosen"]) < len(r["rejected"]) for r in letters_task(50, length_skew=-0.5, seed=3))
    assert shorter >= 45
