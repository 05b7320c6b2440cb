"""Data: JSONL checks with file:line, leakage, truncation rule, chat templates, local model dirs, data by URI."""

import json
import socket

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.errors import UserError
from ablate.inputs.data import load_rows
from ablate.inputs.letters import letters_task
from ablate.inputs.models import builtin_model, builtin_tokenizer, load_model, load_tokenizer
from ablate.inputs.tokenize import encode
from ablate.matrix.plan import make_plan
from ablate.matrix.yamlfile import load_matrix
from ablate.schema import ModelSpec
from ablate.worker.textbook import collate

from conftest import small_matrix
from s3server import FAKE_AWS_ENV, s3_filesystem, s3_server, s3_uri

GOOD = {"prompt": "Q: hi\n", "chosen": "abc", "rejected": "xyz"}


def test_jsonl_problems_are_all_reported_with_lines(write_jsonl):
    path = write_jsonl(
        [
            GOOD,
            "{not json",
            {"prompt": "p", "chosen": "a"},
            {"prompt": "p", "chosen": "a", "rejected": "a"},
            {"prompt": "p", "chosen": " ", "rejected": "b"},
            {"prompt": "p", "chosen": 3, "rejected": "b"},
        ],
        "d.jsonl",
    )
    with pytest.raises(UserError) as e:
        load_rows(str(path), "train")
    probs = e.value.problems
    assert [p.split(":")[1] for p in probs] == ["2", "3", "4", "5", "6"], probs
    for text in (
        "not valid JSON",
        "missing field(s) ['rejected']",
        "chosen == rejected",
        "empty completion",
        "must be a string",
    ):
        assert any(text in p for p in probs), (text, probs)


def test_empty_missing_and_non_utf8_files(tmp_path, write_jsonl):
    with pytest.raises(UserError, match="heldout set needs at least one"):
        load_rows(str(write_jsonl([], "empty.jsonl")), "heldout")
    with pytest.raises(UserError, match="no such file"):
        load_rows(str(tmp_path / "nope.jsonl"), "train")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(UserError, match="not UTF-8"):
        load_rows(str(bad), "train")


def test_leakage_between_train_and_heldout_is_an_error(write_matrix, write_jsonl, tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "abc", "rejected": "xyz"} for i in range(5)]
    m = small_matrix()
    m["data"] = {
        "train": str(write_jsonl(rows, "tr.jsonl")),
        "heldout": str(write_jsonl(rows[3:] + [GOOD], "he.jsonl")),
    }
    with pytest.raises(
        UserError,
        match=r"2 held-out pair\(s\) also in the training set \(first: held-out "
        r"\S*he.jsonl:1 is training \S*tr.jsonl:4\)",
    ):
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
    with pytest.raises(UserError, match="identical chosen and rejected after truncation") as e:
        encode(rows, tok, max_length=8, prompt_budget=4, where="t")
    assert "data.max_length=8 is shorter than every prompt (shortest: 10 tokens)" in e.value.problems[0]
    encode(rows + [GOOD], tok, max_length=9, prompt_budget=4, where="t")  # one prompt fits: truncation is fine


def test_collate_masks_prompt_and_padding():
    tok = builtin_tokenizer()
    pairs = encode(letters_task(3, seed=1), tok, 128, 64, "t")
    b = collate(pairs, [0, 2], tok.pad_token_id)
    assert b.input_ids.shape[0] == 4  # chosen of pairs 0,2 then rejected of pairs 0,2
    for row, (i, side) in enumerate([(0, "chosen"), (2, "chosen"), (0, "rejected"), (2, "rejected")]):
        p, c = pairs[i].prompt, getattr(pairs[i], side)
        assert b.loss_mask[row].sum() == len(c)
        assert b.loss_mask[row, : len(p)].sum() == 0 and b.attention_mask[row].sum() == len(p) + len(c)
        assert b.input_ids[row, len(p) + len(c) :].eq(tok.pad_token_id).all()


def test_conversational_rows_use_the_chat_template(tmp_path, write_jsonl):
    tok = builtin_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    model_dir = tmp_path / "model"
    builtin_model("tiny-llama").save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    loaded = load_tokenizer(ModelSpec(path=str(model_dir)))
    row = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "abc"}],
        "rejected": [{"role": "assistant", "content": "xyz"}],
    }
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
    with pytest.raises(UserError, match="trust_remote_code"):
        make_plan(write_matrix(m), results=tmp_path / "r")
    with pytest.raises(UserError, match="no such directory"):
        make_plan(write_matrix(small_matrix(model={"path": str(tmp_path / "missing")})), results=tmp_path / "r")


def test_results_path_that_is_a_file_is_rejected_before_work(tmp_path, write_matrix):
    blocker = tmp_path / "results"
    blocker.write_text("not a dir")
    with pytest.raises(UserError, match="is a file"):
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


# ---------------------------------------------------------------------------------------------
# Data by URI (pyarrow.fs): file:// here, s3:// on a loopback S3-compatible server (moto).

ROWS = [{"prompt": f"Q{i}: ", "chosen": "abc" * (i + 1), "rejected": "xyz"} for i in range(6)]


