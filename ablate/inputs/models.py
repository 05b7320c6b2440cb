"""Models: checks before Ray starts, identity for cell ids, and loading (builtin, local directory or hub id: one
code path).

Builtin models are tiny configs of real transformers architectures with a fixed initialisation seed, so every
cell of a matrix shares exactly the same base weights; their tokenizer is ByT5's byte-level one, which needs no
vocabulary files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..schema import ModelSpec

DTYPES = ("float32", "bfloat16", "float16")
_FULL_HASH_LIMIT = 64 << 20  # files above this are identified by size + head and tail hashes


BUILTIN_MODELS = ("tiny-llama", "tiny-qwen2")
_BASE_SEED = 1234  # the base weights never depend on a cell's seed


def builtin_tokenizer():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def builtin_model(name: str, dtype=None, attn_implementation: str = "sdpa"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=384,  # ByT5: 3 specials + 256 bytes + 125 extra ids
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
    )
    if name == "tiny-llama":
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    elif name == "tiny-qwen2":
        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    else:
        raise ValueError(f"unknown builtin model {name!r}; choose one of {BUILTIN_MODELS}")
    state = torch.random.get_rng_state()
    torch.manual_seed(_BASE_SEED)
    try:
        model = cls(config)
    finally:
        torch.random.set_rng_state(state)
    return model.to(dtype or torch.float32)


def _builtin_name(spec: ModelSpec) -> str | None:
    return spec.path.removeprefix("builtin:") if spec.path.startswith("builtin:") else None


def check_model_spec(spec: ModelSpec) -> list[str]:
    name = _builtin_name(spec)
    if name is not None and name not in BUILTIN_MODELS:
        return [
            f"model.path: unknown builtin model {spec.path!r}; builtins: "
            + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS)
        ]
    p = Path(spec.path)
    if name is None and "://" in spec.path:
        return [
            f"model.path: {spec.path}: models are not read from URIs; give a builtin, a local model directory "
            "(at the same path on every worker) or a hub id like org/name"
        ]
    looks_local = p.is_absolute() or spec.path.startswith((".", "~")) or spec.path.count("/") > 1 or "\\" in spec.path
    if name is None and looks_local and not p.is_dir():  # a hub id is "name" or "org/name"
        return [f"model.path: {spec.path}: no such directory (give a local model directory or a hub id like org/name)"]
    if name is None and p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            return [f"model.path: {spec.path}: not a Hugging Face model directory (no config.json)"]
        if '"auto_map"' in cfg.read_text(errors="replace") and not spec.trust_remote_code:
            return [
                f"model.path: {spec.path}: this model ships its own code (auto_map in config.json); "
                "set model.trust_remote_code: true only if you trust it"
            ]
    return []


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What a cell id needs to know about the model: builtin name, file hashes, or hub id + revision."""
    ident: dict[str, Any] = {"path": spec.path, "dtype": spec.dtype}
    if _builtin_name(spec) is not None:
        ident["builtin_seed"] = _BASE_SEED
        return ident
    p = Path(spec.path)
    if p.is_dir():
        ident["path"] = p.name  # the files, not where they live, decide the result
        files = {}
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h = hashlib.sha256()
            size = f.stat().st_size
            with f.open("rb") as fh:
                if size <= _FULL_HASH_LIMIT:
                    h.update(fh.read())
                else:
                    h.update(fh.read(4 << 20))
                    fh.seek(-(4 << 20), 2)
                    h.update(fh.read())
            files[str(f.relative_to(p))] = f"{size}:{h.hexdigest()[:16]}"
        ident["files"] = files
    else:
        ident["revision"] = spec.revision or "main"
    return ident


def load_tokenizer(spec: ModelSpec):
    if _builtin_name(spec) is not None:
        return builtin_tokenizer()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except OSError as e:
        raise UserError([f"model.path: {spec.path}: could not load a tokenizer ({str(e).splitlines()[0]})"]) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, device, attention: str = "sdpa"):
    import torch

    dtype = getattr(torch, spec.dtype)
    name = _builtin_name(spec)
    if name is not None:
        model = builtin_model(name, dtype, attention)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            spec.path,
            revision=spec.revision,
            dtype=dtype,
            trust_remote_code=spec.trust_remote_code,
            attn_implementation=attention,
        )
    return model.to(device)
