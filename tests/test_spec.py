"""Matrix validation and expansion: errors name file, line, field and what is allowed; the product
of axes with per-objective knobs; cell ids stable across processes."""

import subprocess
import sys
import time

import pytest
import yaml

from ablate.errors import UserError
from ablate.matrix.cells import _expand_all, cell_count, expand
from ablate.matrix.plan import make_plan
from ablate.matrix.yamlfile import load_matrix, parse_matrix
from ablate.schema import MatrixSpec

from conftest import ROOT, small_matrix


def problems_for(write_matrix, m) -> list[str]:
    with pytest.raises(UserError) as e:
        make_plan(write_matrix(m), results=write_matrix("x", "unused").parent / "results")
    return e.value.problems


def test_quickstart_expands_to_2x2():
    plan = make_plan(ROOT / "matrices" / "quickstart.yaml")
    assert sorted((c.params["objective"], c.params["lora_rank"]) for c in plan.cells) == [
        ("dpo", 8),
        ("dpo", 16),
        ("simpo", 8),
        ("simpo", 16),
    ]
    assert len({c.id for c in plan.cells}) == 4
    assert [c.params["lora_rank"] for c in plan.cells if c.id in plan.baseline_ids] == [16]


def test_per_objective_lists_add_axes_only_to_that_objective(write_matrix, tmp_path):
    m = small_matrix()
    m["matrix"] = {"objective": ["dpo", "simpo", "orpo"], "lora_rank": [4, 8], "seed": [0, 1]}
    m["objectives"] = {
        "dpo": {"beta": [0.1, 0.5]},
        "simpo": {"beta": 2.0, "gamma": [0.3, 0.5, 1.0]},
        "orpo": {"lambda": 0.2},
    }
    m["decision"] = {"baseline": {"objective": "dpo", "lora_rank": 4, "beta": 0.1}}
    m["exclude"] = [{"objective": "orpo", "lora_rank": 8}]
    plan = make_plan(write_matrix(m), results=tmp_path / "r")
    by = lambda o: [c for c in plan.cells if c.params["objective"] == o]  # noqa: E731
    assert len(by("dpo")) == 2 * 2 * 2 and len(by("simpo")) == 3 * 2 * 2 and len(by("orpo")) == 1 * 2
    assert all("gamma" not in c.params for c in by("dpo")) and all("lambda" in c.params for c in by("orpo"))
    assert {c.params["gamma"] for c in by("simpo")} == {0.3, 0.5, 1.0}
    assert len(plan.baseline_ids) == 2  # two seeds of one configuration


def test_gamma_beta_ratio_spelling_resolves_to_the_same_cell(write_matrix, tmp_path):
    a = small_matrix(objectives={"simpo": {"beta": 2.0, "gamma": 1.0}})
    b = small_matrix(objectives={"simpo": {"beta": 2.0, "gamma_beta_ratio": 0.5}})
    ids = lambda m: {c.params["objective"]: c.id for c in make_plan(write_matrix(m), results=tmp_path).cells}  # noqa: E731
    assert ids(a)["simpo"] == ids(b)["simpo"] and ids(a)["dpo"] == ids(b)["dpo"]
    both = small_matrix(objectives={"simpo": {"beta": 2.0, "gamma": 1.0, "gamma_beta_ratio": 0.5}})
    assert any("not both" in p for p in problems_for(write_matrix, both))


def test_ids_change_with_data_and_settings_but_not_with_locations(write_matrix, tmp_path):
    base = {c.params["objective"]: c.id for c in make_plan(write_matrix(small_matrix()), results=tmp_path / "a").cells}
    same = {
        c.params["objective"]: c.id
        for c in make_plan(write_matrix(small_matrix(), "other.yaml"), results=tmp_path / "b").cells
    }
    assert base == same
    m = small_matrix()
    m["data"]["train"]["n"] = 65
    assert not set(base.values()) & {c.id for c in make_plan(write_matrix(m), results=tmp_path).cells}
    m = small_matrix()
    m["train"]["lr"] = 2e-3
    assert not set(base.values()) & {c.id for c in make_plan(write_matrix(m), results=tmp_path).cells}


def test_cell_ids_are_stable_across_processes():
    code = (
        "from ablate.matrix.plan import make_plan; "
        f"print(sorted(c.id for c in make_plan({str(ROOT / 'matrices' / 'quickstart.yaml')!r}).cells))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(s), "PATH": ""},
        ).stdout
        for s in (1, 2)
    }
    assert len(outs) == 1
    assert outs.pop().strip() == str(sorted(c.id for c in make_plan(ROOT / "matrices" / "quickstart.yaml").cells))


