"""One preference row: its shape, where it came from (file:line), and what can be wrong with it — shared by every
source (JSONL in data.py, tables and `datasets` in datasets.py)."""

from __future__ import annotations

from typing import Any

from ..results.storage import is_uri

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


_LAYOUTS = (
    "a row is standard (prompt, chosen and rejected all text) or conversational (all three message lists), as in TRL"
)


def _row_problems(row: Any) -> list[tuple[str, str]]:
    """(kind, message) for each problem of one row; rows with the same kind are reported on one line."""
    if not isinstance(row, dict):
        return [("not_object", "each line must be a JSON object with prompt, chosen, rejected")]
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
    if missing:
        return [(f"missing {missing}", f"missing field(s) {missing}; each row needs prompt, chosen, rejected")]
    out = []
    for k in ("prompt", "chosen", "rejected"):
        v = row[k]
        if isinstance(v, list):
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in v):
                out.append((f"messages {k}", f"{k}: a message list must hold {{role, content}} objects"))
            elif k != "prompt" and not v:
                out.append((f"empty {k}", f"{k}: empty completion; a completion must be non-empty text or messages"))
        elif not isinstance(v, str):
            out.append((f"type {k}", f"{k}: must be a string or a list of messages, got {type(v).__name__}"))
        elif k != "prompt" and not v.strip():
            out.append((f"empty {k}", f"{k}: empty completion; a completion must be non-empty text"))
    if out:
        return out
    lists = [k for k in ("prompt", "chosen", "rejected") if isinstance(row[k], list)]
    if lists and len(lists) < 3:  # TRL and the chat template take one layout per row, never a mix
        texts = [k for k in ("prompt", "chosen", "rejected") if k not in lists]
        return [
            (
                f"mixed {lists}",
                f"{', '.join(lists)}: message list(s) but {', '.join(texts)}: text; {_LAYOUTS}",
            )
        ]
    if row["chosen"] == row["rejected"]:
        return [("same", "chosen == rejected; a pair must differ")]
    return []


def _grouped(shown: str, hits: list[tuple[int, str]]) -> str:
    """One line per kind of problem: the first row's message, then how many rows have it and where the first are."""
    (first, msg), n = hits[0], len(hits)
    if n == 1:
        return f"{shown}:{first}: {msg}"
    where = ", ".join(str(line) for line, _ in hits[:3]) + (", …" if n > 3 else "")
    return f"{shown}:{first}: {msg} [{n} rows: lines {where}]"
