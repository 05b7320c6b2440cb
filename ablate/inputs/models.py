"""Models: checks before Ray starts, identity for cell ids, and loading (builtin, local directory or hub id: one
code path).

Builtin models are tiny configs of real transformers architectures with a fixed initialisation seed, so every
cell of a matrix shares exactly the same base weights; their tokenizer is ByT5's byte-level one, which needs no
vocabulary files.
"""

from __future__ import annotations

import hashlib
import os
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


# The builtin architectures' settings, as plain values so the driver can check a matrix against them without
# importing torch (transformers' config classes import it).
BUILTIN_CONFIG = dict(
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
)
BUILTIN_CLASSES = {"tiny-llama": "LlamaForCausalLM", "tiny-qwen2": "Qwen2ForCausalLM"}


def builtin_model(name: str, dtype=None, attn_implementation: str = "sdpa"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common: dict[str, Any] = dict(BUILTIN_CONFIG, attn_implementation=attn_implementation)
    classes: dict[str, tuple[Any, Any]] = {"tiny-llama": (LlamaConfig, LlamaForCausalLM),
                                          "tiny-qwen2": (Qwen2Config, Qwen2ForCausalLM)}  # fmt: skip
    if name in classes:
        config_cls, cls = classes[name]
        config = config_cls(**common)
    else:
        raise ValueError(f"unknown builtin model {name!r}; choose one of {BUILTIN_MODELS}")
    state = torch.random.get_rng_state()
    torch.manual_seed(_BASE_SEED)
    try:
        model = cls(config)
    finally:
        torch.random.set_rng_state(state)
    return model.to(dtype or torch.float32)  # type: ignore[arg-type]  # transformers' stub wraps .to oddly


def _builtin_name(spec: ModelSpec) -> str | None:
    return spec.path.removeprefix("builtin:") if spec.path.startswith("builtin:") else None


def check_model_spec(spec: ModelSpec) -> list[str]:
    """What can be told from model.path as written, without looking anything up (a job's remote model path
    gets only this; `resolve_model` does the rest)."""
    name = _builtin_name(spec)
    if name is not None and name not in BUILTIN_MODELS:
        return [
            f"model.path: unknown builtin model {spec.path!r}; builtins: "
            + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS)
        ]
    if name is None and "://" in spec.path:
        return [
            f"model.path: {spec.path}: models are not read from URIs; give a builtin, a local model directory "
            "(at the same path on every worker) or a hub id like org/name"
        ]
    p = Path(spec.path)
    if name is None and _is_dir(p):
        return _folder_problems(spec, p)
    if name is None and _looks_local(spec.path):  # a hub id is "name" or "org/name"
        return [f"model.path: no folder `{spec.path}`; give a local model folder holding config.json, or a hub id"]
    return []


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def resolve_model(spec: ModelSpec, base: Path | None = None) -> list[str]:
    """Where model.path points, before Ray starts: a builtin, a local folder holding config.json and a tokenizer,
    or a hub id in the local Hugging Face cache or on the hub (honouring HF_HUB_OFFLINE). When none holds, one
    line names what was looked for where, so a typo'd folder is not taken for a hub id and failed in every cell.

    `base` is the matrix's folder (relative folders are read from there, then from the current folder)."""
    if _builtin_name(spec) is not None or "://" in spec.path:
        return check_model_spec(spec)
    base = Path(base) if base is not None else Path.cwd()
    p = Path(spec.path).expanduser()
    folder = next((d for d in ([p] if p.is_absolute() else [base / p, Path.cwd() / p]) if _is_dir(d)), None)
    if folder is not None:
        return _folder_problems(spec, folder)
    here = f"no folder `{spec.path}`" + (
        "" if p.is_absolute() else f" next to the matrix ({base})" + (" or here" if base != Path.cwd() else "")
    )
    hint = _did_you_mean(p, base)
    if _looks_local(spec.path) or not _is_repo_id(spec.path):
        return [f"model.path: {here}{hint}; give a local model folder holding config.json, or a hub id like org/name"]
    return _hub_problems(spec, here, hint)


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:  # a name too long for the filesystem is not a folder
        return False


