"""The matrix schema: pydantic models of a matrix file (MatrixSpec and its parts) and MatrixError.

Field rules live on the models; checks that span fields (exclude, decision.baseline against the cells
the matrix really has) raise `Located` so each problem names the field it is about. Reading the YAML
file and turning validation errors into file:line messages is ablate/matrixfile.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OBJECTIVES = ("dpo", "simpo", "orpo")
Objective = Literal["dpo", "simpo", "orpo"]
PosFloat = Annotated[float, Field(gt=0)]


class MatrixError(Exception):
    """One or more user mistakes in a matrix or its data; each line is one problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _unique_nonempty(v: list) -> list:
    if not v:
        raise ValueError("must list at least one value")
    dup = sorted({str(x) for x in v if v.count(x) > 1})
    if dup:
        raise ValueError(f"duplicate values {dup}; each value must appear once")
    return v


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


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


_DATA_SOURCE = ("a JSONL file path or URI (s3://, gs://, file://) of prompt/chosen/rejected rows, "
                "or builtin data such as {builtin: letters, n: 256}")


class DataSpec(Strict):
    train: Union[BuiltinData, str] = Field(description=_DATA_SOURCE)
    heldout: Union[BuiltinData, str] = Field(description=_DATA_SOURCE)
    max_length: int = Field(512, ge=2, le=1_048_576)
    max_prompt_length: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _prompt_fits(self):
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise Located([(("max_prompt_length",),
                             f"{self.max_prompt_length} must be below max_length ({self.max_length}) "
                             "or every completion would be cut away")])
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


class TrainSpec(Strict):
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
    # Runtime settings: they change speed or resilience, not the numbers, so they stay out of cell ids.
    checkpoint_every_steps: int | None = Field(None, ge=1, le=10_000_000)
    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"  # flash_attention_2 needs flash-attn on CUDA
    compile: bool = False  # torch.compile the training forward (pays off on long GPU runs)
    share_prompt: bool = True  # one row [prompt, chosen, rejected] per pair (forward.py); off for flash_attention_2

    @model_validator(mode="after")
    def _accum_divides(self):
        if self.batch_size % self.grad_accum:
            raise Located([(("grad_accum",),
                             f"{self.grad_accum} must divide batch_size ({self.batch_size}); "
                             "the micro-batch is batch_size / grad_accum")])
        return self


class Axes(Strict):
    """The matrix axes; the product of these lists is the set of cells."""

    objective: list[Objective]
    lora_rank: list[Annotated[int, Field(ge=1, le=4096)]]
    seed: list[Annotated[int, Field(ge=0)]] = [0]
    lr: list[PosFloat] | None = None
    epochs: list[Annotated[int, Field(ge=1, le=1000)]] | None = None

    _check = field_validator("objective", "lora_rank", "seed", "lr", "epochs")(
        lambda v: v if v is None else _unique_nonempty(v)
    )


def _listy(*fields: str):
    """Validators accepting a scalar or a non-empty, duplicate-free list (a list adds an axis)."""
    return field_validator(*fields, mode="before")(lambda v: v if v is None else _as_list(v))


class DPOSettings(Strict):
    beta: list[PosFloat] = [0.1]
    _l = _listy("beta")
    _u = field_validator("beta")(_unique_nonempty)


class SimPOSettings(Strict):
    """`gamma` is the target margin in reward units, as in the SimPO paper and TRL's `simpo_gamma`:
    loss = -log σ(β·(p_w - p_l) - γ). The SimPO authors' `gamma_beta_ratio` (γ/β) is accepted by its own
    name; give one or the other."""

    beta: list[PosFloat] = [2.0]
    gamma: list[Annotated[float, Field(ge=0)]] | None = None
    gamma_beta_ratio: list[Annotated[float, Field(ge=0)]] | None = None
    _l = _listy("beta", "gamma", "gamma_beta_ratio")
    _u = field_validator("beta", "gamma", "gamma_beta_ratio")(lambda v: v if v is None else _unique_nonempty(v))

    @model_validator(mode="after")
    def _one_gamma(self):
        if self.gamma is not None and self.gamma_beta_ratio is not None:
            raise Located([(("gamma_beta_ratio",),
                             "give either gamma (reward units) or gamma_beta_ratio (γ/β), not both")])
        return self


class ORPOSettings(Strict):
    lambda_: list[PosFloat] = Field([0.1], alias="lambda")
    _l = _listy("lambda_")
    _u = field_validator("lambda_")(_unique_nonempty)


class Objectives(Strict):
    dpo: DPOSettings = DPOSettings()
    simpo: SimPOSettings = SimPOSettings()
    orpo: ORPOSettings = ORPOSettings()


class DecisionSpec(Strict):
    baseline: dict[str, Any] = Field(default_factory=dict)
    metric: Literal["heldout_accuracy"] = "heldout_accuracy"
    rule: Literal["paired_exact", "paired_bootstrap", "seed_rule"] = "paired_exact"
    alpha: float = Field(0.05, gt=0, lt=0.5)
    tolerance_pairs: int | None = Field(None, ge=0)


