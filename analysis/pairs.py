"""The pair set of an analysis, in canonical order, and its split into tiles.

A representation is one probe layer of one checkpoint. Pairs are unordered and stored once:
`a_checkpoint_id <= b_checkpoint_id`, then `a_layer <= b_layer` within one checkpoint.
Self-pairs are included as a sanity anchor.
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from trainables.ids import digest

SCOPES = ("all", "dense", "lineage", "seeds")


@dataclass(frozen=True, order=True)
class Rep:
    checkpoint_id: str
    layer: str
    lineage_id: str
    config_id: str
    level: int
    group: str  # model and dataset (and their options): only reps of one group are compared
    path: str  # activations file


@dataclass(frozen=True)
class Tile:
    """Pairs among a block of `a` reps and a block of `b` reps of one layer pair."""

    a: tuple[Rep, ...]
    b: tuple[Rep, ...]
    pairs: tuple[tuple[int, int], ...]  # (index into a, index into b)

    @property
    def tile_id(self) -> str:
        keys = [(self.a[i].checkpoint_id, self.a[i].layer, self.b[j].checkpoint_id, self.b[j].layer)
                for i, j in self.pairs]
        return digest(sorted(keys))


def pair_key(a: Rep, b: Rep) -> tuple[str, str, str, str]:
    return (a.checkpoint_id, a.layer, b.checkpoint_id, b.layer)


def canonical_pair(a: Rep, b: Rep) -> tuple[Rep, Rep]:
    """The pair in its stored order: by checkpoint id, then layer."""
    return (a, b) if (a.checkpoint_id, a.layer) <= (b.checkpoint_id, b.layer) else (b, a)


def _checkpoint_pairs(ckpts: Sequence[Rep], scope: str) -> Iterable[tuple[Rep, Rep]]:
    """Pairs of checkpoints (one representative Rep each) selected by `scope`."""
    if scope == "all":
        yield from itertools.combinations_with_replacement(ckpts, 2)
    elif scope == "lineage":
        by_lineage = defaultdict(list)
        for c in ckpts:
            by_lineage[c.lineage_id].append(c)
        for members in by_lineage.values():
            yield from itertools.combinations_with_replacement(members, 2)
    elif scope == "seeds":
        by_level = defaultdict(list)
        for c in ckpts:
            by_level[(c.config_id, c.level)].append(c)
        for members in by_level.values():
            yield from itertools.combinations_with_replacement(members, 2)
    elif scope == "dense":
        dense = {c.lineage_id: c for c in ckpts if c.level == 0}
        for c in ckpts:
            if c.lineage_id in dense:
                yield dense[c.lineage_id], c


def pair_set(reps: Sequence[Rep], *, layers: str, scope: str | Sequence[str]) -> list[tuple[Rep, Rep]]:
    """Every pair the spec defines, canonical and sorted, each once. Several scopes give the
    union of their pairs: a pair two scopes share (e.g. a level-0 self-pair) is still one pair."""
    if layers not in ("same", "all"):
        raise ValueError(f"unknown layers {layers!r}; expected one of ['all', 'same']")
    scopes = (scope,) if isinstance(scope, str) else tuple(scope)
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; expected one of {list(SCOPES)}")
    if not scopes:
        raise ValueError(f"at least one scope is needed; expected some of {list(SCOPES)}")
    by_group: dict[str, dict[str, list[Rep]]] = defaultdict(lambda: defaultdict(list))
    for rep in reps:
        by_group[rep.group][rep.checkpoint_id].append(rep)
    out: set[tuple[Rep, Rep]] = set()
    for ckpt_reps in by_group.values():
        heads = sorted(v[0] for v in ckpt_reps.values())
        checkpoint_pairs = {canonical_pair(ca, cb) for s in scopes for ca, cb in _checkpoint_pairs(heads, s)}
        for ca, cb in checkpoint_pairs:
            for ra in ckpt_reps[ca.checkpoint_id]:
                for rb in ckpt_reps[cb.checkpoint_id]:
                    if layers == "same" and ra.layer != rb.layer:
                        continue
                    out.add(canonical_pair(ra, rb))
    return sorted(out, key=lambda p: pair_key(*p))


def tiles(pairs: Sequence[tuple[Rep, Rep]], tile_size: int) -> list[Tile]:
    """Group pairs by (group, a_layer, b_layer) and cut each group into blocks of at most
    `tile_size` reps a side, so that each tile is one batched call on one layer pair.

    Tiles come layer pair by layer pair, each in `_block_order`: consecutive tiles share a
    side wherever the pair set allows, so a tile actor's in-memory sketches serve the next."""
    groups: dict[tuple[str, str, str], list[tuple[Rep, Rep]]] = defaultdict(list)
    for a, b in pairs:
        groups[(a.group, a.layer, b.layer)].append((a, b))
    out = []
    for _, members in sorted(groups.items()):
        a_all = sorted({a for a, _ in members})
        b_all = sorted({b for _, b in members})
        a_block = {r: i // tile_size for i, r in enumerate(a_all)}
        b_block = {r: i // tile_size for i, r in enumerate(b_all)}
        blocks: dict[tuple[int, int], list[tuple[Rep, Rep]]] = defaultdict(list)
        for a, b in members:
            blocks[(a_block[a], b_block[b])].append((a, b))
        for key in _block_order(blocks):
            block_pairs = blocks[key]
            a_reps = tuple(sorted({a for a, _ in block_pairs}))
            b_reps = tuple(sorted({b for _, b in block_pairs}))
            a_at = {r: i for i, r in enumerate(a_reps)}
            b_at = {r: i for i, r in enumerate(b_reps)}
            out.append(Tile(a_reps, b_reps, tuple((a_at[a], b_at[b]) for a, b in block_pairs)))
    return out


def _block_order(keys: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Blocks (a_block, b_block) row by row from the last `a` block to the first; each row
    starts at the `b` block the previous row ended on, then takes its other `b` blocks most
    recently used first (new ones last). On a full rectangle this is a serpentine; on the
    triangle of a symmetric pair set every step still shares a side (row i's b blocks
    include row i + 1's)."""
    by_row: dict[int, list[int]] = defaultdict(list)
    for a_index, b_index in keys:
        by_row[a_index].append(b_index)
    used: dict[int, int] = {}
    order: list[tuple[int, int]] = []
    previous = None
    for a_index in sorted(by_row, reverse=True):
        row = sorted(by_row[a_index], key=lambda b: (b != previous, -used.get(b, -1), b))
        for b_index in row:
            order.append((a_index, b_index))
            used[b_index] = len(order)
        previous = row[-1]
    return order
