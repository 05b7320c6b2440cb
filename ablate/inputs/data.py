"""Preference pairs as rows: load (builtin, local JSONL or a URI), check every row, hash, and check leakage.

Every problem names the file and line. Tokenizing and truncating the rows is ablate/inputs/tokenize.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import UserError
from ..results.storage import is_uri
from ..schema import BuiltinData
from .letters import builtin_rows
from .rows import Row, Rows, _display, _grouped, _row_problems, row_where  # noqa: F401 - row_where re-exported

_EXPECTED = "expected a JSONL file of prompt/chosen/rejected rows"


def _read_bytes(source: str, split: str) -> bytes:
    """The file's bytes, from a local path or a pyarrow.fs URI; one-line UserErrors for what goes wrong."""
    shown = _display(source)
    if not is_uri(source):
        path = Path(source)
        try:
            if path.is_dir():
                raise UserError([f"data.{split}: {source}: is a directory ({_EXPECTED})"])
            if not path.is_file():
                raise UserError([f"data.{split}: {source}: no such file ({_EXPECTED}){_did_you_mean(path)}"])
            return path.read_bytes()
        except OSError as e:  # unreadable, or a name too long for the filesystem
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


def _did_you_mean(path: Path) -> str:
    """A file with a close name in the same folder, for a typo'd data path."""
    import difflib

    try:
        names = sorted(p.name for p in path.parent.iterdir() if p.is_file())[:5000]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return f"; did you mean {path.parent / close[0]}?" if close else ""


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
    rows, lines = [], []
    found: dict[str, list[tuple[int, str]]] = {}  # kind → (line, message) of every row that has it
    for i, text_line in enumerate(text.splitlines(), 1):
        if not text_line.strip():
            continue
        try:
            row = json.loads(text_line)
        except json.JSONDecodeError as e:
            msg = f"not valid JSON ({e.msg} at column {e.colno}); a JSONL file holds one JSON object per line"
            found.setdefault("json", []).append((i, msg))
            continue
        for kind, msg in _row_problems(row):
            found.setdefault(kind, []).append((i, msg))
        rows.append(row)
        lines.append(i)
    problems = [_grouped(shown, hits) for hits in found.values()]
    if not rows and not problems:
        problems.append(
            f"{shown}: data.{split}: no pairs; the {split} set needs at least one prompt/chosen/rejected line"
        )
    if problems:
        raise UserError(problems)
    return Rows(rows, shown, lines)


# Conversational rows are tokenized without the extra EOS (and BOS) since issue 19; their hash carries that rule, so
# cells and cached reference log-probs made with the old token ids are never reused. Plain-text ids are unchanged.
_CONVERSATIONAL_RULE = b"conversational: template end of turn, no extra EOS/BOS\n"


def rows_hash(rows: list[Row]) -> str:
    h = hashlib.sha256()
    if any(isinstance(r["prompt"], list) for r in rows):
        h.update(_CONVERSATIONAL_RULE)
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
