"""The sketch store: per-representation sketches of the analysis stage, computed once and kept
for every tile and every re-run: on disk when small next to the activation, in the tile actor's
memory otherwise.

Where: `<workdir>/analysis/sketches/<probe_key>/<checkpoint_id>/<layer>/<SketchSpec.key>.pt`
(`trainables.layout`), one file per representation and sketch spec (kind, conv mode, pooled spatial size, CKA form and
the options that change it; one "cca" sketch serves every CCA measure, one "nbs" sketch NBS and
Procrustes). Each file holds the sketch's tensors and numbers plus what a similarity row needs
of the representation (shape, live units), the spec key and the size and mtime of the activation
file it came from. Written to a temporary name and renamed; read with
`torch.load(..., weights_only=True)`; a file that is unreadable, of another key or of other
activations is recomputed and replaced.

The size rule: a sketch is stored when its tensors take at most `STORE_RATIO` (4) times the
bytes of its activation file (float32). CCA bases ([n, rank] float64 plus S V^T [rank, p]), NBS
factors and CKA feature-form sketches hold at most the activation in float64 plus a [p, p]
block: about 2x the file, 4x when p reaches n, so they are always stored. A packed centred
Gram (CKA's Gram form, about n^2/2 float64: the upper slabs) is ~4n^2 bytes against 4np: it is stored when
n <= 4p (512 units on 1,000 probe examples: 4 MB beside a 2 MB activation), not beyond
(512 units on 5,000 examples: 100 MB beside 10 MB). Unstored sketches live in an in-process
LRU bounded by `CACHE_BYTES`; `analysis.pairs.tiles` orders tiles so that consecutive tiles
share representations, and a re-run recomputes a Gram only for representations with new pairs.
"""
from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from analysis.similarity import Sketch, SketchSpec, from_payload, sketch, sketch_bytes, to_payload
from trainables import layout
from trainables.storage import Store, as_store

STORE_RATIO = 4.0
CACHE_BYTES = 2 << 30  # in-memory sketches per tile actor (those of the current tile are kept regardless)
FORMAT_VERSION = 2  # 2: `source` is the store's version token of the activation file
_NPY_HEADER_BYTES = 4096  # an .npy header fits in this (format 1: at most 65,535, in practice < 200)


@dataclass(frozen=True)
class Prepared:
    """A representation's sketch for one spec, and what its similarity rows need of it."""

    sketch: Sketch
    shape: tuple[int, ...]  # of the activation: [n, p] or [n, c, h, w]
    live_units: int  # units (channels of conv maps) that vary over the probe set


def live_units(x: np.ndarray) -> int:
    """Units (features; channels of conv maps) whose activation varies over the probe set."""
    flat = x.reshape(len(x), x.shape[1], -1) if x.ndim == 4 else x.reshape(len(x), -1)
    spread = flat.max(axis=0) - flat.min(axis=0)
    return int((spread.reshape(spread.shape[0], -1).max(axis=1) > 0).sum())


def fits(built: Sketch, activation_bytes: int, *, ratio: float = STORE_RATIO) -> bool:
    """The size rule: a sketch is stored when its tensors take at most `ratio` times the bytes of
    its activation file."""
    return sketch_bytes(built) <= ratio * activation_bytes


class UnusableActivation(ValueError):
    """An activation file of which no sketch can be made. `reason` is the status its pairs
    get: "unreadable" (missing, truncated, not an array) or "nonfinite" (NaN or infinite
    values, e.g. of a diverged lineage)."""

    def __init__(self, path: str | os.PathLike, reason: str, *, detail: str):
        super().__init__(f"{path}: {reason} ({detail})")
        self.reason = reason


def activation_shape(store: Store, *, key: str) -> tuple[int, ...]:
    """The shape of a stored activation, read from its `.npy` header only. Raises
    UnusableActivation when the file cannot be read."""
    try:
        head = io.BytesIO(store.read_head(key, _NPY_HEADER_BYTES))
        version = np.lib.format.read_magic(head)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:  # a newer format (UTF-8 field names): read the whole file
            return tuple(int(d) for d in np.load(io.BytesIO(store.read_bytes(key))).shape)
        shape, _, _ = read_header(head)
        return tuple(int(d) for d in shape)
    except (OSError, ValueError, EOFError) as error:
        raise UnusableActivation(store.uri(key), "unreadable", detail=f"{type(error).__name__}: {error}") from None


