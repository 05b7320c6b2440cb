"""Reading a matrix file: safe YAML loading, and every problem reported at once with file:line.

Each message names the file, the line, the field, the bad value and what is allowed, before Ray
starts or a model loads. Relative data and model paths are resolved against the matrix's folder.
The schema itself is ablate/schema.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .. import objectives
from ..errors import UserError
from ..schema import DatasetSource, Located, MatrixSpec, RewardModelJudge, yaml_number_hint
from . import safeyaml
from .cells import selection_problems


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


def _allowed_fields(loc: tuple, tag: str | None = None) -> list[str] | None:
    """The field names allowed at the parent of `loc`, for 'unknown field' messages (`tag`: the union member)."""
    model: Any = MatrixSpec
    for part in loc[:-1]:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        ann = field.annotation
        members = [a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")]
        model = next(
            (a for a in members if getattr(a, "__origin__", a).__name__ == tag), members[0] if members else ann
        )
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
            (o["properties"][key] for o in options if not isinstance(part, int) and key in o.get("properties", {})),
            None,
        )
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
        lo = (
            ("[", s["minimum"]) if "minimum" in s else ("(", s["exclusiveMinimum"]) if "exclusiveMinimum" in s else None
        )
        hi = (
            (s["maximum"], "]") if "maximum" in s else (s["exclusiveMaximum"], ")") if "exclusiveMaximum" in s else None
        )
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
_ADD_ALLOWED = {
    "missing",
    "int_parsing",
    "int_type",
    "int_from_float",
    "float_parsing",
    "float_type",
    "bool_parsing",
    "bool_type",
    "string_type",
    "list_type",
    "dict_type",
    "model_type",
    "model_attributes_type",
    "finite_number",
}


def _name(loc: tuple) -> str:
    return ".".join(str(p) if p != "lambda_" else "lambda" for p in loc) or "(top level)"


def located(problems: list[tuple[tuple, str]], source: str, root: yaml.Node | None) -> list[str]:
    """'file:line: field: message' for problems given as (pydantic location, message)."""
    out = []
    for loc, msg in problems:
        line = _line_of(root, loc)
        out.append(f"{source}:{line}: {_name(loc)}: {msg}" if line else f"{source}: {_name(loc)}: {msg}")
    return out


def locate(matrix: str | Path | MatrixSpec, problems: list[tuple[tuple, str]]) -> list[str]:
    """'file:line: field: message' for problems found after loading (against the model, say); a matrix built in
    code has no file, so its problems name the matrix and the field."""
    if not problems:
        return []
    if isinstance(matrix, MatrixSpec):
        return [f"{matrix.name}: {_name(loc)}: {msg}" for loc, msg in problems]
    _, root = safeyaml.load(Path(matrix).read_text(encoding="utf-8"), str(matrix))  # loaded once already: it is sound
    return located(problems, str(matrix), root)


def format_validation_error(err: ValidationError, source: str, root: yaml.Node | None) -> list[str]:
    def where(loc: tuple) -> str:
        line = _line_of(root, loc)
        return f"{source}:{line}" if line else source

    name = _name

    problems, union_seen = [], set()
    for e in err.errors():
        # Union members add their own names (e.g. 'BuiltinData', 'str') to the location; drop them.
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and (p[:1].isupper() or p in ("str",))))
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, Located):  # cross-field checks name the fields they are about
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
            tag = next((p for p in e["loc"] if isinstance(p, str) and p[:1].isupper()), None)  # tagged union member
            here = _allowed_fields(loc, tag)
            msg = "unknown field" + (f"; allowed here: {', '.join(here)}" if here else "")
            owners = objectives.owners(str(loc[-1]))
            if len(loc) == 3 and loc[0] == "objectives" and owners:
                msg += f" ({loc[-1]} belongs to {', '.join(owners)})"
        elif e["type"] == "missing":
            msg = "required field is missing"
        quiet = e["type"] in ("missing", "extra_forbidden") or isinstance(e["input"], dict)  # not a whole mapping
        value = "" if quiet else f" (got {e['input']!r})"
        if len(value) > 120:
            value = value[:117] + "...)"
        allowed = _describe(_schema_at(loc)) if e["type"] in _ADD_ALLOWED else ""
        hint = yaml_number_hint(e["input"]) if e["type"] in ("int_parsing", "float_parsing") else ""
        problems.append(f"{where(loc)}: {field}: {msg}{value}" + (f"; allowed: {allowed}" if allowed else "") + hint)
    # Unions report each member's failure; keep one message per location and text.
    return list(dict.fromkeys(problems))


def parse_matrix(text: str, source: str = "<matrix>") -> MatrixSpec:
    data, root = safeyaml.load(text, source)  # yaml.safe_load with limits: any file answers fast
    if not isinstance(data, dict):
        got = "empty" if data is None else f"a {type(data).__name__}"
        raise UserError([f"{source}: a matrix must be a YAML mapping with name, model, data, matrix, ... (got {got})"])
    try:
        spec = MatrixSpec.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source, root)) from None
    problems = selection_problems(spec)
    if problems:
        raise UserError(located(problems, source, root))
    return spec


def load_matrix(path: str | Path) -> MatrixSpec:
    """Read and validate a matrix file. Relative data paths are resolved against the file's folder."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir() and not path.is_file():  # /dev/zero, a FIFO: reading never ends
            raise UserError([f"{path}: not a regular file; give the path of a matrix YAML file"])
        with path.open("rb") as f:
            raw = f.read(safeyaml.MAX_BYTES + 1)  # a bigger file is refused without reading it all
            size = path.stat().st_size
    except FileNotFoundError:
        raise UserError([f"{path}: no such matrix file; give the path of a matrix YAML file"]) from None
    except IsADirectoryError:
        raise UserError([f"{path}: is a directory; give the path of a matrix YAML file"]) from None
    except PermissionError:
        raise UserError([f"{path}: permission denied; the matrix file must be readable"]) from None
    except OSError as e:  # a name too long, a loop of links, ...
        raise UserError([f"{path}: cannot read the matrix file ({e.strerror or e})"]) from None
    if len(raw) > safeyaml.MAX_BYTES:
        raise UserError(
            [
                f"{path}: {size:,} bytes; a matrix file is at most {safeyaml.MAX_BYTES // 1024} KiB "
                "(a matrix lists axes, not data; put data in JSONL files)"
            ]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError([f"{path}:{line}: not UTF-8 text (byte {e.start}); save it as UTF-8"]) from None
    spec = parse_matrix(text, str(path))
    return _resolve_paths(spec, path.parent)


def _resolve_paths(spec: MatrixSpec, base: Path) -> MatrixSpec:
    def fix(p):
        if isinstance(p, DatasetSource):
            return p.resolved(base)
        if isinstance(p, str) and not p.startswith("builtin:") and "://" not in p and not Path(p).is_absolute():
            return str((base / p).resolve())
        return p

    data = spec.data.model_copy(update={"train": fix(spec.data.train), "heldout": fix(spec.data.heldout)})
    model = spec.model
    if not model.path.startswith("builtin:") and not Path(model.path).is_absolute():
        # a folder next to the matrix, else one in the current folder: absolute, so Ray workers find it too
        folder = next((d for d in (base / model.path, Path(model.path)) if _is_dir(d)), None)
        if folder is not None:
            model = model.model_copy(update={"path": str(folder.resolve())})
    judge = spec.judge
    if isinstance(judge, RewardModelJudge) and _is_dir(base / judge.reward_model):  # a local reward model
        judge = judge.model_copy(update={"reward_model": str((base / judge.reward_model).resolve())})
    return spec.model_copy(update={"data": data, "model": model, "judge": judge})


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:  # a path too long for the filesystem is not a folder
        return False
