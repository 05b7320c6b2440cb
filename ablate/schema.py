"""The matrix schema: pydantic models of a matrix file (MatrixSpec and its parts).

Field rules live on the models; a rule that spans fields raises `Located` so each problem names the
field it is about. Objective settings come from the objective registry (ablate/objectives.py). Checks
against the cells a matrix really makes (exclude, decision.baseline) are in ablate/matrix/cells.py;
reading the YAML file and turning errors into file:line messages is ablate/matrix/yamlfile.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, create_model, field_validator, model_validator

from . import objectives
from .errors import Located, MatrixError, UserError  # noqa: F401 - MatrixError, UserError re-exported
from .objectives import PosFloat, Strict, unique_nonempty

Objective = Literal.__getitem__(objectives.NAMES)  # type: ignore[misc]  # the registry's names


class ModelSpec(Strict):
    path: str = Field(min_length=1, description="builtin:tiny-llama, builtin:tiny-qwen2, an HF id or a local dir")
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False


class BuiltinData(Strict):
    """A generated synthetic preference task (see ablate/builtin.py)."""

    builtin: Literal["letters"]
    n: int = Field(256, ge=2, le=1_000_000)
    length_skew: float = Field(0.0, ge=-0.9, le=0.9)
    signal: float = Field(0.8, gt=0.5, le=1.0)
    seed: int = Field(0, ge=0)


class DatasetSource(Strict):
    """A `datasets` dataset (ablate/inputs/datasets.py): a hub id or local dataset repository with a split and
    revision (`hf`), or one split of a local `save_to_disk` directory or table file (`path`)."""

    hf: str | None = Field(None, min_length=1, description="a Hugging Face dataset id (org/name) or local dataset dir")
    path: str | None = Field(None, min_length=1, description="a save_to_disk directory or a Parquet/Arrow file")
    split: str | None = Field(None, min_length=1, description="the split to read; needed when there are several")
    revision: str | None = Field(None, min_length=1, description="hub revision: a branch, tag or commit")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.hf is None) == (self.path is None):
            raise Located([((), "give exactly one of hf (a dataset id) or path (a local dataset directory or file)")])
        if self.revision is not None and self.hf is None:
            raise Located([(("revision",), "a revision belongs to a hub dataset (hf:), not to a local path")])
        return self

    def resolved(self, base) -> DatasetSource:
        """Relative local paths against the matrix's folder (`hf:` only when that folder has it as a directory)."""
        from pathlib import Path

        if self.path is not None and "://" not in self.path and not Path(self.path).is_absolute():
            return self.model_copy(update={"path": str((Path(base) / self.path).resolve())})
        if self.hf is not None and not Path(self.hf).is_absolute() and (Path(base) / self.hf).is_dir():
            return self.model_copy(update={"hf": str((Path(base) / self.hf).resolve())})
        return self

    def display(self) -> str:
        where = f"hf:{self.hf}" if self.hf is not None else str(self.path)
        return where + (f"@{self.revision}" if self.revision else "") + (f"[{self.split}]" if self.split else "")


class SplitFromTrain(Strict):
    """`data.heldout: {split_from_train: 0.1, seed: 0, stratify: length}`: carve the held-out pairs out of the
    training data, reproducibly (ablate/inputs/split.py); the split is recorded in plan.json."""

    split_from_train: float = Field(gt=0.0, lt=1.0, description="the share of prompts held out, in (0, 1)")
    seed: int = Field(0, ge=0)
    stratify: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")]] | None = Field(
        None, description="length (response length quartile) and/or column names, e.g. [category, length]"
    )

    @field_validator("stratify", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    _unique = field_validator("stratify")(unique_nonempty)


_DATA_SOURCE = (
    "a JSONL, Parquet or Arrow file path or URI (s3://, gs://, file://) of prompt/chosen/rejected rows, "
    "a datasets save_to_disk directory, {hf: org/name, split: train, revision: main}, "
    "or builtin data such as {builtin: letters, n: 256}"
)


def _data_kind(v: Any) -> str:
    """Which form a data source is, from its keys, so a mistake is reported by that form alone."""
    if isinstance(v, dict):
        return "BuiltinData" if "builtin" in v else "SplitFromTrain" if "split_from_train" in v else "DatasetSource"
    return type(v).__name__ if isinstance(v, Strict) else "str"


def _sources(*models: type, where: str) -> Any:
    # Upper-case tags (and `str`) are dropped from error locations by ablate/matrix/yamlfile.py.
    members = tuple(Annotated[m, Tag(m.__name__)] for m in models) + (Annotated[str, Tag("str")],)
    msg = f"split_from_train belongs under data.heldout; {where}" if SplitFromTrain not in models else where
    return Annotated[
        Union[members], Discriminator(_data_kind, custom_error_type="data_source", custom_error_message=msg)
    ]


_TRAIN = _sources(BuiltinData, DatasetSource, where="data.train is a file, a dataset or builtin data")
_HELDOUT = _sources(BuiltinData, DatasetSource, SplitFromTrain, where="not a data source")


class DataSpec(Strict):
    train: _TRAIN = Field(description=_DATA_SOURCE)  # type: ignore[valid-type]
    heldout: _HELDOUT = Field(  # type: ignore[valid-type]
        description=_DATA_SOURCE + ", or {split_from_train: 0.1, seed: 0, stratify: length}"
    )
    max_length: int = Field(512, ge=2, le=1_048_576)
    max_prompt_length: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _prompt_fits(self):
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise Located(
                [
                    (
                        ("max_prompt_length",),
                        f"{self.max_prompt_length} must be below max_length ({self.max_length}) "
                        "or every completion would be cut away",
                    )
                ]
            )
        return self

    @property
    def prompt_budget(self) -> int:
        return self.max_prompt_length if self.max_prompt_length is not None else self.max_length // 2


class LoraSpec(Strict):
    alpha_over_rank: PosFloat = 2.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)


