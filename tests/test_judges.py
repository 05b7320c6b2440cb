"""Judges on real generations: one small matrix (DPO vs SimPO × 2 seeds, generations on) is trained once;
then the judge changes (builtin rule, an OpenAI-compatible server on loopback, a tiny reward model) and
every later run only judges — a judge is not part of a cell id. Each judge's verdicts are checked against
an independent computation, and failures (refused, timed out, unauthorised) are retried, then reported."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from judgeserver import JudgeServer

from ablate.judges import JudgeFailed, compare
from ablate.results.storage import read_plan
from ablate.schema import OpenAIEndpoint, OpenAIJudge
from ablate.verdict import stats
from ablate.verdict.decide import decide
from ablate.verdict.winrate import win_pairs

from conftest import ablate_cli, small_matrix


def letters(text: str) -> float:  # the task's truth, written again here
    s = "".join(c for c in text if not c.isspace())
    return sum("a" <= c <= "m" for c in s) / len(s) if s else 0.0


def rule(c: str, b: str) -> float:
    return 0.5 if c == b or letters(c) == letters(b) else float(letters(c) > letters(b))


def matrix(judge, **decision) -> dict:
    m = small_matrix()
    m["matrix"]["seed"] = [0, 1]
    m["eval"] = {"generate": {"prompts": 8, "max_new_tokens": 16, "temperature": 1.0}}
    m["judge"] = judge
    m["decision"] = {**m["decision"], **decision}
    return m


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("judges")

    def _run(judge, verb="run", **decision):
        (tmp / "m.yaml").write_text(yaml.safe_dump(matrix(judge, **decision)))
        return ablate_cli(verb, tmp / "m.yaml", "--results", tmp / "r")

    r = _run("builtin")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp / "r" / "t", _run, r


def tables(res):
    cells = pd.read_parquet(res / "cells.parquet")
    gens = pd.read_parquet(res / "generations.parquet")
    j = pd.read_parquet(res / "judgements.parquet")
    key = read_plan(res)["judge"]["key"]
    return cells, gens, j[j["judge_key"] == key]


def expected(cells, gens) -> pd.DataFrame:
    """Every (challenger cell, baseline cell, prompt) outcome by the rule, from the generations alone."""
    final = gens[gens["final"]]
    base = cells.loc[cells["is_baseline"], "cell_id"]
    rows = []
    for c in cells.loc[~cells["is_baseline"], "cell_id"]:
        for b in base:
            x = final[final["cell_id"] == c].set_index("prompt_index")["text"]
            y = final[final["cell_id"] == b].set_index("prompt_index")["text"]
            rows += [{"cell_id": c, "baseline_cell_id": b, "prompt_index": i, "want": rule(x[i], y[i]),
                      "c": x[i], "b": y[i]} for i in x.index]  # fmt: skip
    return pd.DataFrame(rows)


def test_builtin_verdicts_follow_the_task_and_reach_the_report(run):
    res, _, r = run
    cells, gens, j = tables(res)
    assert (cells["status"] == "done").all() and len(cells) == 4
    assert gens.groupby("cell_id").size().eq(8).all() and gens["final"].all()
    want = expected(cells, gens).merge(j, on=["cell_id", "baseline_cell_id", "prompt_index"])
    assert len(want) == len(j) == 2 * 2 * 8
    assert (want["want"] == want["outcome"]).all()
    # The report's win rate = mean over prompts, seeds and baseline seeds, computed here independently.
    wr = want.groupby("prompt_index")["want"].mean().mean()
    assert f"{wr:.3f} [" in r.stdout and "0.500 (itself)" in r.stdout
    md = (res / "report.md").read_text()
    assert "## What each configuration writes" in md and "## Example answers" in md and "win rate [95%]" in md
    assert (res / "generations.png").stat().st_size > 10_000


def test_win_rate_decision_is_the_recipe_test_on_paired_outcomes(run):
    res, _run, _ = run
    cells, gens, j = tables(res)
    d = decide(cells, win_pairs(j, cells), metric="win_rate")
    row = d.comparisons.set_index("objective").loc["simpo"]
    exp = expected(cells, gens)
    seeds = sorted(
        cells.loc[~cells["is_baseline"], "cell_id"], key=lambda c: int(cells.set_index("cell_id").at[c, "seed"])
    )
    y = np.stack([exp[exp["cell_id"] == c].groupby("prompt_index")["want"].mean().to_numpy() for c in seeds], 1)
    assert row["accuracy"] == pytest.approx(y.mean())
    sc = stats.seed_components({"simpo": y})  # τ² from the challenger only: the baseline's 0.5s have no spread
    ref = stats.recipe_compare(np.full((8, 2), 0.5), y, float(sc["tau2"]), sc["df"], s2=float(sc["s2"]))
    assert row["p_value"] == pytest.approx(float(ref["p"]))
    assert d.metric == "win_rate" and "prompts" in d.reason
    r = _run("builtin", metric="win_rate")  # a decision on the win rate: nothing retrains
    assert r.returncode == 0 and "cell(s) on Ray" not in r.stdout, r.stdout[-2000:]
    assert ("judge prefers its answers" in r.stdout) or ("against it on 8 prompts" in r.stdout)
    assert "on the judge's win rate against the baseline" in r.stdout


def _items(res):
    cells, gens, _ = tables(res)
    exp = expected(cells, gens)
    return exp, [{"prompt": "Write", "challenger": c, "baseline": b} for c, b in zip(exp["c"], exp["b"])]


def _llm(url, **kw):
    return OpenAIJudge(openai_compatible=OpenAIEndpoint(base_url=url, model="judge-1", **kw))


def test_llm_judge_swaps_positions_and_agrees_with_the_rule(run):
    exp, items = _items(run[0])
    differ = sum(it["challenger"] != it["baseline"] for it in items)
    with JudgeServer("fair") as s:
        out = compare(_llm(s.url, concurrency=3), items)
        assert [o["outcome"] for o in out] == list(exp["want"])
        assert s.requests == 2 * differ  # both orders for each pair of different answers, none for identical ones
    with JudgeServer("always_a") as s:  # pure position bias cancels to ties
        assert {o["outcome"] for o in compare(_llm(s.url), items)} == {0.5}
        assert {o["verdicts"] for o in compare(_llm(s.url), items)} <= {"A|A", "same answer"}


@pytest.mark.parametrize(
    ("mode", "kw", "message", "requests"),
    [
        ("error", {"retries": 2}, "HTTP 500 Internal Server Error (after 3 tries)", 3),
        ("refuse", {"retries": 1}, "no verdict in its answer \"I'm sorry", 2),
        ("slow", {"retries": 1, "timeout_s": 0.3}, "timed out after 0.3 s (after 2 tries)", 2),
    ],
)
def test_llm_judge_retries_then_fails_loudly(run, mode, kw, message, requests):
    _, items = _items(run[0])
    items = [it for it in items if it["challenger"] != it["baseline"]][:1]
    with JudgeServer(mode, delay=1.5) as s:
        with pytest.raises(JudgeFailed, match="judge-1") as e:
            compare(_llm(s.url, concurrency=1, **kw), items)
        assert message in str(e.value) and s.requests == requests


def test_llm_judge_key_comes_from_the_environment(run, monkeypatch):
    _, items = _items(run[0])
    items = [it for it in items if it["challenger"] != it["baseline"]][:2]
    with JudgeServer("fair", key="sk-test-123") as s:
        monkeypatch.delenv("JUDGE_KEY", raising=False)
        with pytest.raises(JudgeFailed, match="HTTP 401") as e:
            compare(_llm(s.url, api_key_env="JUDGE_KEY", concurrency=1), items[:1])
        assert s.requests == 1 and "sk-test" not in str(e.value)  # 401 is not retried, and the key never shows
        monkeypatch.setenv("JUDGE_KEY", "sk-test-123")
        assert len(compare(_llm(s.url, api_key_env="JUDGE_KEY"), items)) == 2
        assert s.auth[-1] == "Bearer sk-test-123"


def test_a_failing_endpoint_keeps_the_cells_and_resume_judges_again(run):
    res, _run, _ = run
    before = {p: p.stat().st_mtime for p in (res / "cells").glob("*/cell.json")}
    with JudgeServer("error") as s:
        judge = {"openai_compatible": {"base_url": s.url, "model": "judge-1", "retries": 1, "concurrency": 2}}
        r = _run(judge)
        assert r.returncode == 1 and "The judge failed" in r.stderr and "HTTP 500" in r.stderr, r.stderr[-2000:]
        assert "JUDGE FAILED" in (res / "report.md").read_text()
        err = json.loads(next((res / "judgements").glob("*/error.json")).read_text())
        assert "HTTP 500" in err["error"] and s.requests >= 2
        s.mode = "fair"
        r = _run(judge, verb="resume")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "JUDGE FAILED" not in (res / "report.md").read_text()
    assert {p: p.stat().st_mtime for p in (res / "cells").glob("*/cell.json")} == before  # nothing retrained
    cells, gens, j = tables(res)
    got = expected(cells, gens).merge(j, on=["cell_id", "baseline_cell_id", "prompt_index"])
    assert len(got) == 32 and (got["want"] == got["outcome"]).all()  # the LLM judge agrees with the rule


def _save_tiny(tmp, cls, **cfg):
    import torch
    from transformers import LlamaConfig

    from ablate.inputs.models import builtin_tokenizer

    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = LlamaConfig(vocab_size=384, num_key_value_heads=1, pad_token_id=0, eos_token_id=1, **shape, **cfg)

    torch.manual_seed(5)
    cls(config).save_pretrained(tmp)
    builtin_tokenizer().save_pretrained(tmp)
    return tmp


def test_reward_model_judge_scores_as_transformers_does(run, tmp_path, write_matrix):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

    rm = _save_tiny(tmp_path / "rm", LlamaForSequenceClassification, num_labels=1)
    res, _run, _ = run
    r = _run({"reward_model": str(rm), "batch_size": 5})
    assert r.returncode == 0 and "cell(s) on Ray" not in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    cells, gens, j = tables(res)
    assert len(j) == 32 and j["challenger_score"].notna().all()
    model, tok = AutoModelForSequenceClassification.from_pretrained(rm).eval(), AutoTokenizer.from_pretrained(rm)
    final = gens[gens["final"]].set_index(["cell_id", "prompt_index"])
    with torch.no_grad():  # one unpadded text at a time: no padding for the judge's batches to get wrong
        for _, row in j.sample(8, random_state=0).iterrows():
            for side, cid in (("challenger", row["cell_id"]), ("baseline", row["baseline_cell_id"])):
                g = final.loc[(cid, row["prompt_index"])]
                ids = tok(g["prompt"] + g["text"], return_tensors="pt")
                assert float(model(**ids).logits[0, 0]) == pytest.approx(row[f"{side}_score"], abs=1e-4)
    wins = np.where(j["challenger_score"] > j["baseline_score"], 1.0, 0.0)
    tie = np.isclose(j["challenger_score"], j["baseline_score"], rtol=0, atol=1e-6)
    assert np.array_equal(np.where(tie, 0.5, wins), j["outcome"].to_numpy())


def test_a_judge_that_is_not_a_reward_model_is_refused_before_training(tmp_path, write_matrix):
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    lm = _save_tiny(tmp_path / "lm", LlamaForCausalLM)
    clf = _save_tiny(tmp_path / "clf", LlamaForSequenceClassification, num_labels=3)
    for path, message in ((lm, "not a reward model (architectures: LlamaForCausalLM)"), (clf, "3 labels"),
                          (tmp_path / "nope", "no such directory")):  # fmt: skip
        r = ablate_cli("run", write_matrix(matrix({"reward_model": str(path)})), "--results", tmp_path / "r")
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    ep = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "ABLATE_TEST_NO_SUCH_KEY"}
    r = ablate_cli("validate", write_matrix(matrix({"openai_compatible": ep})), "--results", tmp_path / "r")
    assert r.returncode == 2 and "ABLATE_TEST_NO_SUCH_KEY is not set" in r.stderr
    assert not (tmp_path / "r").exists()
