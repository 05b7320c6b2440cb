"""The bad-input catalogue (issue #4 item 8), one table-driven test through the real CLI.

Every case starts from the small valid matrix in conftest, breaks one thing, and runs `ablate run` (a few
use `validate` or `resume`). Each must be refused before Ray starts: exit code 2, no traceback, one
message line that names the file, the field or line, and what is allowed. A finished results directory
is in place before every case, and everything under the test's folder (results, matrix, data) must be
byte-identical afterwards: rejected input never deletes or alters anything on disk.

Note on the results-location cases: their messages come from storage.check_results_dir, which this file's
authors do not own. "is not writable" states the requirement but not an alternative, and the check uses
os.access, which root passes for directories it still cannot create entries in (e.g. /proc); both are
reported to storage's owner rather than worked around here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub.constants
import pytest
import ray
import yaml
from typer.testing import CliRunner

import ablate.cluster.runner
from ablate.cli import app
from ablate.inputs.models import builtin_model, builtin_tokenizer

from conftest import small_matrix

GOOD = {"prompt": "Q: hi\n", "chosen": "abc", "rejected": "xyz"}
OTHER = {"prompt": "Q: bye\n", "chosen": "def", "rejected": "uvw"}
CELL = "0123456789ab"  # a fake finished cell of an earlier run


@dataclass
class World:
    """One case's folder: the matrix (as a dict, or raw text/bytes), data files, results and CLI args."""

    tmp: Path
    m: dict = field(default_factory=small_matrix)
    text: str | bytes | None = None  # raw matrix file content instead of dumping `m`
    results: Path | None | bool = None  # False: no --results option
    cmd: str = "run"
    matrix_arg: Path | None = None  # a matrix path other than the written m.yaml
    hub: dict = field(default_factory=dict)  # huggingface_hub.constants for the case, e.g. HF_HUB_OFFLINE=True

    @property
    def matrix(self) -> Path:
        return self.tmp / "m.yaml"

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return p

    def jsonl(self, name: str, rows: list) -> Path:
        return self.file(name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))

    def data(self, train: list, heldout: list) -> None:
        """Use JSONL files (relative paths, resolved against the matrix's folder) instead of builtin data."""
        self.jsonl("tr.jsonl", train)
        self.jsonl("he.jsonl", heldout)
        self.m["data"] = {"train": "tr.jsonl", "heldout": "he.jsonl", "max_length": 96}


@dataclass
class Case:
    id: str
    build: Callable[[World], None]
    expect: tuple[str, ...]  # substrings of one problem line; {line} is the line of `line` in the matrix file
    line: tuple[str, ...] = ()  # needles found one after another in the matrix text (see _line)
    problems: int = 1


def _remote_code_model(w: World) -> None:
    d = w.tmp / "remote-model"
    builtin_model("tiny-llama").save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    w.m["model"] = {"path": "remote-model"}


def _model_dir(w: World, name: str, tokenizer: bool = True, config: dict | None = None) -> Path:
    """A local model folder as save_pretrained writes it: a tiny Llama (config and weights) and ByT5's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = w.tmp / name
    settings = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    known = {k: v for k, v in (config or {}).items() if k != "model_type"}
    LlamaForCausalLM(LlamaConfig(**{**settings, **known})).save_pretrained(d)
    if tokenizer:
        builtin_tokenizer().save_pretrained(d)
    if config and "model_type" in config:  # a config transformers does not know
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **config}))
    w.m["model"] = {"path": name}
    return d


def _closed_endpoint() -> str:
    """An HTTP endpoint on loopback that nobody listens on: the hub, unreachable, answering at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _MSG(text: str) -> list[dict]:  # noqa: N802 - reads like the row literal it builds
    return [{"role": "assistant", "content": text}]


HELD = {**GOOD, "prompt": "Q: held\n"}
CONV = {"prompt": [{"role": "user", "content": "hi"}], "chosen": _MSG("abc"), "rejected": _MSG("xyz")}


def _unwritable_results(w: World) -> None:
    if os.geteuid() != 0:  # the realistic case: re-running on finished results that are now read-only
        w.results = w.tmp / "results"
        (w.results / "t").chmod(0o555)
    else:  # root ignores file modes; /proc/self refuses new entries even to root
        w.results = Path("/proc/self/ablate-results")


def _matrix_text(w: World, edit: Callable[[str], str]) -> None:
    w.text = edit(yaml.safe_dump(w.m, sort_keys=False))


