"""SpecError: bad input to a sweep (its file, overrides or a query), every problem listed at once."""
from __future__ import annotations

from collections.abc import Sequence


class SpecError(ValueError):
    """A sweep file (or its overrides) is invalid; `errors` lists every problem."""

    def __init__(self, errors: Sequence[str], source: str = "sweep"):
        self.errors = list(errors)
        super().__init__(f"{source}: {len(self.errors)} error(s)\n" + "\n".join(f"  - {e}" for e in self.errors))