def _looks_local(path: str) -> bool:
    return Path(path).is_absolute() or path.startswith((".", "~")) or path.count("/") > 1 or "\\" in path


def _is_repo_id(path: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


def _did_you_mean(p: Path, base: Path) -> str:
    """A close folder name next to the matrix or here, for the typo'd path (tiny-qwen → tiny-qwen-dir)."""
    import difflib
    import itertools

    names = set()
    for d in {(base / p).parent, (Path.cwd() / p).parent}:
        try:
            names |= {e.name for e in itertools.islice(os.scandir(d), 5000) if e.is_dir()}
        except OSError:
            continue
    close = difflib.get_close_matches(p.name, sorted(names), n=1, cutoff=0.6)
    return f" (did you mean `{(p.parent / close[0]).as_posix()}`?)" if close else ""


def _folder_problems(spec: ModelSpec, folder: Path) -> list[str]:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return [f"model.path: {spec.path}: not a Hugging Face model folder (no config.json)"]
    remote = _remote_code_problems(spec, cfg.read_text(errors="replace"))
    if remote or any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return remote
    return [
        f"model.path: {spec.path}: holds config.json but no tokenizer ({', '.join(_TOKENIZER_FILES[:3])}, ...); "
        "save the model's tokenizer there too (tokenizer.save_pretrained(folder))"
    ]


def _remote_code_problems(spec: ModelSpec, config_text: str) -> list[str]:
    if '"auto_map"' in config_text and not spec.trust_remote_code:
        return [
            f"model.path: {spec.path}: this model ships its own code (auto_map in config.json); "
            "set model.trust_remote_code: true only if you trust it"
        ]
    return []


def _hub_problems(spec: ModelSpec, here: str, hint: str) -> list[str]:
    """A hub id: found in the local cache, or (when online) on the hub. No download here but config.json's."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(spec.path, "config.json", revision=spec.revision)
    if isinstance(cached, str):
        return _remote_code_problems(spec, Path(cached).read_text(errors="replace"))
    cache = constants.HF_HUB_CACHE
    if constants.is_offline_mode():
        return [
            f"model.path: {here} and `{spec.path}` is not in the Hugging Face cache ({cache}), the only place "
            f"ablate looks while HF_HUB_OFFLINE is set{hint}; give a local model folder holding config.json, or "
            f"download the model first (`hf download {spec.path}`)"
        ]
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(spec.path, revision=spec.revision, timeout=10)  # one request, no retries
    except RevisionNotFoundError:
        return [f"model.revision: `{spec.revision}` is not a branch, tag or commit of {spec.path} on the hub"]
    except GatedRepoError:
        return [f"model.path: {spec.path} is gated on the hub; accept its terms there and set HF_TOKEN"]
    except RepositoryNotFoundError:
        return [
            f"model.path: {here} and no model `{spec.path}` on the Hugging Face hub{hint}; check the spelling "
            "(a private model needs HF_TOKEN)"
        ]
    except Exception as e:  # noqa: BLE001 - DNS, refused connection, timeout, proxy: the hub is out of reach
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        return [
            f"model.path: {here}, `{spec.path}` is not in the Hugging Face cache ({cache}) and the hub cannot be "
            f"reached ({reason}){hint}; give a local model folder holding config.json, or a hub id with network "
            "access"
        ]
    files = {s.rfilename for s in info.siblings or []}
    if files and "config.json" not in files:
        return [f"model.path: {spec.path} on the hub has no config.json; it is not a transformers model"]
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
    except (OSError, ValueError, TypeError, KeyError) as e:  # no tokenizer files, a broken one, an unknown class
        reason = " ".join(str(e).split())[:300]
        raise UserError([f"model.path: {spec.path}: could not load a tokenizer ({reason})"]) from None
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