class EarlyStopping(Strict):
    """Stop when the held-out metric has not improved for `patience` consecutive evaluations."""

    patience: int = Field(2, ge=1, le=1000)
    metric: Literal["eval_loss", "eval_accuracy", "eval_rewards/margins"] = "eval_loss"


class TrainRecipe(Strict):
    """Training settings that change a cell's numbers: all of them are part of its id."""

    epochs: int = Field(1, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=65_536)
    grad_accum: int = Field(1, ge=1, le=65_536)
    lr: PosFloat = 5.0e-5
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    max_grad_norm: PosFloat = 1.0
    logging_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(32, ge=1, le=65_536)
    lora: LoraSpec = LoraSpec()
    early_stopping: EarlyStopping | None = None

    @model_validator(mode="after")
    def _accum_divides(self):
        if self.batch_size % self.grad_accum:
            raise Located(
                [
                    (
                        ("grad_accum",),
                        f"{self.grad_accum} must divide batch_size ({self.batch_size}); "
                        "the micro-batch is batch_size / grad_accum",
                    )
                ]
            )
        return self


class TrainSpec(TrainRecipe):
    """`train:` in a matrix: the recipe plus runtime settings, which change speed or resilience but not the
    numbers (at most by float rounding), so they stay out of cell ids."""

    checkpoint_every_steps: int | None = Field(None, ge=1, le=10_000_000)
    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"  # flash_attention_2 needs flash-attn on CUDA
    compile: bool = False  # torch.compile the training forward (pays off on long GPU runs)
    share_prompt: bool = True  # one row [prompt, chosen, rejected] per pair (forward.py); off for flash_attention_2

    def recipe(self, **overrides: Any) -> TrainRecipe:
        return TrainRecipe.model_validate({**self.model_dump(include=set(TrainRecipe.model_fields)), **overrides})


RUNTIME_FIELDS = tuple(f for f in TrainSpec.model_fields if f not in TrainRecipe.model_fields)


class Axes(Strict):
    """The matrix axes; the product of these lists is the set of cells."""

    objective: list[Objective]  # type: ignore[valid-type]  # a Literal built from the registry
    lora_rank: list[Annotated[int, Field(ge=1, le=4096)]]
    seed: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = [0]  # torch, numpy and Parquet's int64 all take it
    lr: list[PosFloat] | None = None
    epochs: list[Annotated[int, Field(ge=1, le=1000)]] | None = None
    # POET (Xiao et al.): `equal` cuts each training pair's chosen and rejected to the shorter one's length
    truncate: list[Literal["none", "equal"]] | None = None

    _check = field_validator("objective", "lora_rank", "seed", "lr", "epochs", "truncate")(unique_nonempty)


# `objectives:` has one block per registered objective, each with its own settings model.
Objectives = create_model(
    "Objectives", __base__=Strict, **{n: (o.settings, o.settings()) for n, o in objectives.REGISTRY.items()}
)  # type: ignore[call-overload]


class ReplicateSpec(Strict):
    """Adaptive replication: when a challenger looks better on the seeds listed, train the baseline and
    the challengers still in contention (only those) up to `max_seeds` seeds, then decide once."""

    max_seeds: int = Field(3, ge=1, le=100, description="an integer ≥ 1: seeds per contending configuration")