def _jsonl(rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def test_file_uris_load_like_paths_and_keep_their_messages(tmp_path, write_jsonl, write_matrix):
    tr, he = write_jsonl(ROWS[:4], "tr.jsonl"), write_jsonl(ROWS[4:], "he.jsonl")
    m = small_matrix()
    m["data"] = {"train": tr.as_uri(), "heldout": he.as_uri(), "max_length": 96}
    spec = load_matrix(write_matrix(m))
    assert (spec.data.train, spec.data.heldout) == (tr.as_uri(), he.as_uri())  # URIs are not resolved as paths
    by_uri = make_plan(spec, results=tmp_path / "r")
    assert by_uri.train_rows == ROWS[:4] and by_uri.heldout_rows == ROWS[4:]
    m["data"] = {"train": "tr.jsonl", "heldout": "he.jsonl", "max_length": 96}
    by_path = make_plan(write_matrix(m), results=tmp_path / "r")
    assert [c.id for c in by_uri.cells] == [c.id for c in by_path.cells]  # content decides the cell ids

    bad = write_jsonl([GOOD, "{not json", {"prompt": "p", "chosen": "a"}], "bad.jsonl")
    with pytest.raises(UserError) as e:
        load_rows(bad.as_uri(), "train")
    assert [p.split(": ")[0] for p in e.value.problems] == [f"{bad.as_uri()}:2", f"{bad.as_uri()}:3"]
    with pytest.raises(UserError, match=r"^data.heldout: file:///.*/nope.jsonl: no such object \(expected a JSONL"):
        load_rows((tmp_path / "nope.jsonl").as_uri(), "heldout")
    with pytest.raises(UserError, match=r"data.train: file://relative/x.jsonl: not a URI ablate can read"):
        load_rows("file://relative/x.jsonl", "train")
    with pytest.raises(UserError, match=r"data.train: nosuch://b/x.jsonl: not a URI ablate can read"):
        load_rows("nosuch://b/x.jsonl", "train")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server for this module with fake credentials; yields (endpoint, filesystem) with bucket 'prefs'."""
    with pytest.MonkeyPatch.context() as mp, s3_server() as endpoint:
        for k, v in FAKE_AWS_ENV.items():
            mp.setenv(k, v)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        fs = s3_filesystem(endpoint)
        fs.create_dir("prefs")
        for key, data in {
            "train.jsonl": _jsonl(ROWS[:4]),
            "heldout.jsonl": _jsonl(ROWS[4:]),
            "leak.jsonl": _jsonl([ROWS[5], ROWS[1]]),
            "bad.jsonl": _jsonl([GOOD, "{not json", {**GOOD, "chosen": ""}]),
            "latin1.jsonl": _jsonl([GOOD]) + b'{"prompt": "caf\xe9"}\n',
        }.items():
            with fs.open_output_stream(f"prefs/{key}") as f:
                f.write(data)
        yield endpoint, fs


def test_s3_uris_load_with_endpoint_in_the_query_or_the_environment(s3, monkeypatch):
    endpoint, _ = s3
    rows = load_rows(s3_uri(endpoint, "prefs/train.jsonl"), "train")
    assert rows == ROWS[:4] and rows.source == "s3://prefs/train.jsonl"  # the query (endpoint) is not shown
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{endpoint}")  # the standard variable, honoured by pyarrow
    assert load_rows("s3://prefs/heldout.jsonl", "heldout") == ROWS[4:]


def test_s3_objects_get_the_same_file_line_messages(s3):
    endpoint, _ = s3
    with pytest.raises(UserError) as e:
        load_rows(s3_uri(endpoint, "prefs/bad.jsonl"), "train")
    assert [p.split(": ")[0] for p in e.value.problems] == ["s3://prefs/bad.jsonl:2", "s3://prefs/bad.jsonl:3"]
    assert "not valid JSON" in e.value.problems[0] and "empty completion" in e.value.problems[1]
    with pytest.raises(UserError, match=r"^s3://prefs/latin1.jsonl:2: data.train: not UTF-8 text"):
        load_rows(s3_uri(endpoint, "prefs/latin1.jsonl"), "train")
    for key in ("prefs/nope.jsonl", "no-such-bucket/train.jsonl"):
        with pytest.raises(UserError) as e:
            load_rows(s3_uri(endpoint, key), "heldout")
        assert e.value.problems == [
            f"data.heldout: s3://{key}: no such object (expected a JSONL file of prompt/chosen/rejected rows)"
        ]
    with pytest.raises(UserError, match="not a URI ablate can read"):
        load_rows(f"s3://prefs/train.jsonl?bogus=1&endpoint_override={endpoint}", "train")
    with pytest.raises(UserError) as e:  # keys in the URI are used, never shown
        load_rows(s3_uri(endpoint, "AKID:S3CRET@prefs/nope.jsonl"), "train")
    assert "s3://prefs/nope.jsonl: no such object" in str(e.value) and "S3CRET" not in str(e.value)


def test_matrix_with_s3_data_validates_through_the_cli(s3, write_matrix, tmp_path):
    endpoint, _ = s3
    m = small_matrix()
    m["data"] = {
        "train": s3_uri(endpoint, "prefs/train.jsonl"),
        "heldout": s3_uri(endpoint, "prefs/heldout.jsonl"),
        "max_length": 96,
    }
    res = CliRunner().invoke(app, ["validate", str(write_matrix(m)), "--results", str(tmp_path / "r")])
    assert res.exit_code == 0 and "4 training pairs, 2 held-out pairs" in res.output, res.output
    m["data"]["heldout"] = s3_uri(endpoint, "prefs/leak.jsonl")
    res = CliRunner().invoke(app, ["validate", str(write_matrix(m)), "--results", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "held-out s3://prefs/leak.jsonl:2 is training s3://prefs/train.jsonl:2" in res.output, res.output


def test_unreachable_store_is_one_clear_line(tmp_path, write_matrix, monkeypatch):
    for k, v in FAKE_AWS_ENV.items():
        monkeypatch.setenv(k, v)
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    m = small_matrix()
    m["data"]["train"] = s3_uri(closed, "prefs/train.jsonl")
    res = CliRunner().invoke(app, ["validate", str(write_matrix(m)), "--results", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("  ✗")]
    assert line.startswith("  ✗ data.train: s3://prefs/train.jsonl: cannot read (") and "endpoint" in line, line
