"""A model's structure without its weights, and the matrix checked against it before Ray starts.

Without this, LoRA targets the model does not have, a rank above the layers' size, a max_length beyond the
context, a tokenizer larger than the embedding or a dtype the device cannot run all pass `validate` and fail
later in every cell. The structure comes from the builtin settings (plain numbers, so the driver of a builtin
run never imports torch) or, for a local folder or hub id, from the model built on torch's meta device from
its config.json: every module with its shape and no memory, in about a second even for large models.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..schema import MatrixSpec, ModelSpec
from .models import BUILTIN_CLASSES, BUILTIN_CONFIG

# The module types PEFT's LoRA can wrap (peft/tuners/lora/model.py, "Target module ... is not supported").
ADAPTABLE = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention")
# Ray's accelerator_type names of NVIDIA GPUs older than Ampere (compute capability < 8.0): no bfloat16 kernels.
NO_BF16 = {"V100", "P100", "P40", "P4", "T4", "K80", "M60", "M40"}
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass(frozen=True)
class Module:
    name: str  # full name as in model.named_modules(), e.g. model.layers.0.self_attn.q_proj
    kind: str  # class name
    dims: tuple[int, int] | None  # (in, out) for a module LoRA can adapt, else None


@dataclass(frozen=True)
class Structure:
    model: str  # model.path as written, for messages
    modules: tuple[Module, ...]
    embedding_rows: int  # rows of the input embedding: every token id must be below it
    context: int | None  # positions the model was built for (None: the config does not say)
    context_field: str = ""

    def adaptable_names(self) -> list[str]:
        return sorted({m.name.rsplit(".", 1)[-1] for m in self.modules if m.dims})


def builtin_structure(path: str) -> Structure:
    """The builtin Llama / Qwen2 modules from their settings alone (tests compare it with the meta-device model)."""
    c: dict[str, Any] = BUILTIN_CONFIG
    cls = BUILTIN_CLASSES[path.removeprefix("builtin:")]
    arch = cls.removesuffix("ForCausalLM")
    hidden, heads, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    head_dim, inter, vocab = hidden // heads, c["intermediate_size"], c["vocab_size"]
    mods = [Module("", cls, None), Module("model", f"{arch}Model", None)]
    mods += [Module("model.embed_tokens", "Embedding", (vocab, hidden)), Module("model.layers", "ModuleList", None)]
    for i in range(c["num_hidden_layers"]):
        at, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        mods += [
            Module(f"model.layers.{i}", f"{arch}DecoderLayer", None),
            Module(at, f"{arch}Attention", None),
            Module(f"{at}.q_proj", "Linear", (hidden, heads * head_dim)),
            Module(f"{at}.k_proj", "Linear", (hidden, kv * head_dim)),
            Module(f"{at}.v_proj", "Linear", (hidden, kv * head_dim)),
            Module(f"{at}.o_proj", "Linear", (heads * head_dim, hidden)),
            Module(mlp, f"{arch}MLP", None),
            Module(f"{mlp}.gate_proj", "Linear", (hidden, inter)),
            Module(f"{mlp}.up_proj", "Linear", (hidden, inter)),
            Module(f"{mlp}.down_proj", "Linear", (inter, hidden)),
            Module(f"{mlp}.act_fn", "SiLUActivation", None),
            Module(f"model.layers.{i}.input_layernorm", f"{arch}RMSNorm", None),
            Module(f"model.layers.{i}.post_attention_layernorm", f"{arch}RMSNorm", None),
        ]
    mods += [
        Module("model.norm", f"{arch}RMSNorm", None),
        Module("model.rotary_emb", f"{arch}RotaryEmbedding", None),
        Module("lm_head", "Linear", (hidden, vocab)),
    ]
    return Structure(path, tuple(mods), vocab, c["max_position_embeddings"], "max_position_embeddings")


def _dims(module) -> tuple[int, int] | None:
    kind = type(module).__name__
    if kind not in ADAPTABLE:
        return None
    for a, b in (
        ("in_features", "out_features"),
        ("num_embeddings", "embedding_dim"),
        ("in_channels", "out_channels"),
        ("nx", "nf"),
        ("embed_dim", "embed_dim"),
    ):
        if hasattr(module, a) and hasattr(module, b):
            return int(getattr(module, a)), int(getattr(module, b))
    return None


def meta_structure(spec: ModelSpec) -> Structure:
    """A local folder's or hub model's modules, built on the meta device from config.json: shapes, no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(spec.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
        reason = " ".join(str(e).split()).split(". ")[0][:300]  # the first sentence says what is wrong
        raise UserError(
            [f"model.path: {spec.path}: transformers cannot build a causal language model from its config ({reason})"]
        ) from None
    mods = tuple(Module(n, type(m).__name__, _dims(m)) for n, m in model.named_modules())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    field = next((f for f in _CONTEXT_FIELDS if isinstance(getattr(text, f, None), int)), "")
    rows = model.get_input_embeddings().num_embeddings
    return Structure(spec.path, mods, rows, getattr(text, field) if field else None, field)


def model_structure(spec: ModelSpec) -> Structure:
    if spec.path.startswith("builtin:"):
        return builtin_structure(spec.path)
    return meta_structure(spec)


def _shape(m: Module) -> str:
    return f"{m.name.rsplit('.', 1)[-1]} {m.dims[0]}→{m.dims[1]}" if m.dims else m.name


def lora_problems(spec: MatrixSpec, s: Structure) -> list[tuple[tuple, str]]:
    """train.lora.targets against the modules (PEFT's rule: a target matches a module whose full name is the target
    or ends with '.' + target), and each matrix.lora_rank against the adapted layers' sizes."""
    problems: list[tuple[tuple, str]] = []
    names = s.adaptable_names()
    adapted: list[Module] = []
    for i, target in enumerate(spec.train.lora.targets):
        hits = [m for m in s.modules if m.name and (m.name == target or m.name.endswith("." + target))]
        if not hits:
            close = difflib.get_close_matches(target, names, n=1)
            problems.append(
                (
                    ("train", "lora", "targets", i),
                    f"{target!r} names no module of {s.model}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + f"; LoRA can adapt: {', '.join(names)}",
                )
            )
        elif any(m.dims is None for m in hits):
            kinds = sorted({m.kind for m in hits if m.dims is None})
            problems.append(
                (
                    ("train", "lora", "targets", i),
                    f"{target!r} names {', '.join(kinds)} modules of {s.model}, which LoRA cannot adapt (it adapts "
                    f"Linear, Embedding and Conv layers); adaptable here: {', '.join(names)}",
                )
            )
        else:
            adapted += hits
    if not adapted or problems:
        return problems
    full = max(min(m.dims) for m in adapted if m.dims)
    shapes = ", ".join(dict.fromkeys(_shape(m) for m in adapted))
    for i, rank in enumerate(spec.matrix.lora_rank):
        if rank > full:
            problems.append(
                (
                    ("matrix", "lora_rank", i),
                    f"{rank} is above the full rank of every LoRA target of {s.model} ({shapes}); a rank above "
                    f"min(in, out) adds parameters, not capacity; allowed: ranks up to {full}",
                )
            )
    return problems


def context_problems(spec: MatrixSpec, s: Structure) -> list[tuple[tuple, str]]:
    if s.context is not None and spec.data.max_length > s.context:
        return [
            (
                ("data", "max_length"),
                f"{spec.data.max_length} tokens is longer than the context {s.model} was built for "
                f"({s.context_field}: {s.context}); allowed: max_length ≤ {s.context}",
            )
        ]
    return []


def device_problems(spec: MatrixSpec) -> list[tuple[tuple, str]]:
    """dtype and attention kernel against the device a cell gets (a GPU when gpus_per_cell > 0, else the CPU)."""
    dtype, attention, res = spec.model.dtype, spec.train.attention, spec.resources
    problems: list[tuple[tuple, str]] = []
    if attention == "flash_attention_2" and res.gpus_per_cell == 0:
        problems.append(
            (
                ("train", "attention"),
                "flash_attention_2 runs on CUDA GPUs only, and resources.gpus_per_cell is 0 (cells train on CPU); "
                "allowed on CPU: sdpa or eager",
            )
        )
    if attention == "flash_attention_2" and dtype == "float32":
        problems.append(
            (
                ("model", "dtype"),
                "float32 with train.attention flash_attention_2, whose kernels run in float16 or bfloat16 only; "
                "allowed: bfloat16 or float16, or train.attention: sdpa",
            )
        )
    gpu = (res.accelerator_type or "").upper().removeprefix("NVIDIA-").removeprefix("TESLA-")
    if dtype == "bfloat16" and res.gpus_per_cell > 0 and gpu in NO_BF16:
        problems.append(
            (
                ("model", "dtype"),
                f"bfloat16 on resources.accelerator_type {res.accelerator_type}, a GPU older than Ampere (compute "
                "capability < 8.0) with no bfloat16 support; allowed there: float16 or float32",
            )
        )
    return problems


def tokenizer_problems(tok, s: Structure) -> list[tuple[tuple, str]]:
    """Every id the tokenizer can produce must index a row of the model's embedding."""
    special = [i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None]
    top = max([len(tok), *(i + 1 for i in special)])
    if top <= s.embedding_rows:
        return []
    return [
        (
            ("model", "path"),
            f"the tokenizer has {top} token ids (0..{top - 1}) but {s.model}'s embedding has {s.embedding_rows} "
            f"rows, so ids from {s.embedding_rows} up would index past it; use the tokenizer saved with this model, "
            "or resize the embeddings (model.resize_token_embeddings(len(tokenizer))) and save both",
        )
    ]
