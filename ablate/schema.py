"""The matrix schema: pydantic models of a matrix file (MatrixSpec and its parts).

Field rules live on the models; a rule that spans fields raises `Located` so each problem names the
field it is about. Objective settings come from the objective registry (ablate/objectives.py). Checks
against the cells a matrix really makes (exclude, decision.baseline) are in ablate/matrix/cells.py;
reading the YAML file and turning errors into file:line messages is ablate/matrix/yamlfile.py.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model, field_validator, model_validator

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


_DATA_SOURCE = (
    "a JSONL file path or URI (s3://, gs://, file://) of prompt/chosen/rejected rows, "
    "or builtin data such as {builtin: letters, n: 256}"
)


class DataSpec(Strict):
    train: Union[BuiltinData, str] = Field(description=_DATA_SOURCE)
    heldout: Union[BuiltinData, str] = Field(description=_DATA_SOURCE)
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

    objective: list[Objective]
    lora_rank: list[Annotated[int, Field(ge=1, le=4096)]]
    seed: list[Annotated[int, Field(ge=0)]] = [0]
    lr: list[PosFloat] | None = None
    epochs: list[Annotated[int, Field(ge=1, le=1000)]] | None = None

    _check = field_validator("objective", "lora_rank", "seed", "lr", "epochs")(unique_nonempty)


# `objectives:` has one block per registered objective, each with its own settings model.
Objectives = create_model(
    "Objectives", __base__=Strict, **{n: (o.settings, o.settings()) for n, o in objectives.REGISTRY.items()}
)  # type: ignore[call-overload]


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
    # Stop the run when this many cells failed with the same error before any succeeded (a broken setup);
    # `off` (YAML reads it as false) runs every cell regardless. Read by the runner; not part of a cell id.
    fail_fast: int | None = Field(2, ge=1, le=1_000_000, description="identical failures that stop a run, or off")

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
    decision: DecisionSpec = DecisionSpec()
    resources: ResourceSpec = ResourceSpec()
    storage: str = "results"


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
