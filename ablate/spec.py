"""The matrix file: pydantic models, YAML loading and the error messages users see.

Every problem in a matrix is collected and reported at once, each naming the file, the line, the
field, the bad value and what is allowed, before Ray starts or a model loads.
"""

from __future__ import annotations

import re
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
            raise _Located([(("max_prompt_length",),
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

    @model_validator(mode="after")
    def _accum_divides(self):
        if self.batch_size % self.grad_accum:
            raise _Located([(("grad_accum",),
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
            raise _Located([(("gamma_beta_ratio",),
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
        problems = _cross_check_problems(self)
        if problems:
            raise _Located(problems)
        return self


class _Located(ValueError):
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
        hint = _yaml_number_hint(val)
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


def _yaml_number_hint(v: Any) -> str:
    """YAML 1.1 reads 1e-3, 1e9 or 2.5e3 as text: a float needs a dot and a signed exponent (1.0e-3, 1.0e+9)."""
    m = isinstance(v, str) and re.fullmatch(r"\s*([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?)(\d+))?\s*", v)
    if not m:
        return ""
    mant, sign, exp = m.groups()
    if exp is None:
        return f" (a quoted number is text; write {mant} without quotes)"
    mant = mant if "." in mant else f"{mant}.0"
    return f" (YAML reads {v} as text; write {mant}e{sign or '+'}{exp} for a number)"


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


_SCHEMA: dict | None = None


def _schema_at(loc: tuple) -> dict | None:
    """The JSON schema of the field at a pydantic location (None when the location is not in the schema)."""
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = MatrixSpec.model_json_schema()
    defs = _SCHEMA.get("$defs", {})

    def resolve(s: dict) -> dict:
        while "$ref" in s:
            s = {**defs[s["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in s.items() if k != "$ref"}}
        return s

    node = resolve(_SCHEMA)
    for part in loc:
        options = [resolve(o) for o in node.get("anyOf", [node])]
        key = "lambda" if part == "lambda_" else part
        nxt = next((o["items"] for o in options if isinstance(part, int) and "items" in o), None) or next(
            (o["properties"][key] for o in options if not isinstance(part, int) and key in o.get("properties", {})), None)
        if nxt is None:
            return None
        node = resolve(nxt)
    return node


def _describe(s: dict | None) -> str:
    """What a schema allows, in words: 'an integer in [1, 1000]', 'one of a, b', 'a mapping of ...'."""
    if not s:
        return ""
    if s.get("description"):
        return s["description"]
    if "anyOf" in s:
        parts = [_describe(o) for o in s["anyOf"] if o.get("type") != "null"]
        null = any(o.get("type") == "null" for o in s["anyOf"])
        return " or ".join(p for p in parts if p) + (" or null" if null else "")
    if "enum" in s or "const" in s:
        return "one of " + ", ".join(str(v) for v in s.get("enum", [s.get("const")]))
    t = s.get("type")
    if t in ("integer", "number"):
        kind = "an integer" if t == "integer" else "a number"
        lo = ("[", s["minimum"]) if "minimum" in s else ("(", s["exclusiveMinimum"]) if "exclusiveMinimum" in s else None
        hi = (s["maximum"], "]") if "maximum" in s else (s["exclusiveMaximum"], ")") if "exclusiveMaximum" in s else None
        if lo and hi:
            return f"{kind} in {lo[0]}{lo[1]:g}, {hi[0]:g}{hi[1]}"
        if lo:
            return f"{kind} {'≥' if lo[0] == '[' else '>'} {lo[1]:g}"
        if hi:
            return f"{kind} {'≤' if hi[1] == ']' else '<'} {hi[0]:g}"
        return kind
    if t == "string":
        return f"text matching {s['pattern']}" if "pattern" in s else "text"
    if t == "boolean":
        return "true or false"
    if t == "array":
        return "a list of " + (_describe(s.get("items")) or "values")
    if t == "object" and "properties" in s:
        req = set(s.get("required", []))
        return "a mapping of " + ", ".join(k + (" (required)" if k in req else "") for k in s["properties"])
    if t == "object":
        return "a mapping"
    return ""


# Errors whose pydantic text does not say what is allowed; ablate adds it from the field's schema.
_ADD_ALLOWED = {"missing", "int_parsing", "int_type", "int_from_float", "float_parsing", "float_type", "bool_parsing",
                "bool_type", "string_type", "list_type", "dict_type", "model_type", "model_attributes_type",
                "finite_number"}


def format_validation_error(err: ValidationError, source: str, root: yaml.Node | None) -> list[str]:
    def where(loc: tuple) -> str:
        line = _line_of(root, loc)
        return f"{source}:{line}" if line else source

    def name(loc: tuple) -> str:
        return ".".join(str(p) if p != "lambda_" else "lambda" for p in loc) or "(top level)"

    problems, union_seen = [], set()
    for e in err.errors():
        # Union members add their own names (e.g. 'BuiltinData', 'str') to the location; drop them.
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and (p[:1].isupper() or p in ("str",))))
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, _Located):  # cross-field checks name the fields they are about
            problems += [f"{where(loc + rel)}: {name(loc + rel)}: {msg}" for rel, msg in cause.problems]
            continue
        field = name(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in _ADD_ALLOWED and e["type"] != "missing" and len(loc) < len(e["loc"]):
            # A union (data.train: path or builtin mapping) reports each member; say it once.
            if loc in union_seen:
                continue
            union_seen.add(loc)
            msg = "wrong type"
        elif e["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc)
            msg = "unknown field" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
            if loc[-1] in ("gamma", "gamma_beta_ratio") and "dpo" in loc:
                msg += " (gamma belongs to simpo)"
            if loc[-1] == "lambda" and "orpo" not in loc:
                msg += " (lambda belongs to orpo)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        quiet = e["type"] in ("missing", "extra_forbidden") or isinstance(e["input"], dict)  # not a whole mapping
        value = "" if quiet else f" (got {e['input']!r})"
        if len(value) > 120:
            value = value[:117] + "...)"
        allowed = _describe(_schema_at(loc)) if e["type"] in _ADD_ALLOWED else ""
        hint = _yaml_number_hint(e["input"]) if e["type"] in ("int_parsing", "float_parsing") else ""
        problems.append(f"{where(loc)}: {field}: {msg}{value}" + (f"; allowed: {allowed}" if allowed else "") + hint)
    # Unions report each member's failure; keep one message per location and text.
    return list(dict.fromkeys(problems))


def _duplicate_keys(node: yaml.Node | None, source: str, path: tuple = ()) -> list[str]:
    """PyYAML keeps the last of two equal keys without a word; a matrix may not repeat a key."""
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key is not None and key != "<<" and key in seen:
                field = ".".join(map(str, (*path, key)))
                out.append(f"{source}:{k.start_mark.line + 1}: {field}: duplicate key (first at line {seen[key]}); "
                           "each key may appear once in a mapping")
            elif key is not None:
                seen[key] = k.start_mark.line + 1
            out += _duplicate_keys(v, source, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _duplicate_keys(v, source, (*path, i))
    return out


def parse_matrix(text: str, source: str = "<matrix>") -> MatrixSpec:
    try:
        data = yaml.safe_load(text)  # refuses !!python tags
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.constructor.ConstructorError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        tag = re.search(r"tag:yaml\.org,2002:(\S+?)'", str(e.problem))
        tag = f"!!{tag.group(1)}" if tag else "here"
        raise MatrixError([f"{source}:{line}: YAML tag {tag} is not allowed; ablate reads plain YAML only "
                           "(mappings, lists, strings, numbers, true/false, null)"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise MatrixError([f"{source}{line}: not valid YAML: {getattr(e, 'problem', e)}; a matrix is a YAML mapping "
                           "(name, model, data, matrix, ...) in plain block or flow style"]) from None
    if not isinstance(data, dict):
        got = "empty" if data is None else f"a {type(data).__name__}"
        raise MatrixError([f"{source}: a matrix must be a YAML mapping with name, model, data, matrix, ... (got {got})"])
    duplicates = _duplicate_keys(root, source)
    if duplicates:
        raise MatrixError(duplicates)
    try:
        return MatrixSpec.model_validate(data)
    except ValidationError as err:
        raise MatrixError(format_validation_error(err, source, root)) from None


def load_matrix(path: str | Path) -> MatrixSpec:
    """Read and validate a matrix file. Relative data paths are resolved against the file's folder."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MatrixError([f"{path}: no such matrix file; give the path of a matrix YAML file"]) from None
    except IsADirectoryError:
        raise MatrixError([f"{path}: is a directory; give the path of a matrix YAML file"]) from None
    except PermissionError:
        raise MatrixError([f"{path}: permission denied; the matrix file must be readable"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise MatrixError([f"{path}:{line}: not UTF-8 text (byte {e.start}); save it as UTF-8"]) from None
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
