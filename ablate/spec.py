"""The matrix file: pydantic models, YAML loading and the error messages users see.

Every problem in a matrix is collected and reported at once, each naming the file, the line, the
field, the bad value and what is allowed, before Ray starts or a model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class DataSpec(Strict):
    train: Union[BuiltinData, str]
    heldout: Union[BuiltinData, str]
    max_length: int = Field(512, ge=2, le=1_048_576)
    max_prompt_length: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _prompt_fits(self):
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length}) "
                "or every completion would be cut away"
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

    @model_validator(mode="after")
    def _accum_divides(self):
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum}); "
                "the micro-batch is batch_size / grad_accum"
            )
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
            raise ValueError("give either gamma (reward units) or gamma_beta_ratio (γ/β), not both")
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

    gpus_per_cell: float = Field(0.0, ge=0, le=64)
    cpus_per_cell: float = Field(1.0, gt=0, le=1024)
    memory_gb: PosFloat | None = Field(None, le=65_536)
    accelerator_type: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="e.g. H100, A100-80G")
    custom: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/-]{1,128}$")], PosFloat] = {}
    max_retries: int = Field(2, ge=0, le=100, description="Ray retries of a cell whose worker or node was lost")
    max_oom_retries: int = Field(2, ge=0, le=10, description="halve the micro-batch this many times on OOM")

    @field_validator("gpus_per_cell")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"gpus_per_cell {v}: above 1 it must be a whole number (Ray shares a GPU only "
                             "in fractions of one)")
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
        problems = []
        axis_names = set(Axes.model_fields) | {"beta", "gamma", "gamma_beta_ratio", "lambda"}
        for i, ex in enumerate(self.exclude):
            bad = sorted(set(ex) - axis_names)
            if bad or not ex:
                problems.append(f"exclude[{i}]: unknown keys {bad}; allowed: {sorted(axis_names)}")
        base = self.decision.baseline
        bad = sorted(set(base) - axis_names)
        if bad:
            problems.append(f"decision.baseline: unknown keys {bad}; allowed: {sorted(axis_names)}")
        else:
            for key in ("objective", "lora_rank", "seed", "lr", "epochs"):
                axis = getattr(self.matrix, key)
                if key in base and axis is not None and base[key] not in axis:
                    problems.append(f"decision.baseline.{key}: {base[key]!r} is not in matrix.{key} {axis}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# ---------------------------------------------------------------------------------------------
# Loading, with messages that name the file, line and field.


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """Walk the composed YAML tree along a pydantic error location to the line it points at."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == (part if part != "lambda_" else "lambda"):
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _allowed_fields(loc: tuple) -> list[str] | None:
    """The field names allowed at the parent of `loc`, for 'unknown field' messages."""
    model: Any = MatrixSpec
    for part in loc[:-1]:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")), ann)
    if not hasattr(model, "model_fields"):
        return None
    return sorted(f.alias or n for n, f in model.model_fields.items())


def format_validation_error(err: ValidationError, source: str, root: yaml.Node | None) -> list[str]:
    problems = []
    for e in err.errors():
        # Union members add their own names (e.g. 'BuiltinData', 'str') to the location; drop them.
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and (p[:1].isupper() or p in ("str",))))
        field = ".".join(str(p) if p != "lambda_" else "lambda" for p in loc) or "(top level)"
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else source
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc)
            msg = "unknown field" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
            if loc[-1] in ("gamma", "gamma_beta_ratio") and "dpo" in loc:
                msg += " (gamma belongs to simpo)"
            if loc[-1] == "lambda" and "orpo" not in loc:
                msg += " (lambda belongs to orpo)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        value = "" if e["type"] in ("missing",) else f" (got {e['input']!r})"
        if len(value) > 120:
            value = value[:117] + "...)"
        problems.append(f"{where}: {field}: {msg}{value if e['type'] != 'extra_forbidden' else ''}")
    # Unions report each member's failure; keep one message per location and text.
    return list(dict.fromkeys(problems))


def parse_matrix(text: str, source: str = "<matrix>") -> MatrixSpec:
    try:
        data = yaml.safe_load(text)  # refuses !!python tags
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.constructor.ConstructorError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise MatrixError([f"{source}:{line}: YAML tag not allowed ({e.problem}); ablate reads plain YAML only"])
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise MatrixError([f"{source}{line}: not valid YAML: {getattr(e, 'problem', e)}"])
    if not isinstance(data, dict):
        raise MatrixError([f"{source}: a matrix must be a YAML mapping with name, model, data, matrix, ..."])
    try:
        return MatrixSpec.model_validate(data)
    except ValidationError as err:
        raise MatrixError(format_validation_error(err, source, root)) from None


def load_matrix(path: str | Path) -> MatrixSpec:
    """Read and validate a matrix file. Relative data paths are resolved against the file's folder."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise MatrixError([f"{path}: no such matrix file"]) from None
    except IsADirectoryError:
        raise MatrixError([f"{path}: is a directory, expected a matrix YAML file"]) from None
    except UnicodeDecodeError as e:
        raise MatrixError([f"{path}: not UTF-8 text (byte {e.start})"]) from None
    spec = parse_matrix(text, str(path))
    return _resolve_paths(spec, path.parent)


def _resolve_paths(spec: MatrixSpec, base: Path) -> MatrixSpec:
    def fix(p):
        if isinstance(p, str) and not p.startswith("builtin:") and "://" not in p and not Path(p).is_absolute():
            return str((base / p).resolve())
        return p

    data = spec.data.model_copy(update={"train": fix(spec.data.train), "heldout": fix(spec.data.heldout)})
    model = spec.model
    if (base / model.path).is_dir() and not Path(model.path).is_absolute():
        model = model.model_copy(update={"path": str((base / model.path).resolve())})
    return spec.model_copy(update={"data": data, "model": model})
