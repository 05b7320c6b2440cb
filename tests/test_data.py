"""Data: JSONL checks with file:line, leakage, truncation rule, chat templates, local model dirs, data by URI."""

import json
import socket
import time

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
    with pytest.raises(UserError, match="no folder `.*missing`"):
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


# ---------------------------------------------------------------------------------------------
# Grouped data problems and mixed layouts (issue 19 item 2).


def test_repeated_problems_are_one_line_per_kind_with_exact_counts(write_jsonl):
    bad = [{"chosen": "a", "rejected": "b"}] * 250 + ["{oops"] * 4 + [{"prompt": "p", "chosen": "x", "rejected": "x"}]
    path = write_jsonl(
        [GOOD, *bad, {"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}], "d.jsonl"
    )
    with pytest.raises(UserError) as e:
        load_rows(str(path), "train")
    assert e.value.problems == [
        f"{path}:2: missing field(s) ['prompt']; each row needs prompt, chosen, rejected [250 rows: lines 2, 3, 4, …]",
        f"{path}:252: not valid JSON (Expecting property name enclosed in double quotes at column 2); a JSONL file "
        "holds one JSON object per line [4 rows: lines 252, 253, 254, …]",
        f"{path}:256: chosen == rejected; a pair must differ",
        f"{path}:257: chosen: message list(s) but prompt, rejected: text; a row is standard (prompt, chosen and "
        "rejected all text) or conversational (all three message lists), as in TRL",
    ]


# ---------------------------------------------------------------------------------------------
# Conversational rows: the chat template's own tokens, not one more EOS or BOS (issue 19 item 2).

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)  # Qwen2's template; Qwen's EOS is <|im_end|>, so each turn already ends in EOS


def chatml_tokenizer():
    tok = builtin_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML
    return tok


CONV_ROW = {
    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    "chosen": [{"role": "assistant", "content": "abc"}],
    "rejected": [{"role": "assistant", "content": "xyzw"}],
}


def test_chatml_completion_ends_with_one_end_of_turn_like_the_template():
    """Before: each completion ended <|im_end|>\\n<|im_end|> (the template's end of turn, then EOS again)."""
    tok = chatml_tokenizer()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == im_end
    (pair,) = encode([CONV_ROW], tok, 256, 128, "t")
    for side in ("chosen", "rejected"):
        ids = getattr(pair, side)
        template = tok.apply_chat_template(CONV_ROW["prompt"] + CONV_ROW[side], tokenize=True)["input_ids"]
        assert pair.prompt + ids == template, side  # the template's own ids, token for token
        assert ids.count(im_end) == 1 and ids[-2:] == [im_end, tok.convert_tokens_to_ids("\n")], side
    (plain,) = encode([GOOD], tok, 256, 128, "t")
    assert plain.chosen[-1] == im_end and plain.chosen.count(im_end) == 1  # plain text still gets its EOS


def test_a_template_that_writes_bos_gets_it_once():
    tok = chatml_tokenizer()
    tok.add_special_tokens({"bos_token": "<|begin|>"})
    tok.chat_template = "{{ bos_token }}" + CHATML  # as Llama 3's template starts with <|begin_of_text|>
    (pair,) = encode([CONV_ROW], tok, 256, 128, "t")
    template = tok.apply_chat_template(CONV_ROW["prompt"] + CONV_ROW["chosen"], tokenize=True)["input_ids"]
    assert pair.prompt + pair.chosen == template and pair.prompt.count(tok.bos_token_id) == 1
    (plain,) = encode([GOOD], tok, 256, 128, "t")
    assert plain.prompt[0] == tok.bos_token_id  # plain text: the tokenizer's BOS, as before


def test_conversational_data_with_a_chatml_model_folder_validates(tmp_path, write_jsonl, write_matrix):
    """A local folder with a ChatML tokenizer and an embedding sized to it: chat template and vocabulary agree."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = chatml_tokenizer()
    d = tmp_path / "chatml-model"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
        )
    ).save_pretrained(d)
    tok.save_pretrained(d)
    rows = [{**CONV_ROW, "prompt": [{"role": "user", "content": f"q{i}"}]} for i in range(6)]
    m = small_matrix(model={"path": "chatml-model"})
    m["data"] = {"train": str(write_jsonl(rows[:4], "tr.jsonl")), "heldout": str(write_jsonl(rows[4:], "he.jsonl"))}
    res = CliRunner().invoke(app, ["validate", str(write_matrix(m)), "--results", str(tmp_path / "r")])
    assert res.exit_code == 0 and "4 training pairs, 2 held-out pairs" in res.output, res.output


# ---------------------------------------------------------------------------------------------
# The model's structure without its weights (issue 15 item 2).


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_builtin_structure_from_settings_matches_the_meta_device_model(name):
    """The driver reads builtin structure from plain numbers (no torch); it must be the real model's."""
    import torch

    from ablate.inputs.structure import _dims, builtin_structure

    s = builtin_structure(f"builtin:{name}")
    with torch.device("meta"):
        model = builtin_model(name)
    real = tuple((n, type(m).__name__, _dims(m)) for n, m in model.named_modules())
    assert tuple((m.name, m.kind, m.dims) for m in s.modules) == real
    assert s.embedding_rows == model.get_input_embeddings().num_embeddings
    assert s.context == model.config.max_position_embeddings


def test_a_7b_config_is_checked_without_weights(tmp_path, write_matrix):
    """A Llama-2-7B-shaped config.json and a tokenizer, no weights file: validate checks targets and ranks against
    the real module shapes (meta device), in seconds and without 27 GB of memory."""
    import resource

    from transformers import LlamaConfig

    d = tmp_path / "llama-7b-shaped"
    LlamaConfig(
        vocab_size=384,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
    ).save_pretrained(d)
    builtin_tokenizer().save_pretrained(d)
    m = small_matrix(model={"path": "llama-7b-shaped"})
    m["matrix"]["lora_rank"] = [16, 2048]
    m["decision"]["baseline"]["lora_rank"] = 16
    m["train"]["lora"] = {"targets": ["q_proj", "k_proj", "gate"]}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with pytest.raises(UserError) as e:
        make_plan(write_matrix(m), results=tmp_path / "r")
    assert time.perf_counter() - t < 30 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 2 << 20  # KiB
    (problem,) = e.value.problems  # ranks are judged once the targets exist
    assert "train.lora.targets.2: 'gate' names no module of" in problem and "(did you mean 'gate_proj'?)" in problem
    m["train"]["lora"] = {"targets": ["k_proj", "v_proj"]}  # 8 KV heads × 128: full rank 1024
    with pytest.raises(UserError) as e:
        make_plan(write_matrix(m), results=tmp_path / "r")
    (problem,) = e.value.problems
    assert "matrix.lora_rank.1: 2048 is above the full rank" in problem
    assert "(k_proj 4096→1024, v_proj 4096→1024)" in problem and "allowed: ranks up to 1024" in problem


# ---------------------------------------------------------------------------------------------
# Where model.path points (issue 19 item 1), through the real command line with HF_HUB_OFFLINE and HF_HUB_CACHE.


def _hub_cache(root, repo: str) -> None:
    """The Hugging Face cache layout (models--org--name/refs/main → snapshots/<commit>/) holding a tiny model."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    d = root / f"models--{repo.replace('/', '--')}"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(commit)
    builtin_model("tiny-llama").save_pretrained(d / "snapshots" / commit)
    builtin_tokenizer().save_pretrained(d / "snapshots" / commit)


def test_hub_ids_resolve_from_the_offline_cache_and_typos_fail_fast(tmp_path, write_matrix):
    from conftest import ablate_cli

    cache = tmp_path / "hf-cache"
    _hub_cache(cache, "local-org/tiny-llama")
    builtin_model("tiny-llama").save_pretrained(tmp_path / "tiny-qwen-dir")
    builtin_tokenizer().save_pretrained(tmp_path / "tiny-qwen-dir")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    res = ablate_cli(
        "validate", write_matrix(small_matrix(model={"path": "local-org/tiny-llama"})), "-r", tmp_path / "r", **env
    )
    assert res.returncode == 0 and "2 cells" in res.stdout, (res.stdout, res.stderr)  # a cached hub id, offline

    t = time.perf_counter()
    res = ablate_cli("validate", write_matrix(small_matrix(model={"path": "tiny-qwen"})), "-r", tmp_path / "r", **env)
    seconds = time.perf_counter() - t
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "model.path: no folder `tiny-qwen` next to the matrix" in res.stderr, res.stderr
    assert "not in the Hugging Face cache" in res.stderr and "did you mean `tiny-qwen-dir`?" in res.stderr
    assert seconds < 20, seconds  # was 5 minutes: every cell failing with the same connection error


def test_conversational_rows_hash_with_their_tokenization_rule():
    """Token ids of conversational rows changed (no doubled EOS): their cells and cached reference log-probs get new
    ids, so nothing made with the old ids is reused; plain-text data keeps its ids (finished cells stay done)."""
    import hashlib

    from ablate.inputs.data import rows_hash

    def old_hash(rows):  # the formula before the change, written out
        h = hashlib.sha256()
        for r in rows:
            h.update(json.dumps([r["prompt"], r["chosen"], r["rejected"]], sort_keys=True).encode() + b"\n")
        return h.hexdigest()[:16]

    assert rows_hash([GOOD, GOOD]) == old_hash([GOOD, GOOD])
    assert rows_hash([CONV_ROW]) != old_hash([CONV_ROW])