def load_activation(store: Store, *, key: str) -> tuple[np.ndarray, int]:
    """A stored activation, checked, and the size of its file: raises UnusableActivation when
    the file cannot be read or holds non-finite values."""
    try:
        data = store.read_bytes(key)
        x = np.load(io.BytesIO(data))
    except (OSError, ValueError, EOFError) as error:
        raise UnusableActivation(store.uri(key), "unreadable", detail=f"{type(error).__name__}: {error}") from None
    if not np.isfinite(x).all():
        raise UnusableActivation(store.uri(key), "nonfinite",
                                 detail=f"{int((~np.isfinite(x)).sum())} of {x.size} values")
    return x, len(data)


class SketchStore:
    """Sketches by (activation file, spec): from memory, else from disk, else computed from the
    activation (and stored when the size rule allows). Activation paths are as the manifests
    store them, relative to the workdir (absolute ones are taken as they are). Counts what it
    did in `computed`, `loaded` (from disk) and `stored`."""

    def __init__(self, workdir: str | os.PathLike | Store, *, store_ratio: float = STORE_RATIO,
                 cache_bytes: int = CACHE_BYTES):
        self.store, self.store_ratio, self.cache_bytes = as_store(workdir), store_ratio, cache_bytes
        self._cache: OrderedDict[tuple[str, str], tuple[Prepared, int]] = OrderedDict()
        self._held = 0
        self.computed = self.loaded = self.stored = 0

    def path(self, activation: str, spec: SketchSpec) -> str:
        """Where (a key) the sketch of the activation file `activation` (a key) under `spec` is,
        or would be, stored."""
        return layout.sketch_file(activation, spec.key)

    def get(self, activation: str, spec: SketchSpec) -> Prepared:
        """Raises UnusableActivation for an activation file no sketch can be made of."""
        key = (activation, spec.key)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key][0]
        file = self.path(activation, spec)
        prepared = self._load(file, activation, spec) if self.store.exists(file) else None
        if prepared is None:
            prepared = self._compute(file, activation, spec)
        else:
            self.loaded += 1
        self._remember(key, prepared)
        return prepared

    def _load(self, file: str, activation: str, spec: SketchSpec) -> Prepared | None:
        """The stored sketch, or None when the file is unreadable or belongs to something else."""
        try:
            payload = torch.load(io.BytesIO(self.store.read_bytes(file)), map_location="cpu", weights_only=True)
            if (payload["version"] != FORMAT_VERSION or payload["key"] != spec.key
                    or payload["source"] != self.store.version(activation)):
                return None
            return Prepared(from_payload(payload["sketch"]), tuple(payload["shape"]), int(payload["live_units"]))
        except Exception:  # truncated, corrupted or foreign: recompute and replace it
            return None

    def _compute(self, file: str, activation: str, spec: SketchSpec) -> Prepared:
        x, size = load_activation(self.store, key=activation)
        prepared = Prepared(sketch(x, spec), tuple(int(d) for d in x.shape), live_units(x))
        self.computed += 1
        if fits(prepared.sketch, size, ratio=self.store_ratio):
            buffer = io.BytesIO()
            # `source`: the activation file's version; a sketch of other activations is stale
            torch.save({"version": FORMAT_VERSION, "key": spec.key, "source": self.store.version(activation),
                        "shape": list(prepared.shape), "live_units": prepared.live_units,
                        "sketch": to_payload(prepared.sketch)}, buffer)
            self.store.write_bytes(file, buffer.getvalue())
            self.stored += 1
        return prepared

    def _remember(self, key: tuple[str, str], prepared: Prepared) -> None:
        size = sketch_bytes(prepared.sketch)
        self._cache[key] = (prepared, size)
        self._held += size
        while self._held > self.cache_bytes and len(self._cache) > 1:
            _, (_, dropped) = self._cache.popitem(last=False)
            self._held -= dropped