@pytest.mark.parametrize(
    "mutate,expect",
    [
        (lambda m: m.update(bogus=1), "bogus: unknown field; allowed here: data, decision"),
        (lambda m: m["matrix"].update(objective=["dpo", "kto"]), "matrix.objective.1"),
        (lambda m: m["objectives"].update(dpo={"beta": 0.1, "gamma": 0.5}), "gamma belongs to simpo"),
        (lambda m: m["objectives"].update(simpo={"lambda": 0.5}), "lambda belongs to orpo"),
        (lambda m: m["matrix"].update(lora_rank=[0]), "matrix.lora_rank.0"),
        (lambda m: m["objectives"].update(dpo={"beta": -1}), "objectives.dpo.beta.0"),
        (lambda m: m["matrix"].update(seed=[]), "matrix.seed"),
        (lambda m: m["matrix"].update(lora_rank=[8, 8]), "duplicate values"),
        (lambda m: m["matrix"].update(temperature=[1]), "matrix.temperature"),
        (lambda m: m["decision"].update(baseline={"objective": "orpo"}), "is not in matrix.objective"),
        (lambda m: m.pop("model"), "model: required field is missing"),
        (lambda m: m["train"].update(batch_size=0), "train.batch_size"),
        (lambda m: m["train"].update(epochs=10**9), "train.epochs"),
        (lambda m: m["model"].update(path="builtin:gpt9"), "unknown builtin model"),
        (lambda m: m["data"].update(max_length=64, max_prompt_length=64), "max_prompt_length"),
    ],
)
def test_bad_matrices_name_the_field(write_matrix, mutate, expect):
    m = small_matrix()
    mutate(m)
    probs = problems_for(write_matrix, m)
    assert any(expect in p for p in probs), probs
    assert all(p.startswith(str(write_matrix("x", "m.yaml").parent)) or "m.yaml" in p for p in probs)


def test_every_problem_is_reported_at_once_with_line_numbers(write_matrix):
    m = small_matrix()
    m["matrix"]["lora_rank"] = [0]
    m["objectives"]["dpo"] = {"beta": 0.1, "gamma": 1}
    m["train"]["lr"] = -1
    probs = problems_for(write_matrix, m)
    assert len(probs) == 3, probs
    text = write_matrix(m).read_text().splitlines()
    expected = {"matrix.lora_rank.0": "- 0", "objectives.dpo.gamma": "gamma:", "train.lr": "lr:"}
    for p in probs:  # file:line points at the offending key or list item
        line, field = int(p.split(":")[1]), p.split(": ")[1]
        assert expected[field] in text[line - 1], (p, text[line - 1])


def test_yaml_python_tags_and_malformed_yaml_are_rejected(write_matrix):
    with pytest.raises(UserError, match=r"m.yaml:1: YAML tag !!python/object/apply:os.system is not allowed"):
        load_matrix(write_matrix("name: !!python/object/apply:os.system ['echo hi']\n"))
    with pytest.raises(UserError, match=r"m.yaml:\d+: not valid YAML"):
        load_matrix(write_matrix("name: [unclosed\n"))
    with pytest.raises(UserError, match="mapping"):
        parse_matrix("- a\n- b\n", "x.yaml")


def test_expand_is_deterministic_in_order():
    spec = load_matrix(ROOT / "matrices" / "quickstart.yaml")
    a = [c.id for c in expand(spec, {"path": "x"}, {"train": "a", "heldout": "b"})]
    b = [c.id for c in expand(spec, {"path": "x"}, {"train": "a", "heldout": "b"})]
    assert a == b and len(set(a)) == 4


# ---------------------------------------------------------------------------------------------
# Hostile and oversized input (issue 15 item 1): every file answers fast; a 10,000-cell matrix stays fast.
# Times are CPU seconds of this process (time.process_time), so a loaded 2-core machine does not make them flaky.

LAUGHS = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 12)
)  # 9¹² ≈ 2.8·10¹¹ values once expanded; before the guard, validate ran for more than a minute on 9⁹

