"""Preference pairs as rows: load (builtin, local JSONL or a URI), check every row, hash, and check leakage.

Every problem names the file and line. Tokenizing and truncating the rows is ablate/inputs/tokenize.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..results.storage import is_uri
from ..schema import BuiltinData
from .letters import builtin_rows

Row = dict[str, Any]


class Rows(list):
    """Rows read from a file, remembering the file and each row's line so later checks can say file:line.

    A plain list in every other respect (builtin data is a plain list)."""

    def __init__(self, rows=(), source: str | None = None, lines: list[int] | None = None):
        super().__init__(rows)
        self.source = source
        self.lines = list(lines or [])


def row_where(rows: list[Row], i: int) -> str:
    """'file:line' of the 0-based row i when the rows came from a file, else 'row i+1'."""
    if isinstance(rows, Rows) and rows.source and i < len(rows.lines):
        return f"{rows.source}:{rows.lines[i]}"
    return f"row {i + 1}"


def _display(source: str) -> str:
    """A URI without its query string or user:password@ (either may carry keys); a path as given."""
    if not is_uri(source):
        return source
    scheme, _, rest = source.split("?", 1)[0].partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rsplit('@', 1)[-1]}{slash}{path}"


_EXPECTED = "expected a JSONL file of prompt/chosen/rejected rows"


def _read_bytes(source: str, split: str) -> bytes:
    """The file's bytes, from a local path or a pyarrow.fs URI; one-line UserErrors for what goes wrong."""
    shown = _display(source)
    if not is_uri(source):
        path = Path(source)
        if path.is_dir():
            raise UserError([f"data.{split}: {source}: is a directory ({_EXPECTED})"])
        if not path.is_file():
            raise UserError([f"data.{split}: {source}: no such file ({_EXPECTED})"])
        try:
            return path.read_bytes()
        except OSError as e:
            raise UserError([f"data.{split}: {source}: cannot read ({e.strerror or e})"]) from None
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(source)
    except (ValueError, OSError, NotImplementedError) as e:  # ArrowInvalid is a ValueError
        raise UserError(
            [
                f"data.{split}: {shown}: not a URI ablate can read ({_first_line(e, source)}); use a "
                "local path or s3://, gs://, file:///absolute/path"
            ]
        ) from None
    try:
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.NotFound:
            raise UserError([f"data.{split}: {shown}: no such object ({_EXPECTED})"])
        if kind == pafs.FileType.Directory:
            raise UserError([f"data.{split}: {shown}: is a directory ({_EXPECTED})"])
        with fs.open_input_stream(path) as f:
            return f.read()
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError([f"data.{split}: {shown}: no such object ({_EXPECTED})"]) from None
    except (OSError, ValueError) as e:  # unreachable endpoint, refused credentials, ...
        raise UserError(
            [
                f"data.{split}: {shown}: cannot read ({_first_line(e, source)}); check the URI, the endpoint "
                "(AWS_ENDPOINT_URL or ?endpoint_override=) and the credentials in the environment"
            ]
        ) from None


def _first_line(e: BaseException, source: str) -> str:
    text = " ".join(str(e).replace(source, _display(source)).split())  # pyarrow errors can span lines; keep one
    return text if len(text) <= 300 else text[:297] + "..."


def load_rows(source: BuiltinData | str, split: str) -> list[Row]:
    """Raw rows, with every problem in the file collected into one UserError.

    `source` is builtin data, a local JSONL path or a URI pyarrow.fs understands (s3://, gs://, file://...);
    credentials and endpoints come from the environment the usual way (AWS_*, GOOGLE_APPLICATION_CREDENTIALS)
    or from the URI's query (e.g. s3://bucket/key.jsonl?endpoint_override=host:9000&scheme=http)."""
    if isinstance(source, BuiltinData):
        return builtin_rows(source, split)
    from .datasets import is_table_source, load_table_rows  # Parquet/Arrow/datasets/hub: ablate/inputs/datasets.py

    if is_table_source(source):
        return load_table_rows(source, split)
    if source.startswith("builtin:"):
        raise UserError([f"data.{split}: {source!r}: builtin data is written as a mapping, e.g. {{builtin: letters}}"])
    raw = _read_bytes(source, split)
    shown = _display(source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError([f"{shown}:{line}: data.{split}: not UTF-8 text (byte {e.start}); save it as UTF-8"]) from None
    rows, lines, problems = [], [], []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(
                f"{shown}:{i}: not valid JSON ({e.msg} at column {e.colno}); "
                "a JSONL file holds one JSON object per line"
            )
            continue
        problems += [f"{shown}:{i}: {p}" for p in _row_problems(row)]
        rows.append(row)
        lines.append(i)
    if not rows and not problems:
        problems.append(
            f"{shown}: data.{split}: no pairs; the {split} set needs at least one prompt/chosen/rejected line"
        )
    if problems:
        raise UserError(problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []))
    return Rows(rows, shown, lines)


def _row_problems(row: Any) -> list[str]:
    if not isinstance(row, dict):
        return ["each line must be a JSON object with prompt, chosen, rejected"]
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
    if missing:
        return [f"missing field(s) {missing}; each row needs prompt, chosen, rejected"]
    out = []
    for k in ("prompt", "chosen", "rejected"):
        v = row[k]
        if isinstance(v, list):
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in v):
                out.append(f"{k}: a message list must hold {{role, content}} objects")
            elif k != "prompt" and not v:
                out.append(f"{k}: empty completion; a completion must be non-empty text or messages")
        elif not isinstance(v, str):
            out.append(f"{k}: must be a string or a list of messages, got {type(v).__name__}")
        elif k != "prompt" and not v.strip():
            out.append(f"{k}: empty completion; a completion must be non-empty text")
    if not out and row["chosen"] == row["rejected"]:
        out.append("chosen == rejected; a pair must differ")
    return out


def rows_hash(rows: list[Row]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["prompt"], r["chosen"], r["rejected"]], sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def check_leakage(train: list[Row], heldout: list[Row], where: str) -> list[str]:
    key = lambda r: json.dumps([r["prompt"], r["chosen"], r["rejected"]], sort_keys=True)  # noqa: E731
    seen: dict[str, int] = {}
    for j, r in enumerate(train):
        seen.setdefault(key(r), j)
    dup = [(i, seen[key(r)]) for i, r in enumerate(heldout) if key(r) in seen]
    if dup:
        i, j = dup[0]
        return [
            f"{where}: {len(dup)} held-out pair(s) also in the training set (first: held-out {row_where(heldout, i)} "
            f"is training {row_where(train, j)}); held-out pairs must be unseen, so remove them from one set"
        ]
    return []
