"""Short reprs of user input for error messages: a value is shown, never dumped."""
from __future__ import annotations

import reprlib
from typing import Any

# Enough to recognise a value; reprlib stops walking a container past these counts, so even a
# YAML "billion laughs" of shared lists costs a few dozen steps to show.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 6
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 24

SHOWN_CHARS = 120


def shown(value: Any, *, chars: int = SHOWN_CHARS) -> str:
    """repr(value), cut to at most `chars` characters (nested containers elided with ...)."""
    text = repr(value) if isinstance(value, str) and len(value) <= chars else _REPR.repr(value)
    return text if len(text) <= chars else text[: chars - 3] + "..."
