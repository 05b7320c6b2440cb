"""Datasets as users have them: Parquet/Arrow files, `datasets` save_to_disk directories, {hf: …} sources, TRL's
implicit-prompt form, and data.heldout.split_from_train. All offline on files written here; the hub itself is
exercised only with ABLATE_TEST_HUB=1 (this test machine has no hub access)."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ablate.errors import UserError
from ablate.inputs.data import load_rows, rows_hash
from ablate.inputs.letters import letters_task
from ablate.schema import DatasetSource, SplitFromTrain

from conftest import ablate_cli, small_matrix


@pytest.fixture(autouse=True)
def offline_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # a local `hf:` folder must never reach for the network
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def standard_rows(n=24):
    return [{**r, "category": ["math", "code", "chat"][i % 3]} for i, r in enumerate(letters_task(n, 0.3))]


def conversational_rows(n=24):
    return [
        {
            "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in letters_task(n, 0.3)
    ]


def write_every_format(rows, d) -> list:
    """The same rows as JSONL, Parquet, Arrow (file and stream), save_to_disk (Dataset and DatasetDict) and a
    local dataset repository read through load_dataset (the `hf:` code path)."""
    import datasets

    d.mkdir(parents=True, exist_ok=True)
    (d / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, d / "rows.parquet")
    with pa.ipc.new_file(d / "rows.arrow", table.schema) as w:
        w.write_table(table)
    with pa.ipc.new_stream(d / "stream.arrow", table.schema) as w:
        w.write_table(table)
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(d / "saved")
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(d / "saved_dict")
    (d / "repo" / "data").mkdir(parents=True)
    pq.write_table(table, d / "repo" / "data" / "train-00000-of-00001.parquet")
    return [
        str(d / "rows.jsonl"),
        str(d / "rows.parquet"),
        str(d / "rows.arrow"),
        str(d / "stream.arrow"),
        str(d / "saved"),
        DatasetSource(path=str(d / "saved_dict"), split="train"),
        DatasetSource(hf=str(d / "repo"), split="train"),
    ]


def test_jsonl_content_hash_is_unchanged(write_jsonl):
    # Computed with the code before table formats existed (commit 0cfdf61): JSONL hashes, and so every cell id
    # of a JSONL matrix, must not move.
    rows = [
        {"prompt": "Q: sky?\n", "chosen": "blue", "rejected": "green", "id": 1},
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "assistant", "content": "go away"}],
        },
    ]
    # Plain-text rows keep their hash; conversational ones moved on purpose (issue 19: their token ids lost the
    # doubled end of turn, so cells trained on the old ids must not be reused).
    assert rows_hash(load_rows(str(write_jsonl(rows[:1], "plain.jsonl")), "train")) == "c61aa9961f6f1e13"
    assert rows_hash(load_rows(str(write_jsonl(rows, "pin.jsonl")), "train")) != "7cabc2613884b81a"


@pytest.mark.parametrize("make", [standard_rows, conversational_rows], ids=["standard", "conversational"])
def test_every_format_gives_the_same_rows_hash_and_cell_ids(make, tmp_path):
    from ablate.matrix.plan import make_plan

    rows = make()
    sources = write_every_format(rows, tmp_path / "data")
    hashes = {str(s): rows_hash(load_rows(s, "train")) for s in sources}
    assert len(set(hashes.values())) == 1, hashes
    assert hashes[sources[0]] == rows_hash(rows)
    first = load_rows(sources[1], "train")
    assert [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in first] == [
        {k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows
    ]

    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(r) + "\n" for r in letters_task(8, split="heldout")))
    ids = set()
    for s in (sources[0], sources[1], sources[5]):
        m = small_matrix(storage=str(tmp_path / "results"))
        m["data"] = {
            "train": s.model_dump(exclude_none=True) if isinstance(s, DatasetSource) else s,
            "heldout": str(heldout),
            "max_length": 200,
        }
        (tmp_path / "m.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
        ids.add(
            tuple(c.id for c in make_plan(tmp_path / "m.yaml", check_tokens=False).cells)
        )  # builtin: no chat template
    assert len(ids) == 1, "cell ids depend on the rows, not on the file format"


def test_implicit_prompt_matches_trl_and_hashes_like_the_explicit_rows(tmp_path):
    from trl.data_utils import extract_prompt as trl_extract

    from ablate.inputs.datasets import extract_prompt

    convo = [{"role": "user", "content": "What color is the sky?"}]
    examples = [
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},  # space before the split → completion
        {"chosen": "Q: 2+2?\nA: 4", "rejected": "Q: 2+2?\nA: 5"},
        {"chosen": "abc", "rejected": "abcd"},  # one is a prefix of the other: TRL keeps the last char out
        {
            "chosen": [*convo, {"role": "assistant", "content": "It is blue."}],
            "rejected": [*convo, {"role": "assistant", "content": "It is green."}],
        },
        {
            "chosen": [
                *convo,
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "more"},
                {"role": "assistant", "content": "b"},
            ],
            "rejected": [
                *convo,
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "less"},
                {"role": "assistant", "content": "c"},
            ],
        },
    ]
    for ex in examples:
        assert extract_prompt(ex["chosen"], ex["rejected"]) == trl_extract(ex)

    implicit = [
        {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in letters_task(16)
    ]
    pq.write_table(pa.Table.from_pylist(implicit), tmp_path / "implicit.parquet")
    explicit = tmp_path / "explicit.jsonl"
    explicit.write_text("".join(json.dumps(trl_extract(r)) + "\n" for r in implicit))
    got = load_rows(str(tmp_path / "implicit.parquet"), "train")
    assert rows_hash(got) == rows_hash(load_rows(str(explicit), "train"))
    assert all(r["prompt"].startswith("Write about") for r in got)

    conv_implicit = [{"chosen": ex["chosen"], "rejected": ex["rejected"]} for ex in examples[3:]]
    pq.write_table(pa.Table.from_pylist(conv_implicit), tmp_path / "conv.parquet")
    assert [r["prompt"] for r in load_rows(str(tmp_path / "conv.parquet"), "train")] == [
        trl_extract(ex)["prompt"] for ex in conv_implicit
    ]


def problems_of(source, split="train") -> list[str]:
    with pytest.raises(UserError) as e:
        load_rows(source, split)
    return e.value.problems


def test_table_mistakes_name_the_source_column_and_row(tmp_path):
    import datasets

    def parquet(name, rows=None, table=None):
        pq.write_table(table if table is not None else pa.Table.from_pylist(rows), tmp_path / name)
        return str(tmp_path / name)

    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    (p,) = problems_of(parquet("nocol.parquet", [{"prompt": "p", "chosen": "a"}]))
    assert "nocol.parquet: missing column(s) ['rejected']" in p and "implicit-prompt" in p
    (p,) = problems_of(parquet("int.parquet", [{"prompt": "p", "chosen": 1, "rejected": "b"}]))
    assert "column chosen: int64 is not text (a string column) or a list of {role, content} messages" in p
    nulls = problems_of(parquet("null.parquet", [good, {"prompt": "p", "chosen": None, "rejected": "b"}, good]))
    assert nulls == [f"{tmp_path / 'null.parquet'}:2: chosen: must be a string or a list of messages, got NoneType"]
    same = problems_of(parquet("same.parquet", [good, {"prompt": "q", "chosen": "x", "rejected": "x"}]))
    assert same == [f"{tmp_path / 'same.parquet'}:2: chosen == rejected; a pair must differ"]  # the JSONL wording
    (p,) = problems_of(
        parquet("mixed.parquet", [{"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}])
    )
    assert "columns mix text and message lists" in p
    (tmp_path / "junk.parquet").write_bytes(b"not a table")
    assert "cannot read it as a table" in problems_of(str(tmp_path / "junk.parquet"))[0]
    assert "no such file" in problems_of(str(tmp_path / "gone.arrow"))[0]

    ds = datasets.Dataset.from_list([good])
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(tmp_path / "dd")
    (p,) = problems_of(str(tmp_path / "dd"))
    assert "has the splits ['train', 'test']; choose one with split:" in p
    (p,) = problems_of(DatasetSource(path=str(tmp_path / "dd"), split="dev"))
    assert "data.train.split: 'dev' is not a split of" in p and "allowed: train, test" in p
    (p,) = problems_of(DatasetSource(path=str(tmp_path / "nocol.parquet"), split="train"))
    assert "a file has no splits" in p


def test_matrix_with_a_saved_dataset_dict_validates_through_the_cli(tmp_path):
    import datasets

    rows = letters_task(20)
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:16]), "test": datasets.Dataset.from_list(rows[16:])}
    ).save_to_disk(tmp_path / "mine")
    m = small_matrix()
    m["data"] = {"train": {"path": "mine", "split": "train"}, "heldout": {"path": "mine", "split": "test"}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(m, sort_keys=False))  # relative to the matrix's folder
    r = ablate_cli("validate", tmp_path / "m.yaml", cwd=tmp_path.parent, HF_DATASETS_OFFLINE="1")
    assert r.returncode == 0 and "16 training pairs, 4 held-out pairs" in r.stdout, r.stdout + r.stderr
    m["data"]["heldout"] = {"path": "mine", "split": "validation"}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    r = ablate_cli("validate", tmp_path / "m.yaml", cwd=tmp_path.parent, HF_DATASETS_OFFLINE="1")
    assert r.returncode == 2 and "data.heldout.split: 'validation' is not a split" in r.stderr, r.stderr


@pytest.mark.skipif(
    os.environ.get("ABLATE_TEST_HUB") != "1",
    reason="needs the Hugging Face Hub: set ABLATE_TEST_HUB=1 where there is network access (not attempted here)",
)
def test_hub_dataset_with_split_and_revision(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    src = DatasetSource(hf="trl-lib/ultrafeedback_binarized", split="test", revision="main")
    rows = load_rows(src, "heldout")
    assert len(rows) > 100 and isinstance(rows[0]["chosen"], list)
    assert rows_hash(load_rows(src, "heldout")) == rows_hash(rows)


# -- data.heldout.split_from_train ---------------------------------------------------------------------------


def grouped_rows(n_prompts=120):
    """Prompts with one to three pairs each, and a category column."""
    rows = []
    for i, r in enumerate(letters_task(n_prompts, 0.4)):
        for k in range(1 + i % 3):
            rows.append({**r, "chosen": r["chosen"] + " x" * k, "category": ["math", "code", "chat"][i % 3]})
    return rows


def test_split_from_train_is_grouped_stratified_and_reproducible():
    from ablate.inputs.split import split_from_train

    rows = grouped_rows()
    spec = SplitFromTrain(split_from_train=0.2, seed=0, stratify=["category", "length"])
    train, held, rec = split_from_train(rows, spec, "train.jsonl")
    assert len(train) + len(held) == len(rows) == rec["source_rows"]
    prompts = lambda rs: {r["prompt"] for r in rs}  # noqa: E731
    assert not prompts(train) & prompts(held), "every pair of a prompt lands on one side"
    assert len(prompts(held)) == round(0.2 * 120) == sum(s["heldout"] for s in rec["strata"].values())
    # Strata: 3 categories × 4 length quartiles; each gives up its proportional share (largest remainders).
    assert len(rec["strata"]) == 12
    for s in rec["strata"].values():
        assert abs(s["heldout"] - 0.2 * s["prompts"]) < 1
    # The quartiles are of the total response length in characters, by rank: check one against numpy.
    import numpy as np

    firsts = {}
    for r in rows:
        firsts.setdefault(r["prompt"], len(r["chosen"]) + len(r["rejected"]))
    lengths = np.array(list(firsts.values()))
    q4 = lengths >= np.quantile(lengths, 0.75, method="higher")
    assert abs(int(q4.sum()) - 30) <= 3  # ≈ a quarter of the prompts are in Q4 (ties aside)
    assert rec["heldout_index"] == sorted(rec["heldout_index"]) and [rows[i] for i in rec["heldout_index"]] == held

    again = split_from_train(rows, spec, "train.jsonl")
    assert again[2] == rec and list(again[1]) == list(held)
    other = split_from_train(rows, SplitFromTrain(split_from_train=0.2, seed=1, stratify=["length"]), "train.jsonl")
    assert other[2]["heldout_index"] != rec["heldout_index"]


def test_split_is_recorded_in_plan_json_and_keeps_cell_ids(tmp_path, write_jsonl):
    from ablate.matrix.plan import make_plan

    write_jsonl(grouped_rows(60), "train.jsonl")
    m = small_matrix(storage=str(tmp_path / "results"))
    m["data"] = {
        "train": "train.jsonl",
        "heldout": {"split_from_train": 0.25, "seed": 3, "stratify": "length"},
        "max_length": 200,
    }
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    plan = make_plan(tmp_path / "m.yaml")
    plan.write()
    rec = json.loads((tmp_path / "results" / "t" / "plan.json").read_text())["split"]
    assert rec["fraction"] == 0.25 and rec["seed"] == 3 and rec["stratify"] == ["length"]
    assert rec["heldout_rows"] == len(plan.heldout_rows) and rec["train_rows"] == len(plan.train_rows)
    assert rows_hash(plan.heldout_rows) == plan.cells[0].config.data.hashes["heldout"]
    assert [c.id for c in make_plan(tmp_path / "m.yaml").cells] == [c.id for c in plan.cells]
    # Errors come back as one clear message through the CLI, before any work.
    m["data"]["heldout"]["stratify"] = ["topic"]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    r = ablate_cli("validate", tmp_path / "m.yaml")
    assert r.returncode == 2, r.stderr
    assert "data.heldout.stratify: 'topic' is neither `length` nor a column of data.train" in r.stderr
    assert "allowed: length, category" in r.stderr
    m["data"]["train"] = {"builtin": "letters", "n": 2}
    m["data"]["heldout"] = {"split_from_train": 0.5}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    assert make_plan(tmp_path / "m.yaml").split["heldout_rows"] == 1
    m["data"]["train"] = "one.jsonl"
    write_jsonl([{"prompt": "p", "chosen": "a", "rejected": "b"}], "one.jsonl")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    with pytest.raises(UserError, match="has 1 distinct prompt"):
        make_plan(tmp_path / "m.yaml")
