"""Built-in synthetic preference data (`{builtin: letters}`): the quickstart needs no network and no files."""

from __future__ import annotations

import random
import string

# ---------------------------------------------------------------------------------------------
# Synthetic task "letters": a prompt asks for a word; the preferred answer draws most of its letters
# from a-m, the dispreferred one from n-z. `signal` is the share of letters from the favoured half
# (0.5 = no signal). `length_skew` s makes chosen answers (1+s)/(1-s) times as long as rejected ones
# on average: a model that learns "longer is better" on skewed training data fails on held-out data
# skewed the other way, which is how DPO's summed log-probs and SimPO's averages come apart.

_GOOD, _BAD = string.ascii_lowercase[:13], string.ascii_lowercase[13:]
FAVOURED = frozenset(_GOOD)  # the task's truth, for the builtin judge (ablate/judges.py)
_TOPICS = ["cats", "rain", "maps", "tea", "bridges", "owls", "salt", "trains", "ink", "moss", "kites", "dust"]


def _answer(rng: random.Random, n: int, favoured: str, other: str, signal: float) -> str:
    letters = [rng.choice(favoured) if rng.random() < signal else rng.choice(other) for _ in range(n)]
    # Words of 3-6 letters separated by spaces read a little like text and give the model positions.
    out, i = [], 0
    while i < len(letters):
        w = rng.randint(3, 6)
        out.append("".join(letters[i : i + w]))
        i += w
    return " ".join(out)


def letters_task(n: int, length_skew: float = 0.0, signal: float = 0.8, seed: int = 0, split: str = "train"):
    # The split name is part of the stream so train and held-out never share pairs for the same seed.
    rng = random.Random(f"letters/{split}/{seed}")
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    while len(rows) < n:
        base = rng.randint(6, 14)
        n_chosen = max(3, round(base * (1 + length_skew)))
        n_rejected = max(3, round(base * (1 - length_skew)))
        prompt = f"Write about {rng.choice(_TOPICS)} #{rng.randint(0, 9999)}:\n"
        chosen = _answer(rng, n_chosen, _GOOD, _BAD, signal)
        rejected = _answer(rng, n_rejected, _BAD, _GOOD, signal)
        key = (prompt, chosen, rejected)
        if chosen == rejected or key in seen:
            continue
        seen.add(key)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def builtin_rows(spec, split: str) -> list[dict]:
    """Rows for a `BuiltinData` spec."""
    if spec.builtin == "letters":
        return letters_task(spec.n, spec.length_skew, spec.signal, spec.seed, split)
    raise ValueError(f"unknown builtin data {spec.builtin!r}")
