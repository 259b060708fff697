"""The pair set: scopes, layer modes, canonical order, tiles covering every pair once."""
from __future__ import annotations

import pytest

from analysis.pairs import Rep, pair_key, pair_set, tiles

LAYERS = ("fc1", "fc2", "out")


def _reps(n_lineages=2, n_levels=3, configs=1, groups=("g",)):
    reps = []
    for group in groups:
        for c in range(configs):
            for s in range(n_lineages):
                lid = f"c{c}{group}-s{s}"
                for level in range(n_levels):
                    for layer in LAYERS:
                        reps.append(Rep(f"{lid}/L{level:02d}", layer, lid, f"c{c}{group}", level, group, "x.npy"))
    return reps


@pytest.mark.parametrize("scope,layers,expected", [
    ("dense", "same", 2 * 3 * 3),          # per lineage (L0,L0) (L0,L1) (L0,L2), 3 layers
    ("lineage", "same", 2 * 6 * 3),        # C(3+1, 2) checkpoint pairs per lineage
    ("seeds", "same", 3 * 3 * 3),          # per level: (s0,s0) (s0,s1) (s1,s1)
    ("all", "same", 21 * 3),               # C(6+1, 2) over all six checkpoints
    ("dense", "all", 2 * (6 + 9 + 9)),     # self-pair: 6 unordered layer pairs, others 9
    (["dense", "seeds"], "same", 18 + 27 - 2 * 3),  # both hold the two level-0 self-pairs
])
def test_pair_counts(scope, layers, expected):
    pairs = pair_set(_reps(), layers=layers, scope=scope)
    assert len(pairs) == expected
    assert len({pair_key(a, b) for a, b in pairs}) == expected


def test_pairs_are_canonical_and_include_self_pairs():
    pairs = pair_set(_reps(), layers="all", scope="all")
    for a, b in pairs:
        assert (a.checkpoint_id, a.layer) <= (b.checkpoint_id, b.layer)
    assert sum(a == b for a, b in pairs) == 6 * 3


def test_dense_scope_pairs_with_own_level_zero():
    for a, b in pair_set(_reps(), layers="same", scope="dense"):
        assert a.lineage_id == b.lineage_id and a.level == 0


def test_seeds_scope_stays_within_config_and_level():
    for a, b in pair_set(_reps(configs=2), layers="same", scope="seeds"):
        assert a.config_id == b.config_id and a.level == b.level


def test_groups_are_never_compared():
    pairs = pair_set(_reps(groups=("g", "h")), layers="same", scope="all")
    assert all(a.group == b.group for a, b in pairs)
    assert len(pairs) == 2 * 21 * 3


@pytest.mark.parametrize("layers", ["same", "all"])
@pytest.mark.parametrize("scopes", [("dense", "seeds"), ("seeds", "dense"), ("dense", "lineage", "seeds"),
                                    ("lineage", "all")])
def test_several_scopes_give_the_union_of_their_pairs_each_once(scopes, layers):
    reps = _reps(n_lineages=3, configs=2, groups=("g", "h"))
    union = pair_set(reps, layers=layers, scope=list(scopes))
    keys = [pair_key(a, b) for a, b in union]
    assert len(keys) == len(set(keys)) and keys == sorted(keys)
    assert set(keys) == {pair_key(a, b) for s in scopes for a, b in pair_set(reps, layers=layers, scope=s)}
    assert union == pair_set(reps, layers=layers, scope=sorted(scopes))
    assert pair_set(reps, layers=layers, scope=[scopes[0]]) == pair_set(reps, layers=layers, scope=scopes[0])


@pytest.mark.parametrize("tile_size", [1, 2, 4, 100])
def test_tiles_cover_every_pair_once(tile_size):
    pairs = pair_set(_reps(), layers="all", scope="lineage")
    covered = [pair_key(t.a[i], t.b[j]) for t in tiles(pairs, tile_size) for i, j in t.pairs]
    assert sorted(covered) == sorted(pair_key(a, b) for a, b in pairs)
    assert all(len(t.a) <= tile_size and len(t.b) <= tile_size for t in tiles(pairs, tile_size))


def test_tile_ids_are_stable():
    pairs = pair_set(_reps(), layers="same", scope="all")
    assert sorted(t.tile_id for t in tiles(pairs, 4)) == sorted(t.tile_id for t in tiles(list(reversed(pairs)), 4))


def test_unknown_scope_or_layers():
    with pytest.raises(ValueError, match="unknown scope 'everything'"):
        pair_set(_reps(), layers="same", scope="everything")
    with pytest.raises(ValueError, match="unknown scope 'everything'"):
        pair_set(_reps(), layers="same", scope=["dense", "everything"])
    with pytest.raises(ValueError, match="at least one scope is needed"):
        pair_set(_reps(), layers="same", scope=[])
    with pytest.raises(ValueError, match="unknown layers 'some'"):
        pair_set(_reps(), layers="some", scope="all")


def test_consecutive_tiles_share_a_side():
    reps = _reps(n_lineages=4, n_levels=4)
    found = tiles(pair_set(reps, layers="same", scope="all"), 3)
    layer_pairs = [(t.a[0].layer, t.b[0].layer) for t in found]
    assert layer_pairs == sorted(layer_pairs)  # one layer pair after the other
    for before, after in zip(found, found[1:]):
        if before.a[0].layer == after.a[0].layer:
            assert before.a == after.a or before.b == after.b
