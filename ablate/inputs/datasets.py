"""Preference pairs from the tables teams already have: Parquet and Arrow files, `datasets` save_to_disk
directories, and Hugging Face datasets (`{hf: org/name, split: train_prefs, revision: …}`).

Both TRL formats are read (standard strings and conversational message lists) and so is TRL's implicit-prompt
form (no `prompt` column: the shared prefix of chosen and rejected is the prompt). Rows come out as the same
dicts a JSONL file with the same pairs gives, so the data content hash and every cell id are the same whatever
the format. Every problem names the source and the column or row, with the JSONL loader's wording for rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from ..results.storage import is_uri
from ..schema import DatasetSource
from .rows import Rows, _display, _grouped, _row_problems

TABLE_SUFFIXES = (".parquet", ".arrow", ".feather")
_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes


def is_table_source(source: Any) -> bool:
    """True for what this module reads: a {hf:/path:} mapping, a Parquet/Arrow file or URI, a save_to_disk dir."""
    if isinstance(source, DatasetSource):
        return True
    if not isinstance(source, str) or source.startswith("builtin:"):
        return False
    if source.split("?", 1)[0].lower().endswith(TABLE_SUFFIXES):
        return True
    return not is_uri(source) and _is_saved_dataset(Path(source))


def _is_saved_dataset(p: Path) -> bool:
    try:
        return p.is_dir() and any((p / m).is_file() for m in _DISK_MARKERS)
    except OSError:  # a name too long for the filesystem: not a dataset folder; data.py says what is wrong
        return False


def load_table_rows(source: DatasetSource | str, split: str) -> Rows:
    """The rows of one table source as `Rows` (file and row number kept for later messages)."""
    table, shown = _read(source, split)
    return table_rows(table, shown, split)


# -- reading ------------------------------------------------------------------------------------------------


def _read(source: DatasetSource | str, field: str):
    """(pyarrow Table, how to name the source in messages)."""
    if isinstance(source, DatasetSource) and source.hf is not None:
        return _from_hub(source, field), source.display()
    path = source.path if isinstance(source, DatasetSource) else source
    assert path is not None  # the schema requires `path` when `hf` is absent
    which = source.split if isinstance(source, DatasetSource) else None
    if path.split("?", 1)[0].lower().endswith(".jsonl"):
        raise UserError([f"data.{field}: {path}: a JSONL file is given as a plain path (data.{field}: {path})"])
    shown = source.display() if isinstance(source, DatasetSource) else _display(path)
    if not is_uri(path) and Path(path).is_dir():
        if not _is_saved_dataset(Path(path)):
            raise UserError(
                [
                    f"data.{field}: {path}: is a directory without dataset_info.json or dataset_dict.json; "
                    "give a datasets save_to_disk directory, or a JSONL, Parquet or Arrow file"
                ]
            )
        return _from_disk(path, which, field, shown), shown
    if which is not None:
        raise UserError([f"data.{field}.split: {shown}: a file has no splits; split applies to a dataset directory"])
    return _from_file(path, field, shown), shown


def _from_file(path: str, field: str, shown: str):
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    try:
        if is_uri(path):
            fs, where = pafs.FileSystem.from_uri(path)
        else:
            fs, where = pafs.LocalFileSystem(), str(Path(path).absolute())
        if fs.get_file_info(where).type == pafs.FileType.NotFound:
            raise UserError([f"data.{field}: {shown}: no such file (expected a Parquet or Arrow table)"])
        if path.split("?", 1)[0].lower().endswith(".parquet"):
            return pq.read_table(where, filesystem=fs)
        with fs.open_input_file(where) as f:
            try:  # the Arrow IPC file format (pyarrow.feather, Table.to_file) ...
                return pa.ipc.open_file(f).read_all()
            except pa.ArrowInvalid:
                f.seek(0)  # ... or the stream format (the `datasets` cache files)
                return pa.ipc.open_stream(f).read_all()
    except UserError:
        raise
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError: not Parquet/Arrow, truncated, unreadable
        raise UserError([f"data.{field}: {shown}: cannot read it as a table ({_one_line(e)})"]) from None


def _datasets(field: str):
    try:
        import datasets
    except ImportError:
        raise UserError(
            [f"data.{field}: reading a dataset needs the `datasets` package; pip install 'ablate[datasets]'"]
        ) from None
    datasets.disable_progress_bars()  # the driver prints its own progress
    return datasets


def _pick_split(d, which: str | None, field: str, shown: str):
    """One split of a DatasetDict: the one named, or the only one."""
    names = list(d.keys())
    if which is None and len(names) == 1:
        return d[names[0]]
    if which is None:
        raise UserError(
            [f"data.{field}: {shown} has the splits {names}; choose one with split: (e.g. split: {names[0]})"]
        )
    if which not in d:
        raise UserError([f"data.{field}.split: {which!r} is not a split of {shown}; allowed: {', '.join(names)}"])
    return d[which]


def _from_disk(path: str, which: str | None, field: str, shown: str):
    ds = _datasets(field)
    try:
        d = ds.load_from_disk(path)
    except (OSError, ValueError) as e:
        raise UserError([f"data.{field}: {shown}: cannot load the saved dataset ({_one_line(e)})"]) from None
    if isinstance(d, ds.DatasetDict):
        d = _pick_split(d, which, field, shown)
    elif which is not None:
        raise UserError([f"data.{field}.split: {shown} is one dataset, not a dict of splits; remove split"])
    return d.with_format("arrow")[:]


def _from_hub(src: DatasetSource, field: str):
    ds = _datasets(field)
    shown = src.display()
    try:
        d = ds.load_dataset(src.hf, split=src.split, revision=src.revision)
    except ValueError as e:  # an unknown split names the ones there are
        raise UserError([f"data.{field}.split: {shown}: {_one_line(e)}"]) from None
    except Exception as e:  # noqa: BLE001 - not found, no network, gated, bad revision: one line, no traceback
        raise UserError(
            [
                f"data.{field}: {shown}: cannot load the dataset ({type(e).__name__}: {_one_line(e)}); check the id, "
                "the revision, network access to the hub (or HF_DATASETS_OFFLINE=1 with a filled cache) and HF_TOKEN "
                "for gated datasets"
            ]
        ) from None
    if isinstance(d, ds.DatasetDict):
        d = _pick_split(d, None, field, shown)
    return d.with_format("arrow")[:]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


# -- columns and rows ---------------------------------------------------------------------------------------

_TEXT = ("string", "large_string", "string_view")
_ALLOWED = "text (a string column) or a list of {role, content} messages"


def _column_kind(t) -> str | None:
    """'text', 'messages', or None when a column holds neither."""
    import pyarrow.types as pt

    if str(t) in _TEXT:
        return "text"
    if (pt.is_list(t) or pt.is_large_list(t)) and pt.is_struct(t.value_type):
        names = {t.value_type.field(i).name for i in range(t.value_type.num_fields)}
        return "messages" if {"role", "content"} <= names else None
    return None


def table_rows(table, shown: str, field: str) -> Rows:
    """Check a table's columns, then turn it into rows with the JSONL loader's per-row checks."""
    cols = set(table.column_names)
    implicit = "prompt" not in cols
    need = ["chosen", "rejected"] + ([] if implicit else ["prompt"])
    missing = [c for c in ("prompt", "chosen", "rejected") if c in need and c not in cols]
    if missing:
        raise UserError(
            [
                f"data.{field}: {shown}: missing column(s) {missing}; a table needs chosen and rejected columns, and "
                "prompt unless the prompt is the shared start of chosen and rejected (TRL's implicit-prompt form); "
                f"columns here: {sorted(cols)}"
            ]
        )
    kinds = {c: _column_kind(table.schema.field(c).type) for c in need}
    problems = [
        f"data.{field}: {shown}: column {c}: {table.schema.field(c).type} is not {_ALLOWED}"
        for c, k in kinds.items()
        if k is None
    ]
    if not problems and len(set(kinds.values())) > 1:
        mix = ", ".join(f"{c}: {k}" for c, k in kinds.items())
        problems.append(
            f"data.{field}: {shown}: columns mix text and message lists ({mix}); "
            "use one TRL format: all strings, or all lists of {role, content} messages"
        )
    if problems:
        raise UserError(problems)
    # Scalar columns ride along (data.heldout.stratify may name one); nested ones other than the pair are dropped.
    keep = [
        c for c in table.column_names if c in need or (_scalar(table.schema.field(c).type) and not c.startswith("__"))
    ]
    rows, lines = [], []
    found: dict[str, list[tuple[int, str]]] = {}  # kind → (row, message) of every row that has it
    for i, raw in enumerate(table.select(keep).to_pylist(), 1):
        row = {k: _clean(v) for k, v in raw.items()}
        if implicit:
            if isinstance(row["chosen"], (str, list)) and isinstance(row["rejected"], (str, list)):
                row.update(extract_prompt(row["chosen"], row["rejected"]))
            else:
                row["prompt"] = ""  # the null is reported below, on its own column
            row = {"prompt": row.pop("prompt"), **row}
        for kind, msg in _row_problems(row):  # one line per kind of problem, as for JSONL
            found.setdefault(kind, []).append((i, msg))
        rows.append(row)
        lines.append(i)
    problems += [_grouped(shown, hits) for hits in found.values()]
    if not rows and not problems:
        problems.append(f"{shown}: data.{field}: no pairs; the {field} set needs at least one row")
    if problems:
        raise UserError(problems)
    return Rows(rows, shown, lines)


def _scalar(t) -> bool:
    import pyarrow.types as pt

    return bool(pt.is_integer(t) or pt.is_floating(t) or pt.is_boolean(t) or str(t) in _TEXT)


def _clean(v: Any) -> Any:
    """Arrow structs have every field in every row, null where a message lacks it; JSONL simply leaves the key
    out. Dropping null keys makes a message the same dict (and so the same hash) in both."""
    if isinstance(v, list):
        return [{k: x for k, x in m.items() if x is not None} if isinstance(m, dict) else m for m in v]
    return v


def extract_prompt(chosen, rejected) -> dict:
    """TRL's implicit prompt (trl.data_utils.extract_prompt): the longest shared start of chosen and rejected
    (characters, or whole messages); a space just before the split point goes to the completions."""
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if idx > 0 and chosen[idx - 1] == " ":  # TRL keeps the space with the completion
                idx -= 1
            break
    return {"prompt": chosen[:idx], "chosen": chosen[idx:], "rejected": rejected[idx:]}