HOSTILE = {
    "billion_laughs": LAUGHS,
    "merge_keys": "m0: &m0 {a: 0, b: 1}\n"
    + "".join(f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 8)}]}}\n" for i in range(1, 12)),
    "recursive_alias": "a: &a [1, *a]\n",
    "deep_flow": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "huge_scalar": "name: " + "x" * 250_000 + "\n",
    "many_values": "x: [" + ",".join(["0"] * 120_000) + "]\n",
    "one_million_cells": yaml.safe_dump(
        small_matrix(
            matrix={"objective": ["dpo", "simpo"], "lora_rank": list(range(1, 101)), "seed": list(range(5000))}
        )
    ),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_yaml_is_refused_in_well_under_a_second(name, write_matrix):
    path = write_matrix(HOSTILE[name])
    t = time.process_time()
    with pytest.raises(UserError) as e:
        load_matrix(path)
    spent = time.process_time() - t
    assert spent < 1.0, (name, spent)
    assert len(e.value.problems) == 1 and "m.yaml" in e.value.problems[0], e.value.problems


def test_ten_thousand_cells_expand_and_validate_fast(write_matrix, tmp_path):
    m = small_matrix()
    m["matrix"] = {
        "objective": ["dpo", "simpo"],
        "lora_rank": [4, 8],
        "seed": list(range(50)),
        "lr": [1.0e-4, 2.0e-4, 5.0e-4, 1.0e-3, 2.0e-3],
        "epochs": list(range(1, 11)),
    }
    m["decision"]["baseline"].update(lr=1.0e-4, epochs=1)
    t = time.process_time()
    plan = make_plan(write_matrix(m), results=tmp_path / "r")
    planned = time.process_time() - t
    ids = {c["id"] for c in plan.to_json()["cells"]}  # every id and configuration hashed, as plan.json needs
    total = time.process_time() - t
    assert len(plan.cells) == len(ids) == 10_000 and len(plan.baseline_ids) == 50
    assert planned < 1.5 and total < 3.0, (planned, total)


@pytest.mark.parametrize(
    "objectives_block",
    [
        {"dpo": {"beta": [0.1, 0.2, 0.5]}, "simpo": {"beta": [2.0, 2.5], "gamma": [0.3, 0.5, 1.0]}},
        {"simpo": {"beta": [2.0, 10.0], "gamma_beta_ratio": [0.3, 0.5]}, "orpo": {"lambda": [0.1, 0.2]}},
        {},
    ],
)
def test_cell_count_from_the_product_equals_the_cells_built(objectives_block):
    m = small_matrix(objectives=objectives_block)
    m["matrix"] = {
        "objective": ["dpo", "simpo", "orpo"],
        "lora_rank": [4, 8],
        "seed": [0, 1, 2],
        "lr": [1.0e-3, 2.0e-3],
    }
    m["decision"] = {}
    spec = MatrixSpec.model_validate(m)
    counted, _ = cell_count(spec)
    assert counted == len(_expand_all(spec, {}, {}))  # the formula, checked against building every cell


def test_cell_limit_names_count_axes_and_how_to_raise_it(write_matrix, monkeypatch):
    m = small_matrix()
    m["matrix"]["seed"] = [0, 1, 2]  # 2 objectives × 3 seeds = 6 cells
    path = write_matrix(m)
    monkeypatch.setenv("ABLATE_MAX_CELLS", "5")
    with pytest.raises(UserError) as e:
        load_matrix(path)
    (msg,) = e.value.problems
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.startswith("matrix:"))
    assert msg.startswith(f"{path}:{line}: matrix: makes 6 cells (3 seed × (dpo: 1 + simpo: 1), before exclude)"), msg
    assert "at most 5 cells" in msg and "ABLATE_MAX_CELLS=6" in msg
    monkeypatch.setenv("ABLATE_MAX_CELLS", "6")
    assert len(expand(load_matrix(path), {}, {})) == 6
    monkeypatch.setenv("ABLATE_MAX_CELLS", "lots")
    with pytest.raises(UserError, match="ABLATE_MAX_CELLS='lots': must be a positive whole number"):
        load_matrix(path)


def test_unquoted_dates_are_text_not_a_traceback(write_matrix):
    """YAML 1.1 reads 2024-02-30 as a date and fails constructing it (ValueError); ablate reads it as text."""
    m = yaml.safe_dump(small_matrix(), sort_keys=False).replace("name: t", "name: 2024-02-30")
    assert load_matrix(write_matrix(m)).name == "2024-02-30"


def test_aliases_within_the_limits_still_work(write_matrix):
    text = yaml.safe_dump(small_matrix(), sort_keys=False)
    text = text.replace("objective:\n  - dpo\n  - simpo", "objective: &objs [dpo, simpo]")
    text += "exclude:\n- {objective: orpo}\n- &keep {seed: 7}\n- *keep\n"
    spec = load_matrix(write_matrix(text))
    assert spec.matrix.objective == ["dpo", "simpo"] and spec.exclude == [
        {"objective": "orpo"},
        {"seed": 7},
        {"seed": 7},
    ]
