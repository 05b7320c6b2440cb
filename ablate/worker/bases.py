"""What a long-lived trainer process (a Ray actor, ablate/cluster/trainers.py) keeps from one cell to the next:
the base model per (model, dtype, attention, device), its tokenizer, the encoded pairs, the data rows and the
reference log-probs. Used only when `Runtime.keep_base` is set; a fresh process (resources.actors: off) loads
everything per cell as before.

A cell borrows the kept base: Recipe.setup wraps it with a fresh LoRA (PEFT's get_peft_model) and, however the
cell ends (done, failed, out of memory, stopped), `Loan.give_back` unwraps it (PEFT's `unload`, which puts the
base's own modules back) and restores what a cell changes on the base itself: the weights a final generation
merged the adapter into (saved before the merge, copied back bit for bit), which parameters require a gradient,
each module's train/eval flag, the hooks and attributes that gradient checkpointing adds. The next cell gets
exactly the model a fresh process would load (tests/test_trainers.py checks weights, flags, hooks, config, and a
second cell's numbers against a fresh process's). When giving back fails, or a LoRA module is left behind, the
base is dropped and the next cell loads it again.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


@dataclass
class _Pristine:
    """The base model's own state as loaded, which every loan restores."""

    training: dict[str, bool]
    requires_grad: dict[str, bool]
    hooks: dict[str, dict[str, set]]
    attributes: dict[str, set[str]]  # per module: gradient checkpointing adds some (the class default is off)

    @classmethod
    def of(cls, model: torch.nn.Module) -> _Pristine:
        modules = dict(model.named_modules())
        return cls(
            {n: m.training for n, m in modules.items()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            {n: {h: set(getattr(m, h)) for h in _HOOKS} for n, m in modules.items()},
            {n: set(vars(m)) for n, m in modules.items()},
        )


@dataclass
class _Kept:
    model: torch.nn.Module
    pristine: _Pristine
    lent: bool = False


@dataclass
class Cache:
    """One process's kept objects. Only one base model at a time: a run trains one model, and two would double
    the memory a slot was sized for."""

    model_key: str | None = None
    base: _Kept | None = None
    tokenizers: dict[str, Any] = field(default_factory=dict)
    pairs: dict[str, list] = field(default_factory=dict)
    rows: dict[str, list] = field(default_factory=dict)
    references: dict[str, dict] = field(default_factory=dict)
    loads: int = 0  # base models loaded by this process (a test reads it)

    def drop_base(self) -> None:
        self.model_key, self.base = None, None
        free_memory()


CACHE = Cache()


def free_memory() -> None:
    """After a cell: what it allocated (LoRA, optimizer, activations, CUDA cache blocks) goes; the base stays."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tokenizer(model_spec) -> Any:
    from ..inputs.models import load_tokenizer

    key = _key(model_spec.model_dump(mode="json"))
    if key not in CACHE.tokenizers:
        CACHE.tokenizers = {key: load_tokenizer(model_spec)}
    return CACHE.tokenizers[key]


def encoded(split: str, rows: list[dict], tok, data, truncate: str, model_spec) -> list:
    """The pairs of one split as `encode` gives them (POET's equal lengths for training), once per data, lengths
    and tokenizer. Pairs are never changed after encoding, so cells can share them."""
    from ..inputs.tokenize import encode, equal_lengths

    key = _key(split, data.hashes.get(split), data.max_length, data.prompt_budget, truncate, model_spec.model_dump())
    if key not in CACHE.pairs:
        pairs = encode(rows, tok, data.max_length, data.prompt_budget, f"data.{split}")
        if truncate == "equal" and split == "train":
            pairs = equal_lengths(pairs)
        CACHE.pairs[key] = pairs
    return CACHE.pairs[key]


def base_model(model_spec, device, attention: str) -> torch.nn.Module:
    """The kept base model for (model, dtype, attention, device), loaded on first use; a caller that changes it
    (wraps it, switches it to eval) borrows it with `lend` and gives it back."""
    from ..inputs.models import load_model

    key = _key(model_spec.model_dump(mode="json"), attention, str(device))
    if CACHE.model_key != key or CACHE.base is None or CACHE.base.lent:  # lent and never given back: reload
        CACHE.drop_base()
        model = load_model(model_spec, device, attention)
        CACHE.model_key, CACHE.base, CACHE.loads = key, _Kept(model, _Pristine.of(model)), CACHE.loads + 1
    return CACHE.base.model


def lend(model: torch.nn.Module) -> Loan:
    kept = CACHE.base
    if kept is None or kept.model is not model or kept.lent:
        raise RuntimeError("bases.lend: not the kept base, or lent already")
    kept.lent = True
    return Loan(kept)


class Loan:
    """One cell's use of the kept base (see the module docstring)."""

    def __init__(self, kept: _Kept):
        self.kept = kept
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_merge(self, peft_model) -> None:
        """Save the weights merge_and_unload will change (each LoRA layer's base weight), on the CPU."""
        from peft.tuners.lora import LoraLayer

        for m in peft_model.modules():
            if isinstance(m, LoraLayer):
                w: Any = m.get_base_layer().weight  # the base's own Parameter, back in place after the unload
                self.saved.append((w, w.detach().to("cpu", copy=True)))

    def give_back(self, model) -> None:
        """Unwrap `model` (the PeftModel, or the base after a merge) and restore the base; drop it on any doubt."""
        kept, p = self.kept, self.kept.pristine
        try:
            if model is not None and model is not kept.model and hasattr(model, "unload"):
                model.unload()  # the LoRA layers out, the base's own modules back in place
            base = kept.model
            base_any: Any = base
            if getattr(base_any, "is_activation_checkpointing", False):
                base_any.activation_checkpointing_disable()
            params = dict(base.named_parameters())
            with torch.no_grad():
                for w, copy in self.saved:
                    w.copy_(copy)
            for name, flag in p.requires_grad.items():
                params[name].requires_grad_(flag)
            modules = dict(base.named_modules())
            if set(modules) != set(p.training) or set(params) != set(p.requires_grad):
                raise RuntimeError("the base model's modules changed (a LoRA module left behind?)")
            for name, m in modules.items():
                m.training = p.training[name]
                for h in _HOOKS:
                    hooks = getattr(m, h)
                    for k in set(hooks) - p.hooks[name][h]:
                        del hooks[k]
                for attr in set(vars(m)) - p.attributes[name]:
                    delattr(m, attr)
            kept.lent = False
        except Exception as e:  # noqa: BLE001 - a base in an unknown state is never lent again
            logging.getLogger(__name__).warning("dropping the kept base model (%s: %s)", type(e).__name__, e)
            CACHE.drop_base()
        finally:
            self.saved = []


def rows(handles: dict) -> tuple[list[dict], list[dict]]:
    """The train and held-out rows, fetched from Ray's object store once per process (handles: split → ObjectRef,
    passed inside a dict so that Ray hands over the reference, not a fresh copy of the rows for every cell)."""
    import ray

    out = []
    for split in ("train", "heldout"):
        ref = handles[split]
        key = ref.hex()
        if key not in CACHE.rows:
            CACHE.rows = {k: v for k, v in CACHE.rows.items() if k in {h.hex() for h in handles.values()}}
            CACHE.rows[key] = ray.get(ref)
        out.append(CACHE.rows[key])
    return out[0], out[1]


def reference(key: str, handle) -> dict | None:
    """The reference log-probs for `key`: kept from an earlier cell or this process's own reference pass, or
    fetched once from the object store (handle: [ObjectRef], or None for an objective without a reference)."""
    import ray

    if handle is None:
        return None
    if key not in CACHE.references:
        CACHE.references[key] = ray.get(handle[0])
    return CACHE.references[key]


def keep_reference(key: str, ref: dict) -> None:
    CACHE.references[key] = ref
