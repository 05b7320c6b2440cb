"""Bounded, safe YAML: what `yaml.safe_load` does, in two steps, with limits checked in between.

A matrix file is often shared or generated, so reading one must answer in well under a second whatever it
holds. `yaml.safe_load` refuses Python tags but not input built to expand while it loads: aliases of aliases
(a "billion laughs" file of 1 KB composes to a few dozen nodes and expands to 10⁹ values), merge keys that
double at each level, nesting thousands of levels deep, or a 100 MB scalar. So this module composes the
node graph (the safe loader's parser, libyaml's when installed: about 10× faster), measures it, and only
then constructs the Python values, with the same SafeConstructor `yaml.safe_load` uses. Limits (README,
"Matrix reference"):

- the file: at most MAX_BYTES;
- values after alias expansion: at most MAX_VALUES (a 10,000-cell matrix needs a few dozen);
- nesting: at most MAX_DEPTH levels (a matrix needs 4: train → lora → targets → item);
- one scalar (a key or a value): at most MAX_SCALAR characters (a path fits in 4,096);
- tags: plain YAML only (mappings, lists, strings, numbers, true/false, null, merge keys `<<`).
  Unquoted dates (2024-02-30) are read as text, as YAML 1.2 does, so they cannot fail to construct.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import UserError

MAX_BYTES = 256 * 1024
MAX_VALUES = 100_000
MAX_DEPTH = 20
MAX_SCALAR = 4096

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the same safe constructor, a C parser when available
_CORE = "tag:yaml.org,2002:"
_PLAIN = {_CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge")}
_PLAIN_YAML = "ablate reads plain YAML only (mappings, lists, strings, numbers, true/false, null)"


def _tag(node: yaml.Node) -> str:
    return "!!" + node.tag.removeprefix(_CORE) if node.tag.startswith(_CORE) else node.tag


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for kv in node.value for n in kv]
    return []


def _at(source: str, node: yaml.Node) -> str:
    return f"{source}:{node.start_mark.line + 1}"


def _scalar_problem(node: yaml.ScalarNode, source: str) -> str | None:
    if node.tag == _CORE + "timestamp":
        node.tag = _CORE + "str"  # YAML 1.2: a date is text (2024-02-30 would fail to construct)
    if len(node.value) > MAX_SCALAR:
        return (
            f"{_at(source, node)}: a value of {len(node.value):,} characters; ablate reads values of at most "
            f"{MAX_SCALAR:,} characters (a path or a name)"
        )
    if node.tag not in _PLAIN:
        return f"{_at(source, node)}: YAML tag {_tag(node)} is not allowed; {_PLAIN_YAML}"
    return None


def shape_problems(root: yaml.Node, source: str) -> list[str]:
    """Recursive aliases, expansion, depth, long scalars and tags, from the node graph alone.

    One pass over the *distinct* nodes (aliases share their node), so its cost is the file's size, never the
    expansion's: each node's expanded size and height are computed once, from its children's."""
    if isinstance(root, yaml.ScalarNode):
        problem = _scalar_problem(root, source)
        return [problem] if problem else []
    size: dict[int, int] = {}  # expanded number of values under a collection node (itself included)
    height: dict[int, int] = {}
    on_path: set[int] = set()
    scalars = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    deep: yaml.Node | None = None
    while stack:
        node, finished = stack.pop()
        k = id(node)
        kids = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
        if finished:
            on_path.discard(k)
            n, h = 1, 0
            for c in kids:
                if isinstance(c, yaml.ScalarNode):
                    n, h = n + 1, max(h, 1)
                else:
                    n, h = n + size[id(c)], max(h, height[id(c)])
            size[k], height[k] = n, h + 1
            if h + 1 > MAX_DEPTH and deep is None:
                deep = node  # the innermost node too deep; reported unless the expansion is the bigger problem
            continue
        if k in size:
            continue
        if k in on_path:  # an alias inside the node it names
            return [f"{_at(source, node)}: a recursive alias (an anchor used inside itself); {_PLAIN_YAML}"]
        if node.tag not in _PLAIN:
            return [f"{_at(source, node)}: YAML tag {_tag(node)} is not allowed; {_PLAIN_YAML}"]
        on_path.add(k)
        stack.append((node, True))
        for c in kids:
            if isinstance(c, yaml.ScalarNode):
                scalars += 1  # counted per appearance: an upper bound on distinct scalars, enough for the hint
                problem = _scalar_problem(c, source)
                if problem:
                    return [problem]
            elif id(c) not in size:
                stack.append((c, False))
    total = size[id(root)]
    if total <= MAX_VALUES:
        if deep is not None:
            return [
                f"{_at(source, deep)}: values nested more than {MAX_DEPTH} levels deep; a matrix needs at most 4 "
                "(e.g. train → lora → targets → item)"
            ]
        return []
    # Name the top-level key that expands the most, so the message points at the line to fix.
    where, what = source, "the file"
    if isinstance(root, yaml.MappingNode) and root.value:
        key, val = max(root.value, key=lambda kv: size.get(id(kv[1]), 1))
        where, what = _at(source, key), f"{key.value} ({size.get(id(val), 1):,} values)"
    if total > len(size) + scalars:
        how, fix = "expands to {:,} values through anchors and aliases (&name / *name)", "write the values out"
    else:
        how, fix = "holds {:,} values", "a matrix lists axes, not data"
    return [
        f"{where}: the matrix {how.format(total)}, most of them in {what}; a matrix file may hold at most "
        f"{MAX_VALUES:,} (a 10,000-cell matrix needs a few dozen); {fix}"
    ]