class GenerateSpec(Strict):
    """`eval.generate`: each cell writes completions for a fixed, seeded sample of held-out prompts (the same
    prompts for every cell). Every field but `backend` changes what a cell writes, so they are part of its id."""

    prompts: int = Field(64, ge=1, le=1_000_000, description="how many held-out prompts (at most the held-out size)")
    max_new_tokens: int = Field(256, ge=1, le=65_536)
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0: greedy; above 0: sampling, seeded")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, description="picks the prompts; sampling is seeded with it and the cell's seed")
    every: Literal["end", "eval"] = "end"  # eval: also at each held-out evaluation during training
    batch_size: int = Field(32, ge=1, le=65_536)


class EvalSpec(Strict):
    generate: GenerateSpec | None = None


class RewardModelJudge(Strict):
    reward_model: str = Field(min_length=1, description="a sequence-classification reward model: local dir or hub id")
    revision: str | None = None
    batch_size: int = Field(16, ge=1, le=4096)


class OpenAIEndpoint(Strict):
    base_url: str = Field(pattern=r"^https?://[^\s]+$", description="e.g. http://127.0.0.1:8000/v1")
    model: str = Field(min_length=1)
    # The NAME of the environment variable that holds the key; a key itself never goes in a matrix.
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    timeout_s: PosFloat = Field(60.0, le=3600)
    retries: int = Field(3, ge=0, le=20, description="tries after the first, per request, with backoff")
    concurrency: int = Field(4, ge=1, le=256)


class OpenAIJudge(Strict):
    openai_compatible: OpenAIEndpoint


def _judge_kind(v: Any) -> str | None:
    """Which judge a value means, by its shape, so a mistake is reported against that judge's fields only (tags are
    capitalised so that error locations leave them out, as they do for other union members)."""
    if isinstance(v, dict):
        return "OpenAI" if "openai_compatible" in v else "RewardModel" if "reward_model" in v else None
    if isinstance(v, (RewardModelJudge, OpenAIJudge)):
        return "RewardModel" if isinstance(v, RewardModelJudge) else "OpenAI"
    return "Builtin" if v == "builtin" else None


_JUDGES = "builtin, {reward_model: DIR_OR_HUB_ID} or {openai_compatible: {base_url, model}}"
JudgeSpec = Annotated[
    Union[
        Annotated[Literal["builtin"], Tag("Builtin")],
        Annotated[RewardModelJudge, Tag("RewardModel")],
        Annotated[OpenAIJudge, Tag("OpenAI")],
    ],
    Discriminator(_judge_kind, custom_error_type="judge", custom_error_message=f"allowed: {_JUDGES}"),
]