class ResourceSpec(Strict):
    """What one cell asks Ray for. Fractional GPUs let several small cells share one GPU."""

    gpus_per_cell: float = Field(0.0, ge=0, le=64, description="0 trains on CPU; at most 1 (fractions share a GPU)")
    cpus_per_cell: float = Field(1.0, gt=0, le=1024)
    memory_gb: PosFloat | None = Field(None, le=65_536)
    accelerator_type: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="e.g. H100, A100-80G")
    custom: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/-]{1,128}$")], PosFloat] = {}
    max_retries: int = Field(2, ge=0, le=100, description="Ray retries of a cell whose worker or node was lost")
    max_oom_retries: int = Field(2, ge=0, le=10, description="halve the micro-batch this many times on OOM")

    @field_validator("gpus_per_cell")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1:
            raise ValueError(f"gpus_per_cell {v}: a cell trains on one GPU; allowed: 0 (CPU), a fraction such "
                             "as 0.5 (cells share a GPU) or 1")
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
    decision: DecisionSpec = DecisionSpec()
    resources: ResourceSpec = ResourceSpec()
    storage: str = "results"

    @model_validator(mode="after")
    def _cross_checks(self):
        problems = _cross_check_problems(self)
        if problems:
            raise Located(problems)
        return self


class Located(ValueError):
    """Problems found across fields, each with the location (as a pydantic loc) it belongs to."""

    def __init__(self, problems: list[tuple[tuple, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))


_AXES = ("objective", "lora_rank", "seed", "lr", "epochs")
_KEYS = (*_AXES, "beta", "gamma", "gamma_beta_ratio", "lambda")


def _config_label(params: dict) -> str:
    from .cells import cell_label

    return cell_label({**params, "seed": 0}).removesuffix(" s0")


def _cross_check_problems(spec: MatrixSpec) -> list[tuple[tuple, str]]:
    """exclude and decision.baseline against the cells the matrix really has."""
    from .cells import expand  # cells imports this module

    problems: list[tuple[tuple, str]] = []
    for i, ex in enumerate(spec.exclude):
        bad = sorted(set(ex) - set(_KEYS))
        if bad:
            problems.append((("exclude", i, bad[0]), f"unknown keys {bad}; allowed: {', '.join(_KEYS)}"))
        elif not ex:
            problems.append((("exclude", i), f"an empty entry would exclude every cell; give keys among {', '.join(_KEYS)}"))
    base = dict(spec.decision.baseline)
    bad = sorted(set(base) - set(_KEYS))
    if bad:
        problems.append((("decision", "baseline", bad[0]), f"unknown keys {bad}; allowed: {', '.join(_KEYS)}"))
    if problems:
        return problems

    everything = [c.params for c in expand(spec.model_copy(update={"exclude": []}), {}, {})]
    kept = [p for p in everything if not any(all(p.get(k) == v for k, v in ex.items()) for ex in spec.exclude)]
    if not kept:
        return [(("exclude",), f"removes every cell of the matrix ({len(everything)}); keep at least one cell to run")]

    default = not base
    if default:
        base = {"objective": spec.matrix.objective[0], "lora_rank": spec.matrix.lora_rank[0]}
    knobs = ("beta", "gamma", "gamma_beta_ratio", "lambda")
    mine = [p for p in everything if p["objective"] == base.get("objective")]
    for key, val in base.items():  # a value no cell has (of the baseline's objective, for its knobs)
        pool, whose = (mine, f"the {base['objective']} cells") if key in knobs and mine else (everything, "any cell")
        values = sorted({p[key] for p in pool if key in p}, key=str)
        if val in values:
            continue
        hint = yaml_number_hint(val)
        if key in _AXES and getattr(spec.matrix, key) is not None:
            msg = f"{val!r} is not in matrix.{key} {getattr(spec.matrix, key)}{hint}"
        elif not values:
            owners = sorted({p["objective"] for p in everything if key in p})
            msg = (f"{key} does not apply to {whose} ({key} belongs to {', '.join(owners)})" if owners
                   else f"no cell has {key}: no objective in this matrix uses it")
        else:
            msg = f"{val!r} is not a {key} of {whose}; allowed: {values}{hint}"
        problems.append((("decision", "baseline", key), msg))
    if problems:
        return problems

    matches = lambda p, keys: all(p.get(k) == base[k] for k in keys)  # noqa: E731
    what = f"the default baseline {base} (first objective and rank listed)" if default else str(base)
    named = [p for p in everything if matches(p, base)]
    chosen = [p for p in kept if matches(p, base)]
    configs = list(dict.fromkeys(_config_label(p) for p in chosen))
    choices = ", ".join(list(dict.fromkeys(_config_label(p) for p in kept))[:6])
    if not named:
        problems.append((("decision", "baseline"),
                         f"{what} matches no cell of the matrix; choose a baseline among: {choices}"))
    elif not chosen:
        by = sorted({i for i, ex in enumerate(spec.exclude) for p in named if all(p.get(k) == v for k, v in ex.items())})
        problems.append((("decision", "baseline"),
                         f"{what}: {', '.join(f'exclude[{i}]' for i in by)} removes every cell it names; "
                         f"choose a baseline among the cells that run: {choices}"))
    elif len(configs) > 1:
        problems.append((("decision", "baseline"),
                         f"{what} matches {len(configs)} configurations ({'; '.join(configs[:6])}); "
                         "add keys such as beta until it names one"))
    return problems


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


# The loaders live in matrixfile.py (which imports this module); `from ablate.spec import load_matrix`
# keeps working through this lazy lookup, without a circular import.
_MATRIXFILE = ("load_matrix", "parse_matrix", "format_validation_error")


def __getattr__(name: str):
    if name in _MATRIXFILE:
        from . import matrixfile

        return getattr(matrixfile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
