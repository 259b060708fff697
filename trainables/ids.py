"""Stable identifiers: canonical JSON of the identity fields, hashed.

A field equal to its default is omitted from the canonical form, so adding an optional field
whose default keeps the old behaviour leaves every existing id unchanged.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel

from trainables.specs import RUNTIME_FIELDS, SCHEMA_VERSION, LineageSpec

ID_DIGEST_CHARS = 12
_LINEAGE_ID = re.compile(rf"(c[0-9a-f]{{{ID_DIGEST_CHARS}}})-s(0|[1-9][0-9]*)")


def _non_default(model: BaseModel) -> dict[str, Any]:
    """The fields of `model` that differ from their defaults, recursively, as JSON values."""
    out: dict[str, Any] = {}
    dumped = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            sub = _non_default(value)
            if sub or field.is_required():
                out[name] = sub
            continue
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            if json.loads(json.dumps(default)) == dumped[name]:
                continue
        out[name] = dumped[name]
    return out


def identity(spec: LineageSpec) -> dict[str, Any]:
    """Identity fields of `spec` that differ from their defaults, plus `schema_version`."""
    fields = {k: v for k, v in _non_default(spec).items() if k not in RUNTIME_FIELDS}
    return {"schema_version": SCHEMA_VERSION, **fields}


def canonical(spec: LineageSpec) -> str:
    """Sorted-key, whitespace-free JSON of `identity(spec)`."""
    return canonical_json(identity(spec))


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def digest(obj: Any) -> str:
    """First 12 hex characters of sha256 of the canonical JSON of `obj`."""
    text = obj if isinstance(obj, str) else canonical_json(obj)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_DIGEST_CHARS]


def config_id(spec: LineageSpec) -> str:
    """Groups the replicates of one configuration: the identity without the seed."""
    ident = identity(spec)
    ident.pop("seed", None)
    return "c" + digest(ident)


def lineage_id(spec: LineageSpec) -> str:
    return f"{config_id(spec)}-s{spec.seed}"


def parse_lineage_id(lineage: str) -> tuple[str, int]:
    """`(config_id, seed)` of a lineage id."""
    match = _LINEAGE_ID.fullmatch(lineage)
    if match is None:
        raise ValueError(f"not a lineage id: {lineage!r}; expected 'c<{ID_DIGEST_CHARS} hex>-s<seed>'")
    return match.group(1), int(match.group(2))


def checkpoint_id(lineage: str, level: int, *, step: int | None = None) -> str:
    """`<lineage_id>/L<level>`, plus `/it<step>` for a rewind point inside a level."""
    cid = f"{lineage}/L{level:02d}"
    return cid if step is None else f"{cid}/it{step}"


def parse_checkpoint_id(cid: str) -> tuple[str, int]:
    """`(lineage_id, level)` of a level checkpoint id."""
    lineage, _, level = cid.rpartition("/L")
    if not lineage or not level.isdigit():
        raise ValueError(f"not a level checkpoint id: {cid!r}; expected '<lineage_id>/L<NN>'")
    return lineage, int(level)
