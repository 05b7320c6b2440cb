"""Model and tokenizer loading (builtin, local directory or hub id: one code path) and model identity."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


from . import builtin
from .spec import MatrixError, ModelSpec

DTYPES = ("float32", "bfloat16", "float16")
_FULL_HASH_LIMIT = 64 << 20  # files above this are identified by size + head and tail hashes


def _builtin_name(spec: ModelSpec) -> str | None:
    return spec.path.removeprefix("builtin:") if spec.path.startswith("builtin:") else None


def check_model_spec(spec: ModelSpec) -> list[str]:
    name = _builtin_name(spec)
    if name is not None and name not in builtin.BUILTIN_MODELS:
        return [f"model.path: unknown builtin model {spec.path!r}; builtins: "
                + ", ".join(f"builtin:{n}" for n in builtin.BUILTIN_MODELS)]
    p = Path(spec.path)
    if name is None and "://" in spec.path:
        return [f"model.path: {spec.path}: models are not read from URIs; give a builtin, a local model directory "
                "(at the same path on every worker) or a hub id like org/name"]
    looks_local = p.is_absolute() or spec.path.startswith((".", "~")) or spec.path.count("/") > 1 or "\\" in spec.path
    if name is None and looks_local and not p.is_dir():  # a hub id is "name" or "org/name"
        return [f"model.path: {spec.path}: no such directory (give a local model directory or a hub id like org/name)"]
    if name is None and p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            return [f"model.path: {spec.path}: not a Hugging Face model directory (no config.json)"]
        if '"auto_map"' in cfg.read_text(errors="replace") and not spec.trust_remote_code:
            return [f"model.path: {spec.path}: this model ships its own code (auto_map in config.json); "
                    "set model.trust_remote_code: true only if you trust it"]
    return []


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What a cell id needs to know about the model: builtin name, file hashes, or hub id + revision."""
    ident: dict[str, Any] = {"path": spec.path, "dtype": spec.dtype}
    if _builtin_name(spec) is not None:
        ident["builtin_seed"] = builtin._BASE_SEED
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
        return builtin.builtin_tokenizer()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except OSError as e:
        raise MatrixError([f"model.path: {spec.path}: could not load a tokenizer ({str(e).splitlines()[0]})"]) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, device, attention: str = "sdpa"):
    import torch

    dtype = getattr(torch, spec.dtype)
    name = _builtin_name(spec)
    if name is not None:
        model = builtin.builtin_model(name, dtype, attention)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            spec.path, revision=spec.revision, dtype=dtype, trust_remote_code=spec.trust_remote_code,
            attn_implementation=attention,
        )
    return model.to(device)