def _latin1_matrix(w: World) -> None:
    w.text = yaml.safe_dump(w.m, sort_keys=False).replace("name: t\n", "name: t\n# caf\xe9\n").encode("latin-1")


# 9 anchors of 9 aliases each: a billion-laughs file (9⁹ ≈ 3.9·10⁸ values expanded) in 1 KB.
_LAUGHS = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
)
# Merge keys: each level merges the previous mapping four times, so the pair lists grow 4× per level.
_MERGES = "m0: &m0 {k0: 0, k1: 1, k2: 2, k3: 3}\n" + "".join(
    f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 4)}]}}\n" for i in range(1, 13)
)

ALLOWED_FIELDS = (
    "allowed here: data, decision, eval, exclude, judge, matrix, model, name, objectives, report_to, resources, "
    "storage, train"
)

CASES = [
    # -- the matrix file itself ----------------------------------------------------------------
    Case(
        "malformed_yaml",
        lambda w: _matrix_text(w, lambda t: t.replace("lora_rank:\n  - 4", "lora_rank: [4, 8]]")),
        ("m.yaml:{line}", "not valid YAML", "a YAML mapping"),
        line=("lora_rank:",),
    ),
    Case(
        "yaml_python_tag",
        lambda w: _matrix_text(
            w, lambda t: t.replace("name: t", "name: !!python/object/apply:os.system ['touch pwned']")
        ),
        ("m.yaml:{line}", "!!python/object", "plain YAML"),
        line=("name:",),
    ),
    Case(
        "duplicate_yaml_key",  # PyYAML would silently keep the second `train:`
        lambda w: _matrix_text(w, lambda t: t + "train:\n  epochs: 3\n"),
        ("m.yaml:{line}", "train: duplicate key (first at line", "each key may appear once"),
        line=("^train:", "^train:"),
    ),
    Case(
        "matrix_not_a_mapping",
        lambda w: setattr(w, "text", "- dpo\n- simpo\n"),
        ("m.yaml", "YAML mapping", "name, model, data, matrix"),
    ),
    Case("matrix_not_utf8", _latin1_matrix, ("m.yaml:2", "not UTF-8", "save it as UTF-8")),
    # -- hostile or absurd files (issue 15 item 1): refused in well under a second, before anything expands ---------
    Case(
        "yaml_billion_laughs",  # 9 levels of 9 aliases: 1 KB of text, 10⁸ values once expanded
        lambda w: _matrix_text(w, lambda t: t + _LAUGHS),
        ("m.yaml:{line}", "expands to", "through anchors and aliases", "at most 100,000", "write the values out"),
        line=("^l8:",),
    ),
    Case(
        "yaml_merge_key_bomb",  # `<<` merges that double at every level
        lambda w: _matrix_text(w, lambda t: t + _MERGES),
        ("m.yaml:{line}", "expands to", "anchors and aliases", "at most 100,000"),
        line=("^m12:",),
    ),
    Case(
        "yaml_recursive_alias",
        lambda w: _matrix_text(w, lambda t: t.replace("name: t", "name: &a [t, *a]")),
        ("m.yaml:1", "recursive alias", "plain YAML"),
    ),
    Case(
        "yaml_nested_too_deep",
        lambda w: _matrix_text(w, lambda t: t + "x: " + "[" * 5000 + "]" * 5000 + "\n"),
        ("m.yaml", "nested more than 20 levels deep", "a matrix needs at most 4"),
    ),
    Case(
        "yaml_block_nested_too_deep",
        lambda w: _matrix_text(w, lambda t: t + "".join(" " * i + f"k{i}:\n" for i in range(300)) + " " * 300 + "x\n"),
        ("m.yaml:", "nested more than 20 levels deep"),
    ),
    Case(
        "yaml_huge_scalar",
        lambda w: _matrix_text(w, lambda t: t.replace("name: t", "name: " + "a" * 100_000)),
        ("m.yaml:1", "a value of 100,000 characters", "at most 4,096 characters"),
    ),
    Case(
        "yaml_too_many_values",  # no aliases, just a list too long for any matrix
        lambda w: _matrix_text(w, lambda t: t + "x: [" + ",".join(["0"] * 101_000) + "]\n"),
        ("m.yaml:{line}", "holds 101,0", "at most 100,000", "a matrix lists axes, not data"),
        line=("^x:",),
    ),
    Case(
        "matrix_file_too_big",
        lambda w: _matrix_text(w, lambda t: t + "# " + "x" * 300_000 + "\n"),
        ("m.yaml", "bytes; a matrix file is at most 256 KiB"),
    ),
    Case(
        "matrix_not_a_regular_file",  # /dev/zero would be read forever
        lambda w: setattr(w, "matrix_arg", Path("/dev/zero")),
        ("/dev/zero", "not a regular file", "matrix YAML file"),
    ),
    Case(
        "yaml_unknown_tag",
        lambda w: _matrix_text(w, lambda t: t.replace("name: t", "name: !env HOME")),
        ("m.yaml:1", "YAML tag !env is not allowed", "plain YAML"),
    ),
    Case(
        "yaml_set_tag",
        lambda w: _matrix_text(w, lambda t: t.replace("name: t", "name: !!set {a, b}")),
        ("m.yaml:1", "YAML tag !!set is not allowed"),
    ),
    Case(
        "yaml_int_tag_on_text",  # was a ValueError traceback
        lambda w: _matrix_text(w, lambda t: t.replace("epochs: 1", "epochs: !!int one")),
        ("m.yaml:{line}", "'one' cannot be read as !!int", "plain YAML"),
        line=("epochs:",),
    ),
    Case(
        "too_many_cells",  # 3 × 200 × 100 × 50 = 3,000,000 cells: refused from the product, none built
        lambda w: w.m["matrix"].update(
            objective=["dpo", "simpo", "orpo"],
            lora_rank=list(range(1, 201)),
            seed=list(range(100)),
            lr=[i * 1e-5 for i in range(1, 51)],
        ),
        (
            "m.yaml:{line}",
            "matrix: makes 3,000,000 cells",
            "200 lora_rank × 100 seed × 50 lr × (dpo: 1 + simpo: 1 + orpo: 1)",
            "at most 10,000 cells",
            "ABLATE_MAX_CELLS=3000000",
        ),
        line=("^matrix:",),
    ),
    Case(
        "submit_billion_laughs",  # `ablate submit` reads the file the same way, before contacting any cluster
        lambda w: (_matrix_text(w, lambda t: t + _LAUGHS), setattr(w, "cmd", "submit")),
        ("m.yaml:{line}", "expands to", "through anchors and aliases"),
        line=("^l8:",),
    ),
    Case(
        "submit_too_many_cells",
        lambda w: (w.m["matrix"].update(seed=list(range(20_000))), setattr(w, "cmd", "submit")),
        ("m.yaml:{line}", "matrix: makes 40,000 cells (20,000 seed × (dpo: 1 + simpo: 1)", "ABLATE_MAX_CELLS=40000"),
        line=("^matrix:",),
    ),
    Case(
        "lr_infinite",  # .inf passed `lr > 0` and trained NaNs
        lambda w: _matrix_text(w, lambda t: t.replace("lr: 0.001", "lr: .inf")),
        ("m.yaml:{line}", "train.lr", "finite number", "a number > 0"),
        line=("lr:",),
    ),
    Case(
        "seed_beyond_torch",  # torch.manual_seed overflowed inside every cell
        lambda w: w.m["matrix"].update(seed=[10**30]),
        ("m.yaml:{line}", "matrix.seed.0", "less than or equal to 4294967295"),
        line=("seed:", "- 1000"),
    ),
    Case(
        "matrix_file_missing",
        lambda w: setattr(w, "matrix_arg", w.tmp / "nope.yaml"),
        ("nope.yaml", "no such matrix file", "matrix YAML file"),
    ),
    Case(
        "unknown_top_level_key",
        lambda w: w.m.update(bogus=1),
        ("m.yaml:{line}", "bogus: unknown field", ALLOWED_FIELDS),
        line=("bogus:",),
    ),
    Case(
        "required_field_missing",
        lambda w: w.m.pop("model"),
        ("m.yaml:1", "model: required field is missing", "path (required)"),
    ),
    Case(
        "model_path_missing",
        lambda w: w.m.update(model={"dtype": "float32"}),
        ("m.yaml:{line}", "model.path: required field is missing", "builtin:tiny-llama"),
        line=("model:",),
    ),
    # -- axes and objectives -------------------------------------------------------------------
    Case(
        "unknown_objective",
        lambda w: w.m["matrix"].update(objective=["dpo", "kto"]),
        ("m.yaml:{line}", "matrix.objective.1", "'dpo', 'simpo', 'orpo'", "or 'amapo'", "'kto'"),
        line=("objective:", "- kto"),
    ),
    Case(
        "gamma_on_dpo",
        lambda w: w.m["objectives"].update(dpo={"beta": 0.1, "gamma": 0.5}),
        ("m.yaml:{line}", "objectives.dpo.gamma", "allowed here: beta", "gamma belongs to simpo"),
        line=("dpo:", "gamma:"),
    ),
    Case(
        "lambda_on_simpo",
        lambda w: w.m["objectives"].update(simpo={"beta": 2.0, "lambda": 0.5}),
        (
            "m.yaml:{line}",
            "objectives.simpo.lambda",
            "allowed here: beta, gamma, gamma_beta_ratio",
            "lambda belongs to orpo",
        ),
        line=("simpo:", "lambda:"),
    ),
    Case(
        "zero_rank",
        lambda w: w.m["matrix"].update(lora_rank=[0]),
        ("m.yaml:{line}", "matrix.lora_rank.0", "greater than or equal to 1"),
        line=("lora_rank:", "- 0"),
    ),
    Case(
        "negative_rank",
        lambda w: w.m["matrix"].update(lora_rank=[4, -8]),
        ("m.yaml:{line}", "matrix.lora_rank.1", "greater than or equal to 1", "-8"),
        line=("lora_rank:", "- -8"),
    ),
    Case(
        "beta_zero",
        lambda w: w.m["objectives"].update(dpo={"beta": 0}),
        ("m.yaml:{line}", "objectives.dpo.beta.0", "greater than 0"),
        line=("dpo:", "beta:"),
    ),
    Case(
        "beta_negative",
        lambda w: w.m["objectives"].update(simpo={"beta": [2.0, -1.0], "gamma": 0.5}),
        ("m.yaml:{line}", "objectives.simpo.beta.1", "greater than 0"),
        line=("simpo:", "- -1.0"),
    ),
    Case(
        "empty_axis",
        lambda w: w.m["matrix"].update(seed=[]),
        ("m.yaml:{line}", "matrix.seed", "at least one value"),
        line=("seed:",),
    ),
    Case(
        "duplicate_axis_values",
        lambda w: w.m["matrix"].update(lora_rank=[8, 4, 8]),
        ("m.yaml:{line}", "matrix.lora_rank", "duplicate values ['8']", "each value must appear once"),
        line=("lora_rank:",),
    ),
    Case(
        "unknown_axis",
        lambda w: w.m["matrix"].update(temperature=[0.7]),
        ("m.yaml:{line}", "matrix.temperature", "allowed here: epochs, lora_rank, lr, objective, seed"),
        line=("temperature:",),
    ),
    Case(
        "batch_size_zero",
        lambda w: w.m["train"].update(batch_size=0),
        ("m.yaml:{line}", "train.batch_size", "greater than or equal to 1"),
        line=("batch_size:",),
    ),
    Case(
        "epochs_1e9_integer",
        lambda w: w.m["train"].update(epochs=10**9),
        ("m.yaml:{line}", "train.epochs", "less than or equal to 1000"),
        line=("epochs:",),
    ),
    Case(
        "epochs_1e9_as_written",  # YAML 1.1 reads 1e9 (no dot) as text
        lambda w: _matrix_text(w, lambda t: t.replace("epochs: 1", "epochs: 1e9")),
        ("m.yaml:{line}", "train.epochs", "'1e9'", "an integer in [1, 1000]", "write 1.0e+9"),
        line=("epochs:",),
    ),
    Case(
        "max_prompt_length_not_below_max_length",
        lambda w: w.m["data"].update(max_length=64, max_prompt_length=64),
        ("m.yaml:{line}", "data.max_prompt_length", "must be below max_length (64)"),
        line=("max_prompt_length:",),
    ),
    # -- the baseline --------------------------------------------------------------------------
    Case(
        "baseline_not_in_matrix",
        lambda w: w.m["decision"].update(baseline={"objective": "orpo"}),
        ("m.yaml:{line}", "decision.baseline.objective", "'orpo' is not in matrix.objective", "['dpo', 'simpo']"),
        line=("decision:", "objective:"),
    ),
    Case(
        "baseline_beta_not_in_matrix",
        lambda w: w.m["decision"].update(baseline={"objective": "dpo", "lora_rank": 4, "beta": 0.3}),
        ("m.yaml:{line}", "decision.baseline.beta", "0.3", "allowed: [0.1]"),
        line=("decision:", "beta:"),
    ),
    Case(
        "baseline_cell_missing",  # every value exists, but the baseline's cells are excluded
        lambda w: w.m.update(exclude=[{"objective": "dpo", "lora_rank": 4}]),
        ("m.yaml:{line}", "decision.baseline", "exclude[0] removes", "choose a baseline among"),
        line=("decision:", "baseline:"),
    ),
    Case(
        "baseline_ambiguous",
        lambda w: (
            w.m["objectives"].update(dpo={"beta": [0.1, 0.5]}),
            w.m["decision"].update(baseline={"objective": "dpo"}),
        ),
        ("m.yaml:{line}", "decision.baseline", "matches 2 configurations", "add keys"),
        line=("decision:", "baseline:"),
    ),
    Case(
        "exclude_removes_everything",
        lambda w: w.m.update(exclude=[{"lora_rank": 4}]),
        ("m.yaml:{line}", "exclude", "removes every cell", "keep at least one"),
        line=("exclude:",),
    ),
    # -- the model -----------------------------------------------------------------------------
    Case(
        "model_dir_missing",
        lambda w: w.m.update(model={"path": str(w.tmp / "no-such-model")}),
        ("m.yaml", "model.path: no folder `", "no-such-model`", "hub id like org/name"),
    ),
    Case(
        "model_relative_dir_missing",
        lambda w: w.m.update(model={"path": "models/tiny/v1"}),  # not a hub id
        ("m.yaml", "model.path: no folder `models/tiny/v1` next to the matrix", "hub id like org/name"),
    ),
    # -- where the model is (issue 19 item 1): a typo'd folder is not taken for a hub id ---------------------
    Case(
        "model_path_typo_offline",  # the folder is ./tiny-qwen-dir; was a connection error in every cell
        lambda w: (
            _model_dir(w, "tiny-qwen-dir"),
            w.m.update(model={"path": "tiny-qwen"}),
            w.hub.update(HF_HUB_OFFLINE=True),
        ),
        (
            "m.yaml",
            "model.path: no folder `tiny-qwen` next to the matrix",
            "not in the Hugging Face cache",
            "HF_HUB_OFFLINE",
            "did you mean `tiny-qwen-dir`?",
        ),
    ),
    Case(
        "model_path_typo_hub_unreachable",
        lambda w: (
            _model_dir(w, "tiny-qwen-dir"),
            w.m.update(model={"path": "tiny-qwen"}),
            w.hub.update(ENDPOINT=_closed_endpoint()),
        ),
        (
            "m.yaml",
            "no folder `tiny-qwen`",
            "not in the Hugging Face cache",
            "the hub cannot be reached",
            "tiny-qwen-dir",
        ),
    ),
    Case(
        "hub_id_not_cached_offline",
        lambda w: (w.m.update(model={"path": "some-org/some-model"}), w.hub.update(HF_HUB_OFFLINE=True)),
        (
            "m.yaml",
            "no folder `some-org/some-model`",
            "not in the Hugging Face cache",
            "hf download some-org/some-model",
        ),
    ),
    Case(
        "model_folder_without_tokenizer",  # was a ValueError traceback from AutoTokenizer
        lambda w: _model_dir(w, "m", tokenizer=False),
        ("m.yaml", "model.path", "holds config.json but no tokenizer", "tokenizer.save_pretrained"),
    ),
    Case(
        "model_config_unknown_architecture",
        lambda w: _model_dir(w, "m", config={"model_type": "no-such-arch"}),
        ("m.yaml", "model.path", "transformers cannot build a causal language model"),
    ),
    # -- the matrix against the model's structure (issue 15 item 2), before Ray and without weights ----------
    Case(
        "lora_target_missing",  # was a PEFT error in every cell (or a silently dropped target)
        lambda w: w.m["train"].update(lora={"targets": ["v_proj", "q_prj"]}),
        (
            "m.yaml:{line}",
            "train.lora.targets.1: 'q_prj' names no module of builtin:tiny-llama (did you mean 'q_proj'?)",
            "LoRA can adapt: down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj",
        ),
        line=("targets:", "- q_prj"),
    ),
    Case(
        "lora_target_not_adaptable",
        lambda w: w.m["train"].update(lora={"targets": ["self_attn"]}),
        (
            "m.yaml:{line}",
            "train.lora.targets.0: 'self_attn' names LlamaAttention modules",
            "adaptable here: down_proj",
        ),
        line=("targets:", "- self_attn"),
    ),
    Case(
        "lora_rank_above_full_rank",
        lambda w: w.m["matrix"].update(lora_rank=[4, 128]),
        (
            "m.yaml:{line}",
            "matrix.lora_rank.1: 128 is above the full rank of every LoRA target",
            "q_proj 64→64, k_proj 64→32, v_proj 64→32, o_proj 64→64",
            "allowed: ranks up to 64",
        ),
        line=("lora_rank:", "- 128"),
    ),
    Case(
        "max_length_beyond_context",
        lambda w: w.m["data"].update(max_length=4096),
        ("m.yaml:{line}", "data.max_length: 4096 tokens is longer than the context", "max_position_embeddings: 1024"),
        line=("max_length:",),
    ),
    Case(
        "flash_attention_on_cpu",
        lambda w: (w.m["train"].update(attention="flash_attention_2"), w.m["model"].update(dtype="bfloat16")),
        ("m.yaml:{line}", "train.attention: flash_attention_2 runs on CUDA GPUs only", "allowed on CPU: sdpa or eager"),
        line=("attention:",),
    ),
    Case(
        "flash_attention_in_float32",
        lambda w: (w.m["train"].update(attention="flash_attention_2"), w.m.update(resources={"gpus_per_cell": 1})),
        (
            "m.yaml:{line}",
            "model.dtype: float32 with train.attention flash_attention_2",
            "allowed: bfloat16 or float16",
        ),
        line=("model:",),
    ),
    Case(
        "bfloat16_on_a_t4",
        lambda w: (
            w.m["model"].update(dtype="bfloat16"),
            w.m.update(resources={"gpus_per_cell": 1, "accelerator_type": "T4"}),
        ),
        (
            "m.yaml:{line}",
            "model.dtype: bfloat16 on resources.accelerator_type T4",
            "allowed there: float16 or float32",
        ),
        line=("dtype:",),
    ),
    Case(
        "tokenizer_larger_than_embedding",
        lambda w: _model_dir(w, "m", config={"vocab_size": 300}),  # ByT5's 384 ids, 300 embedding rows
        ("m.yaml", "model.path: the tokenizer has 384 token ids (0..383)", "embedding has 300 rows"),
    ),
    Case(
        "unknown_builtin_model",
        lambda w: w.m.update(model={"path": "builtin:gpt9"}),
        ("m.yaml", "model.path", "'builtin:gpt9'", "builtin:tiny-llama, builtin:tiny-qwen2"),
    ),
    Case(
        "trust_remote_code_without_opt_in",
        _remote_code_model,
        ("m.yaml", "model.path", "auto_map in config.json", "model.trust_remote_code: true"),
    ),
    # -- the data ------------------------------------------------------------------------------
    Case(
        "data_file_missing",
        lambda w: w.m["data"].update(train="nope.jsonl"),
        ("nope.jsonl", "data.train", "no such file", "JSONL file of prompt/chosen/rejected"),
    ),
    Case(
        "data_file_typo",  # the file is pairs.train.jsonl
        lambda w: (
            w.data([GOOD], [HELD]),
            w.file("pairs.train.jsonl", "{}"),
            w.m["data"].update(train="pairs.trian.jsonl"),
        ),
        ("pairs.trian.jsonl", "data.train", "no such file", "did you mean", "pairs.train.jsonl?"),
    ),
    Case(
        "data_path_too_long",  # was an OSError traceback (File name too long)
        lambda w: w.m["data"].update(train="a" * 300 + ".jsonl"),
        ("data.train", "cannot read (File name too long)"),
    ),
    Case(
        "storage_name_too_long",  # was an OSError traceback from the results check
        lambda w: (w.m.update(storage="c" * 300), setattr(w, "results", False)),
        ("m.yaml: storage: cannot use", "File name too long"),
    ),
    Case(
        "data_path_is_a_directory",
        lambda w: (w.file("d/x", ""), w.m["data"].update(heldout="d")),
        ("data.heldout", "is a directory", "JSONL file of prompt/chosen/rejected"),
    ),
    Case(
        "jsonl_line_not_json",
        lambda w: w.data([GOOD, "{not json", OTHER], [{**GOOD, "prompt": "Q: held\n"}]),
        ("tr.jsonl:2", "not valid JSON", "one JSON object per line"),
    ),
    Case(
        "row_missing_field",
        lambda w: w.data([GOOD, OTHER, {"prompt": "p", "chosen": "a"}], [{**GOOD, "prompt": "Q: held\n"}]),
        ("tr.jsonl:3", "missing field(s) ['rejected']", "each row needs prompt, chosen, rejected"),
    ),
    Case(
        "empty_completion",
        lambda w: w.data([GOOD, {**OTHER, "rejected": "  "}], [{**GOOD, "prompt": "Q: held\n"}]),
        ("tr.jsonl:2", "rejected: empty completion", "non-empty"),
    ),
    Case(
        "chosen_equals_rejected",
        lambda w: w.data(
            [GOOD], [{**GOOD, "prompt": "Q: held\n"}, {"prompt": "p", "chosen": "same", "rejected": "same"}]
        ),
        ("he.jsonl:2", "chosen == rejected", "a pair must differ"),
    ),
    Case(
        "leakage_between_train_and_heldout",
        lambda w: w.data([GOOD, OTHER, {**GOOD, "prompt": "Q: 3\n"}], [{**GOOD, "prompt": "Q: held\n"}, OTHER]),
        ("he.jsonl:2", "tr.jsonl:2", "also in the training set", "held-out pairs must be unseen"),
    ),
    Case(
        "heldout_empty",
        lambda w: w.data([GOOD, OTHER], ["", "  "]),
        ("he.jsonl", "data.heldout", "no pairs", "at least one prompt/chosen/rejected line"),
    ),
    Case(
        "data_not_utf8",
        lambda w: (
            w.data([GOOD], [{**GOOD, "prompt": "Q: held\n"}]),
            w.file(
                "tr.jsonl", json.dumps(OTHER).encode() + b'\n{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
            ),
        ),
        ("tr.jsonl:2", "not UTF-8", "save it as UTF-8"),
    ),
    # -- data mistakes (issue 19 item 2): one line each, naming file, row and field -----------------------------
    Case(
        "mixed_layout_text_prompt_message_completions",  # was a raw ValueError traceback, exit 1
        lambda w: w.data([GOOD, {"prompt": "Q: x\n", "chosen": _MSG("a"), "rejected": _MSG("b")}], [HELD]),
        ("tr.jsonl:2", "chosen, rejected: message list(s) but prompt: text", "standard", "conversational"),
    ),
    Case(
        "mixed_layout_message_prompt_text_completions",
        lambda w: w.data([GOOD], [{"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}]),
        ("he.jsonl:1", "prompt: message list(s) but chosen, rejected: text", "all three message lists"),
    ),
    Case(
        "implicit_prompt_rows_grouped",  # no prompt column: was one line per row and a wrong total
        lambda w: w.data([{"chosen": _MSG("a") * 2, "rejected": _MSG("b") * 2}] * 360, [HELD]),
        ("tr.jsonl:1", "missing field(s) ['prompt']", "[360 rows: lines 1, 2, 3, …]"),
    ),
    Case(
        "conversational_data_builtin_model",  # was printed twice, naming neither file nor field
        lambda w: w.data([CONV], [{**CONV, "prompt": [{"role": "user", "content": "held"}]}]),
        (
            "tr.jsonl:1: data.train: prompt: a conversational row (message lists) needs a chat template",
            "builtin:tiny-llama has none (1 in data.train, 1 in data.heldout)",
        ),
    ),
    Case(
        "max_length_shorter_than_every_prompt",
        lambda w: w.m["data"].update(max_length=12),
        ("m.yaml", "data.max_length=12", "shorter than every prompt", "allowed: max_length >"),
        problems=2,
    ),
    # -- the results location ------------------------------------------------------------------
    # These two messages come from storage.check_results_dir (not owned here); see the note in the module docstring.
    Case(
        "results_path_is_a_file",
        lambda w: setattr(w, "results", w.file("results-file", "not a dir")),
        ("m.yaml: --results: ", "results-file is a file, not a directory", "choose another results path"),
    ),
    Case("unwritable_results_dir", _unwritable_results, ("m.yaml: --results: ", "is not writable")),
    Case(
        "storage_in_the_matrix_is_a_file",  # no --results: the message names the matrix's field
        lambda w: (w.file("results-file", "x"), w.m.update(storage="results-file"), setattr(w, "results", False)),
        ("m.yaml: storage: results-file is a file, not a directory",),
    ),
    Case(
        "status_on_a_parquet_file",  # was "not UTF-8 text", as if it were a matrix
        lambda w: (setattr(w, "cmd", "status"), setattr(w, "matrix_arg", w.tmp / "results" / "t" / "cells.parquet")),
        (
            "cells.parquet: not a matrix file or a results directory",
            "TARGET is a results directory (results/<name>, s3://…/<name>) or a matrix YAML file",
            "belongs to the results directory",
        ),
    ),
    # -- the same checks behind the other commands ---------------------------------------------
    Case(
        "validate_unknown_objective",
        lambda w: (w.m["matrix"].update(objective=["dop"]), setattr(w, "cmd", "validate")),
        ("m.yaml:{line}", "matrix.objective.0", "'dpo', 'simpo', 'orpo'", "or 'amapo'"),
        line=("objective:", "- dop"),
    ),
    Case(
        "resume_leakage",
        lambda w: (w.data([GOOD, OTHER], [OTHER]), setattr(w, "cmd", "resume")),
        ("he.jsonl:1", "tr.jsonl:2", "held-out pairs must be unseen"),
    ),
]


def _finished_results(root: Path) -> None:
    """An earlier run's results: plan.json, tables and one finished cell with its adapter."""
    d = root / "t"
    (d / "cells" / CELL / "adapter").mkdir(parents=True)
    (d / "plan.json").write_text(json.dumps({"name": "t", "cells": [{"id": CELL}]}))
    (d / "cells.parquet").write_bytes(b"PAR1" + bytes(range(256)) + b"PAR1")
    (d / "report.md").write_text("# t\nbaseline stays\n")
    (d / "cells" / CELL / "DONE").write_text("")
    (d / "cells" / CELL / "cell.json").write_text(json.dumps({"status": "done", "heldout_accuracy": 0.75}))
    (d / "cells" / CELL / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(4096))


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (None) under root."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _line(text: str, needles: tuple[str, ...]) -> int:
    """1-based line of the last needle, each searched after the previous one ("^x": a line starting with x)."""
    lines, i = text.splitlines(), 0
    for n in needles:
        while not (lines[i].startswith(n[1:]) if n.startswith("^") else n in lines[i]):
            i += 1
        found, i = i, i + 1
    return found + 1


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_rejected_before_ray_with_one_clear_message(case, tmp_path, monkeypatch):
    assert len(CASES) >= 25
    monkeypatch.chdir(tmp_path)
    reached = []

    def must_not_run(*a, **k):
        reached.append(a)
        raise AssertionError("the bad input passed validation and reached Ray")

    monkeypatch.setattr(ablate.cluster.runner, "run_plan", must_not_run)
    monkeypatch.setattr(ablate.cluster.runner, "init_ray", must_not_run)
    ray_before = ray.is_initialized()  # another test module may have left Ray running; we must not start it
    w = World(tmp_path)
    _finished_results(tmp_path / "results")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # empty
    case.build(w)
    for name, value in w.hub.items():  # as if the variable had been set before the process started
        monkeypatch.setattr(huggingface_hub.constants, name, value)
    if w.text is None:
        w.text = yaml.safe_dump(w.m, sort_keys=False)
    if w.matrix_arg is None:
        w.file("m.yaml", w.text)
    results = w.results if w.results not in (None, False) else tmp_path / "results"
    before = _snapshot(tmp_path)
    try:
        opts = [] if w.results is False else ["--results", str(results)]
        res = CliRunner().invoke(app, [w.cmd, str(w.matrix_arg or w.matrix), *opts])
    finally:
        if os.geteuid() != 0:
            (tmp_path / "results" / "t").chmod(0o755)

    out = res.output
    assert res.exit_code == 2, out
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in out, out
    assert not reached and ray.is_initialized() == ray_before
    assert f"{case.problems} problem(s); nothing was run" in out, out
    problems = [ln.removeprefix("  ✗ ") for ln in out.splitlines() if ln.startswith("  ✗ ")]
    assert len(problems) == case.problems, out
    text = w.text if isinstance(w.text, str) else ""
    expect = [s.format(line=_line(text, case.line) if case.line else "?") for s in case.expect]
    assert any(all(s in p for s in expect) for p in problems), (expect, problems)
    assert _snapshot(tmp_path) == before  # nothing written, deleted or changed: results, matrix or data