def duplicate_keys(node: yaml.Node | None, source: str, path: tuple = ()) -> list[str]:
    """PyYAML keeps the last of two equal keys without a word; a matrix may not repeat a key.

    Runs on the composed graph before construction, which rewrites merge keys (`<<`) in place."""
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key is not None and key != "<<" and key in seen:
                field = ".".join(map(str, (*path, key)))
                out.append(
                    f"{source}:{k.start_mark.line + 1}: {field}: duplicate key (first at line {seen[key]}); "
                    "each key may appear once in a mapping"
                )
            elif key is not None:
                seen[key] = k.start_mark.line + 1
            out += duplicate_keys(v, source, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += duplicate_keys(v, source, (*path, i))
    return out


def _not_yaml(source: str, e: yaml.YAMLError | RecursionError) -> UserError:
    if isinstance(e, RecursionError) or "nesting depth" in str(e):  # the pure-Python parser, or libyaml's limit
        return UserError([f"{source}: values nested more than {MAX_DEPTH} levels deep; a matrix needs at most 4"])
    mark = getattr(e, "problem_mark", None)
    line = f":{mark.line + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return UserError(
        [
            f"{source}{line}: not valid YAML: {problem}; a matrix is a YAML mapping "
            "(name, model, data, matrix, ...) in plain block or flow style"
        ]
    )


def _unreadable_scalar(root: yaml.Node, source: str, e: Exception) -> UserError:
    """An explicit !!int / !!float on text that is not one: find the scalar that fails, for its line."""
    probe = yaml.constructor.SafeConstructor()  # a fresh one: the failed construction left state behind
    stack, seen = [root], set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.ScalarNode):
            try:
                probe.construct_object(n)
            except Exception as bad:  # noqa: BLE001 - any constructor failure is the user's value
                return UserError([f"{_at(source, n)}: {n.value!r} cannot be read as {_tag(n)} ({bad}); {_PLAIN_YAML}"])
        stack.extend(_children(n))
    return UserError([f"{source}: a value cannot be read ({e}); {_PLAIN_YAML}"])


def load(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """The Python value of one YAML document and its node graph (for file:line messages), or one UserError."""
    if len(text) > MAX_BYTES:
        raise UserError(
            [
                f"{source}: {len(text.encode()):,} bytes; a matrix file is at most {MAX_BYTES // 1024} KiB "
                "(a matrix lists axes, not data; put data in JSONL files)"
            ]
        )
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except (yaml.YAMLError, RecursionError) as e:
            raise _not_yaml(source, e) from None
        if root is None:
            return None, None
        problems = shape_problems(root, source) or duplicate_keys(root, source)
        if problems:
            raise UserError(problems)
        try:
            return loader.construct_document(root), root
        except yaml.constructor.ConstructorError as e:
            mark = e.problem_mark or e.context_mark
            line = f":{mark.line + 1}" if mark else ""
            raise UserError([f"{source}{line}: {e.problem}; {_PLAIN_YAML}"]) from None
        except (ValueError, TypeError, OverflowError) as e:
            raise _unreadable_scalar(root, source, e) from None
    finally:
        loader.dispose()
