"""The objective registry: everything ablate knows about an objective, in one entry, without torch.

An entry declares the objective's name, its settings block (`objectives.<name>` in a matrix), the
per-cell knobs its loss reads and their label symbols, whether it needs the reference model's log-probs,
whether it scores summed or per-token-averaged log-probs, and the name of its loss function in
ablate/worker/losses.py. The schema, cell expansion, labels, the Parquet columns, the runner and the
recipe all read this table; none of them names an objective. Adding an objective = one entry here, one
loss function, and its test. A knob that a given objective does not list is a validation error naming
the objectives that do read it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
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


Smoothing = Annotated[float, Field(ge=0, lt=0.5)]  # a label-flip rate: 0.5 would make the loss constant


class DPOSettings(Settings):
    """`label_smoothing` ε > 0 is conservative DPO (cDPO): (1-ε)·DPO(y_w ≻ y_l) + ε·DPO(y_l ≻ y_w)."""

    beta: list[PosFloat] = [0.1]
    label_smoothing: list[Smoothing] = [0.0]


class MarginSettings(Settings):
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
        out = []
        for v in super().variants():
            if "gamma_beta_ratio" in v:
                v = {**v, "gamma": round(v["gamma_beta_ratio"] * v["beta"], 12)}
            out.append(v if "gamma" in v else {**v, "gamma": 0.5})
        return out


class SimPOSettings(MarginSettings):
    """`sft_weight` w > 0 adds w·NLL(y_w), as the SimPO authors' `sft_weight` (and TRL CPO's `cpo_alpha`)."""

    sft_weight: list[NonNeg] = [0.0]


class ORPOSettings(Settings):
    lambda_: list[PosFloat] = Field([0.1], alias="lambda")


class IPOSettings(Settings):
    """τ regularises: the loss pulls the per-token log-ratio margin towards 1/(2τ) (TRL's `beta` for IPO)."""

    tau: list[PosFloat] = [0.1]


class BetaSettings(Settings):
    beta: list[PosFloat] = [0.1]


class RobustSettings(Settings):
    """`label_smoothing` is the assumed rate of flipped labels (Chowdhury et al. 2024; TRL `robust`)."""

    beta: list[PosFloat] = [0.1]
    label_smoothing: list[Smoothing] = [0.1]


class CPOSettings(Settings):
    """CPO (Xu et al. 2024): reference-free DPO on summed log-probs plus `sft_weight`·NLL(y_w) (TRL `cpo_alpha`)."""

    beta: list[PosFloat] = [0.1]
    sft_weight: list[NonNeg] = [1.0]


class RDPOSettings(Settings):
    """R-DPO (Park et al. 2024): α·(|y_w| - |y_l|) joins the β-scaled log-ratios inside the sigmoid, so α is in
    reward units per token of length difference; α = 0 is DPO."""

    beta: list[PosFloat] = [0.1]
    alpha: list[NonNeg] = [0.05]


class GammaPOSettings(MarginSettings):
    """γ-PO: `gamma` is the base margin γ0 (or `gamma_beta_ratio` as in the authors' configs), `tau` the
    temperature of the KL-regularised reweighting (large τ: every pair keeps γ0, i.e. SimPO)."""

    tau: list[PosFloat] = [10.0]


class AMaPOSettings(Settings):
    beta: list[PosFloat] = [2.0]


@dataclass(frozen=True)
class ObjectiveDef:
    name: str
    settings: type[Settings]
    knobs: tuple[str, ...]  # per-cell parameters the loss reads, in the loss function's argument order
    symbols: dict[str, str]  # how a knob is written in a cell label: {"beta": "β"}
    reference: bool  # needs the frozen base model's log-probs (π_ref)
    scoring: Literal["sum", "avg"]  # summed or per-token-mean log-probs: what its rewards and `logps/*` use
    loss: str  # function name in ablate/worker/losses.py
    paper: str = ""
    extra_columns: tuple[str, ...] = ()  # parameters recorded but not read by the loss (e.g. γ/β as given)
    # Knob values that give the objective as it was before the knob existed: left out of the cell id and the
    # label, so cells of older matrices keep their ids (a dpo cell with label_smoothing 0 is plain DPO).
    neutral: dict[str, Any] = field(default_factory=dict)


def _def(name, settings, knobs, reference, scoring, loss, paper, **kw) -> ObjectiveDef:
    return ObjectiveDef(name, settings, knobs, {k: SYMBOLS[k] for k in knobs}, reference, scoring, loss, paper, **kw)


# One symbol per knob name across objectives (a label shows each knob once).
SYMBOLS = {
    "beta": "β",
    "gamma": "γ",
    "lambda": "λ",
    "tau": "τ",
    "alpha": "α",
    "label_smoothing": "ε",
    "sft_weight": "sft",
}

REGISTRY: dict[str, ObjectiveDef] = {
    o.name: o
    for o in (
        _def(
            "dpo",
            DPOSettings,
            ("beta", "label_smoothing"),
            True,
            "sum",
            "dpo_loss",
            "Rafailov et al. 2023; cDPO (label_smoothing) as in TRL's CPOTrainer",
            neutral={"label_smoothing": 0.0},
        ),
        _def(
            "simpo",
            SimPOSettings,
            ("beta", "gamma", "sft_weight"),
            False,
            "avg",
            "simpo_loss",
            "Meng et al. 2024",
            extra_columns=("gamma_beta_ratio",),
            neutral={"sft_weight": 0.0},
        ),
        _def("orpo", ORPOSettings, ("lambda",), False, "avg", "orpo_loss", "Hong et al. 2024"),
        _def("ipo", IPOSettings, ("tau",), True, "avg", "ipo_loss", "Azar et al. 2024 (TRL loss_type='ipo')"),
        _def("hinge", BetaSettings, ("beta",), True, "sum", "hinge_loss", "SLiC, Zhao et al. 2023 (TRL 'hinge')"),
        _def(
            "robust",
            RobustSettings,
            ("beta", "label_smoothing"),
            True,
            "sum",
            "robust_loss",
            "Chowdhury et al. 2024 (TRL 'robust')",
        ),
        _def("cpo", CPOSettings, ("beta", "sft_weight"), False, "sum", "cpo_loss", "Xu et al. 2024 (TRL CPOTrainer)"),
        _def("rdpo", RDPOSettings, ("beta", "alpha"), True, "sum", "rdpo_loss", "Park et al. 2024"),
        _def(
            "gamma_po",
            GammaPOSettings,
            ("beta", "gamma", "tau"),
            False,
            "avg",
            "gamma_po_loss",
            "Sun et al. 2025, sunjie279/gammaPO (batch version)",
            extra_columns=("gamma_beta_ratio",),
        ),
        _def("amapo", AMaPOSettings, ("beta",), False, "avg", "amapo_loss", "Deng et al., AAAI 2026"),
    )
}
NAMES: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> ObjectiveDef:
    return REGISTRY[name]


def knob_columns() -> list[str]:
    """Every objective's knobs (and recorded extras), each once, in registry order: the Parquet columns."""
    return list(dict.fromkeys(k for o in REGISTRY.values() for k in (*o.knobs, *o.extra_columns)))


def symbols() -> dict[str, str]:
    return dict(SYMBOLS)


def is_neutral(objective: str, knob: str, value: Any) -> bool:
    """True when `knob` = `value` leaves `objective` as it was before that knob existed (see `neutral`)."""
    entry = REGISTRY.get(objective)
    return entry is not None and knob in entry.neutral and value == entry.neutral[knob]


def knob_values(objective: str, params: dict[str, Any]) -> list[Any]:
    """The loss's knob arguments from a cell's hashed parameters, where neutral knobs are left out."""
    entry = REGISTRY[objective]
    return [params[k] if k in params else entry.neutral[k] for k in entry.knobs]


def owners(knob: str) -> list[str]:
    """The objectives that read `knob` (for 'gamma belongs to simpo' messages)."""
    return [
        o.name
        for o in REGISTRY.values()
        if knob in o.knobs
        or knob in o.extra_columns
        or knob in {(f.alias or n) for n, f in o.settings.model_fields.items()}
    ]