class DecisionSpec(Strict):
    baseline: dict[str, Any] = Field(default_factory=dict)
    metric: Literal["heldout_accuracy", "win_rate"] = "heldout_accuracy"
    rule: Literal["recipe", "adapter_exact", "paired_exact", "paired_bootstrap", "seed_rule"] = "recipe"
    alpha: float = Field(0.05, gt=0, lt=0.5)
    tolerance_pairs: int | None = Field(None, ge=0)
    replicate: ReplicateSpec | None = Field(
        ReplicateSpec(), description="{max_seeds: N} with N ≥ 1, or off (YAML's off and false both turn it off)"
    )
    # A stated seed-to-seed SD (accuracy points) lets one-seed matrices make recipe-level claims anyway.
    assumed_seed_sd: float | None = Field(None, ge=0, le=50)

    @field_validator("replicate", mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:
        if v is False or v is None or (isinstance(v, str) and v.strip().lower() == "off"):
            return None
        return {} if v is True else v

    @property
    def max_seeds(self) -> int | None:
        """Replication's target seeds, or None when it does not run (off, or a rule that is not a recipe test)."""
        return self.replicate.max_seeds if self.replicate is not None and self.rule == "recipe" else None


class ResourceSpec(Strict):
    """What one cell asks Ray for. Fractional GPUs let several small cells share one GPU."""

    gpus_per_cell: float = Field(0.0, ge=0, le=64, description="0 trains on CPU; at most 1 (fractions share a GPU)")
    cpus_per_cell: float = Field(1.0, gt=0, le=1024)
    memory_gb: PosFloat | None = Field(None, le=65_536)
    accelerator_type: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="e.g. H100, A100-80G")
    custom: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/-]{1,128}$")], PosFloat] = {}
    max_retries: int = Field(2, ge=0, le=100, description="Ray retries of a cell whose worker or node was lost")
    max_oom_retries: int = Field(2, ge=0, le=10, description="halve the micro-batch this many times on OOM")
    # Stop the run when this many cells failed with the same error before any succeeded (a broken setup);
    # `off` (YAML reads it as false) runs every cell regardless. Read by the runner; not part of a cell id.
    fail_fast: int | None = Field(2, ge=1, le=1_000_000, description="identical failures that stop a run, or off")
    # How cells reach Ray (never part of a cell id): `auto` trains them one after another on long-lived trainer
    # actors, one per slot, that keep the base model loaded; `off` runs each cell as a Ray task of its own.
    actors: Literal["auto", "off"] = "auto"
    # `auto`: cells that differ only in objective, its knobs, rank, seed, lr or epochs train several to one forward
    # pass on an actor (one base, an adapter each), as many packs as slots; `off`: one cell per pass. On CPU the
    # numbers are a lone cell's bit for bit (worker/pack.py). Needs actors; never part of a cell id.
    pack: Literal["auto", "off"] = "auto"

    @field_validator("actors", "pack", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false

    @field_validator("gpus_per_cell")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1:
            raise ValueError(
                f"gpus_per_cell {v}: a cell trains on one GPU; allowed: 0 (CPU), a fraction such "
                "as 0.5 (cells share a GPU) or 1"
            )
        return v

    @field_validator("fail_fast", mode="before")
    @classmethod
    def _fail_fast_off(cls, v: Any) -> Any:
        if v is False or (isinstance(v, str) and v.strip().lower() == "off"):
            return None
        if v is None or v is True or isinstance(v, str):
            raise ValueError(
                f"{v!r}: allowed: a whole number of identical cell failures that stops the run (e.g. 2) or off"
            )
        return v

    @field_validator("custom")
    @classmethod
    def _not_builtin(cls, v: dict) -> dict:
        clash = sorted(set(v) & {"CPU", "GPU", "memory", "object_store_memory"})
        if clash:
            raise ValueError(f"custom resources {clash} are built in; use cpus_per_cell, gpus_per_cell, memory_gb")
        return v


class MatrixSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    model: ModelSpec
    data: DataSpec
    train: TrainSpec = TrainSpec()
    matrix: Axes
    objectives: Objectives = Objectives()
    exclude: list[dict[str, Any]] = []
    eval: EvalSpec = EvalSpec()
    judge: JudgeSpec | None = Field(None, description=_JUDGES)
    decision: DecisionSpec = DecisionSpec()
    resources: ResourceSpec = ResourceSpec()
    storage: str = "results"
    # Experiment trackers the driver logs each finished cell and the decision to (ablate/handoff/trackers.py).
    # Not part of any cell id: where results are mirrored never changes them.
    report_to: list[Literal["mlflow", "tensorboard", "wandb"]] = []

    _unique_trackers = field_validator("report_to")(lambda v: unique_nonempty(v) if v else v)

    @model_validator(mode="after")
    def _seeds_fit_replication(self):
        rep, seeds = self.decision.replicate, self.matrix.seed
        if "replicate" in self.decision.model_fields_set and rep is not None and rep.max_seeds < len(seeds):
            msg = (
                f"{rep.max_seeds} is below the {len(seeds)} seeds matrix.seed lists; replication only adds seeds "
                "(after the largest one listed), so raise max_seeds or set replicate: off"
            )
            raise Located([(("decision", "replicate", "max_seeds"), msg)])
        return self

    @model_validator(mode="after")
    def _judge_needs_generations(self):
        problems: list[tuple[tuple, str]] = []
        if self.judge is not None and self.eval.generate is None:
            problems.append((("judge",), "a judge compares generations; add eval.generate (e.g. {prompts: 64})"))
        if self.decision.metric == "win_rate" and self.judge is None:
            problems.append((("decision", "metric"), "win_rate needs a judge (judge: builtin | {reward_model: …} | "
                             "{openai_compatible: …}) and eval.generate"))  # fmt: skip
        if self.judge == "builtin" and not isinstance(self.data.heldout, BuiltinData):
            problems.append((("judge",), "builtin knows the truth of builtin tasks only (data.heldout: {builtin: "
                             "letters}); for your data use {reward_model: …} or {openai_compatible: …}"))  # fmt: skip
        if problems:
            raise Located(problems)
        return self


def yaml_number_hint(v: Any) -> str:
    """YAML 1.1 reads 1e-3, 1e9 or 2.5e3 as text: a float needs a dot and a signed exponent (1.0e-3, 1.0e+9)."""
    m = isinstance(v, str) and re.fullmatch(r"\s*([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?)(\d+))?\s*", v)
    if not m:
        return ""
    mant, sign, exp = m.groups()
    if exp is None:
        return f" (a quoted number is text; write {mant} without quotes)"
    mant = mant if "." in mant else f"{mant}.0"
    return f" (YAML reads {v} as text; write {mant}e{sign or '+'}{exp} for a number)"
