"""A held-out set carved out of the training data (`data.heldout: {split_from_train: 0.1, seed: 0, stratify: length}`).

The unit of the split is the prompt: every pair of one prompt lands on the same side, so no held-out prompt was
trained on (and duplicated pairs can never leak). Strata are response-length quartiles (`length`) and/or the
values of named columns; each stratum gives up its share of prompts, rounded so the total is the requested
share. Which prompts go is a seeded permutation of the training rows as read, so the same file, fraction, seed
and strata give the same split on any machine; plan.json records it, held-out row indices included.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict

from ..errors import UserError
from ..schema import SplitFromTrain
from .data import Row, Rows, rows_hash

LENGTH = "length"


def _text_len(x) -> int:
    """Characters of a completion: the string, or the contents of its messages."""
    return len(x) if isinstance(x, str) else sum(len(str(m.get("content", ""))) for m in x)


def _quartiles(values: list[int]) -> list[str]:
    """Q1..Q4 by rank (ties broken by position), so four bins exist whenever there are four values."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    out = [""] * len(values)
    for rank, i in enumerate(order):
        out[i] = f"Q{rank * 4 // len(values) + 1}"
    return out


def _allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Held-out prompts per stratum: proportional, largest remainders, summing to `total`."""
    n = sum(sizes.values())
    exact = {k: total * v / n for k, v in sizes.items()}
    take = {k: math.floor(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - take[k]), k))[: total - sum(take.values())]:
        take[k] += 1
    return take


def split_from_train(rows: list[Row], spec: SplitFromTrain, source: str) -> tuple[Rows, Rows, dict]:
    """(train rows, held-out rows, the record for plan.json). Raises UserError naming data.heldout fields."""
    groups: dict[str, list[int]] = defaultdict(list)  # prompt -> row indices, in file order
    for i, r in enumerate(rows):
        groups[json.dumps(r["prompt"], sort_keys=True)].append(i)
    firsts = [idx[0] for idx in groups.values()]
    if len(firsts) < 2:
        raise UserError(
            [
                f"data.heldout.split_from_train: data.train ({source}) has {len(firsts)} distinct prompt(s); "
                "splitting needs at least 2 (one for each side)"
            ]
        )
    strata = [""] * len(firsts)
    columns = [s for s in spec.stratify or [] if s != LENGTH]
    for c in columns:
        if not any(c in rows[i] for i in firsts):
            have = sorted({k for i in firsts for k in rows[i]} - {"prompt", "chosen", "rejected"})
            raise UserError(
                [
                    f"data.heldout.stratify: {c!r} is neither `length` nor a column of data.train ({source}); "
                    f"allowed: length{''.join(', ' + h for h in have)}"
                ]
            )
    for key in spec.stratify or []:
        if key == LENGTH:
            vals = _quartiles([_text_len(rows[i]["chosen"]) + _text_len(rows[i]["rejected"]) for i in firsts])
        else:
            vals = [str(rows[i].get(key)) for i in firsts]
        strata = [f"{s}|{key}={v}" if s else f"{key}={v}" for s, v in zip(strata, vals)]

    n_held = min(len(firsts) - 1, max(1, round(spec.split_from_train * len(firsts))))
    members: dict[str, list[int]] = defaultdict(list)  # stratum -> group numbers
    for g, s in enumerate(strata):
        members[s].append(g)
    quota = _allocate({s: len(m) for s, m in members.items()}, n_held)
    rank = list(range(len(firsts)))
    random.Random(f"ablate-split/{spec.seed}").shuffle(rank)  # a str seed hashes the same on every machine
    position = {g: p for p, g in enumerate(rank)}
    held_groups = {g for s, m in members.items() for g in sorted(m, key=position.__getitem__)[: quota[s]]}

    prompt_groups = list(groups.values())
    held_idx = sorted(i for g in held_groups for i in prompt_groups[g])
    held_set = set(held_idx)
    train_idx = [i for i in range(len(rows)) if i not in held_set]
    lines = rows.lines if isinstance(rows, Rows) and len(rows.lines) == len(rows) else None
    name = rows.source if isinstance(rows, Rows) else source

    def subset(idx: list[int]) -> Rows:
        return Rows([rows[i] for i in idx], name, [lines[i] for i in idx] if lines else [i + 1 for i in idx])

    record = {
        "from": source,
        "fraction": spec.split_from_train,
        "seed": spec.seed,
        "stratify": list(spec.stratify or []),
        "unit": "prompt",
        "source_rows": len(rows),
        "source_hash": rows_hash(rows),
        "train_rows": len(train_idx),
        "heldout_rows": len(held_idx),
        "strata": {s: {"prompts": len(m), "heldout": quota[s]} for s, m in sorted(members.items())},
        "heldout_index": held_idx,  # 0-based rows of data.train as read
    }
    return subset(train_idx), subset(held_idx), record
