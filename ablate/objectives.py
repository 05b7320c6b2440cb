"""The objective registry: everything ablate knows about an objective, in one entry, without torch.

An entry declares the objective's name, its settings block (`objectives.<name>` in a matrix), the
per-cell knobs its loss reads and their label symbols, whether it needs the reference model's log-probs,
whether it scores summed or per-token-averaged log-probs, and the name of its loss function in
ablate/worker/losses.py. The schema, cell expansion, labels, the Parquet columns, the runner and the
recipe all read this table; none of them names an objective. Adding an objective = one entry here, one
loss function, and its test.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import Located

PosFloat = Annotated[float, Field(gt=0)]
NonNeg = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    # allow_inf_nan: lr: .inf or gamma: .inf would pass a bound like gt=0 and train NaNs
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


def unique_nonempty(v: list | None) -> list | None:
    if v is None:
        return v
    if not v:
        raise ValueError("must list at least one value")
    seen: set = set()
    repeated: set[str] = set()
    for x in v:  # linear: a hostile file may list 100,000 values
        if x in seen:
            repeated.add(str(x))
        seen.add(x)
    dup = sorted(repeated)
    if dup:
        raise ValueError(f"duplicate values {dup}; each value must appear once")
    return v


class Settings(Strict):
    """An objective's settings block. Every field takes a scalar or a list; a list adds an axis to that
    objective's cells only. `variants()` is the product of the lists, as knob dicts."""

    @model_validator(mode="before")
    @classmethod
    def _scalars_to_lists(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v if v is None or isinstance(v, list) else [v] for k, v in data.items()}
        return data

    @field_validator("*")
    @classmethod
    def _unique(cls, v):
        return unique_nonempty(v)

    def variants(self) -> list[dict[str, Any]]:
        fields = {
            (f.alias or n): getattr(self, n) for n, f in type(self).model_fields.items() if getattr(self, n) is not None
        }
        return [dict(zip(fields, combo)) for combo in itertools.product(*fields.values())]


class DPOSettings(Settings):
    beta: list[PosFloat] = [0.1]


class SimPOSettings(Settings):
    """`gamma` is the target margin in reward units, as in the SimPO paper and TRL's `simpo_gamma`:
    loss = -log σ(β·(p_w - p_l) - γ). The SimPO authors' `gamma_beta_ratio` (γ/β) is accepted by its own
    name and converted with γ = ratio·β; give one or the other (neither: γ = 0.5)."""

    beta: list[PosFloat] = [2.0]
    gamma: list[NonNeg] | None = None
    gamma_beta_ratio: list[NonNeg] | None = None

    @model_validator(mode="after")
    def _one_gamma(self):
        if self.gamma is not None and self.gamma_beta_ratio is not None:
            raise Located(
                [(("gamma_beta_ratio",), "give either gamma (reward units) or gamma_beta_ratio (γ/β), not both")]
            )
        return self

    def variants(self) -> list[dict[str, Any]]:
        if self.gamma_beta_ratio is not None:
            return [
                {"beta": b, "gamma": round(r * b, 12), "gamma_beta_ratio": r}
                for b, r in itertools.product(self.beta, self.gamma_beta_ratio)
            ]
        return [{"beta": b, "gamma": g} for b, g in itertools.product(self.beta, self.gamma or [0.5])]


class ORPOSettings(Settings):
    lambda_: list[PosFloat] = Field([0.1], alias="lambda")


@dataclass(frozen=True)
class ObjectiveDef:
    name: str
    settings: type[Settings]
    knobs: tuple[str, ...]  # per-cell parameters the loss reads, in the loss function's argument order
    symbols: dict[str, str]  # how a knob is written in a cell label: {"beta": "β"}
    reference: bool  # needs the frozen base model's log-probs (π_ref)
    scoring: Literal["sum", "avg"]  # summed or per-token-mean log-probs: what its rewards and TRL's logps use
    loss: str  # function name in ablate/worker/losses.py
    paper: str = ""
    extra_columns: tuple[str, ...] = ()  # parameters recorded but not read by the loss (e.g. γ/β as given)


REGISTRY: dict[str, ObjectiveDef] = {
    o.name: o
    for o in (
        ObjectiveDef(
            "dpo",
            DPOSettings,
            ("beta",),
            {"beta": "β"},
            reference=True,
            scoring="sum",
            loss="dpo_loss",
            paper="Rafailov et al. 2023",
        ),
        ObjectiveDef(
            "simpo",
            SimPOSettings,
            ("beta", "gamma"),
            {"beta": "β", "gamma": "γ"},
            reference=False,
            scoring="avg",
            loss="simpo_loss",
            paper="Meng et al. 2024",
            extra_columns=("gamma_beta_ratio",),
        ),
        ObjectiveDef(
            "orpo",
            ORPOSettings,
            ("lambda",),
            {"lambda": "λ"},
            reference=False,
            scoring="avg",
            loss="orpo_loss",
            paper="Hong et al. 2024",
        ),
    )
}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> ObjectiveDef:
    return REGISTRY[name]


def knob_columns() -> list[str]:
    """Every objective's knobs (and recorded extras), each once, in registry order: the Parquet columns."""
    return list(dict.fromkeys(k for o in REGISTRY.values() for k in (*o.knobs, *o.extra_columns)))


def symbols() -> dict[str, str]:
    out: dict[str, str] = {}
    for o in REGISTRY.values():
        out.update(o.symbols)
    return out


def owners(knob: str) -> list[str]:
    """The objectives that read `knob` (for 'gamma belongs to simpo' messages)."""
    return [
        o.name
        for o in REGISTRY.values()
        if knob in o.knobs
        or knob in o.extra_columns
        or knob in {(f.alias or n) for n, f in o.settings.model_fields.items()}
    ]
