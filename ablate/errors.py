"""The one error type for mistakes a user can fix: a bad matrix, bad data, impossible resources, busy results.

The CLI prints each problem on its own line and exits 2, with no traceback. Anything else is a bug or an
environment failure and keeps its traceback (in a cell's error.txt when it happens on a worker).
"""

from __future__ import annotations


class UserError(Exception):
    """One or more problems the user can fix; each line is one problem."""

    def __init__(self, problems: list[str] | str, code: int = 2):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.code = code
        super().__init__("\n".join(self.problems))


MatrixError = UserError  # the name the Python API has used since 0.1


class Located(ValueError):
    """Problems a validator found across fields, each with the field location (a pydantic loc) it is about, so
    the message can name the file line. Raised inside pydantic validators, which wrap ValueErrors."""

    def __init__(self, problems: list[tuple[tuple, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
