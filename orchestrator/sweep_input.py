"""Reading a sweep's raw input within bounds: file size, nesting, values after alias expansion.

A few hundred bytes of YAML anchors and aliases (a "billion laughs") name billions of values;
loading them is cheap (aliases share one object), but validating, copying or serialising them
is not. So the loader refuses deep nesting and duplicate keys, and `check_bounds` counts what
the input expands to (shared objects once per use, without walking them again) before anything
else looks at it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import SpecError
from trainables.messages import shown

MAX_FILE_BYTES = 1 << 20  # sweep files are a few kilobytes
MAX_DEPTH = 32  # nesting levels of mappings and lists; a sweep file uses about five
MAX_VALUES = 100_000  # scalars, lists and mappings after expanding aliases; a sweep file has hundreds


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses nesting past MAX_DEPTH and duplicate keys, and reads
    `1e-3` as a float (YAML 1.1, PyYAML's default, reads it as a string)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0
        self.duplicates: list[tuple[int, str]] = []  # (line, message)

    def compose_node(self, parent, index):
        # Composing recurses once per level: refuse before Python's recursion limit does.
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then a key overrides the merged one on purpose
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: the base constructor reports it
                if earlier is not key_node.start_mark:
                    self.duplicates.append((key_node.start_mark.line, f"duplicate key {shown(key)} at line "
                                            f"{key_node.start_mark.line + 1} (first at line {earlier.line + 1}); "
                                            "each key may appear once"))
        return super().construct_mapping(node, deep=deep)


_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, *, source: str) -> Any:
    """The value of YAML `text`; SpecError (naming `source`) for invalid, over-deep or
    duplicate-keyed YAML."""
    loader = _BoundedLoader(text)
    try:
        value = loader.get_single_data()
    except yaml.YAMLError as err:
        raise SpecError([f"not valid YAML: {err}"], source) from None
    finally:
        loader.dispose()
    if loader.duplicates:  # found in construction order, which visits nested mappings last
        raise SpecError([message for _, message in sorted(loader.duplicates)], source)
    return value


def read_sweep_file(path: str | Path) -> Any:
    """The parsed YAML of the sweep file `path`: at most MAX_FILE_BYTES of UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"sweep file {shown(str(path))} does not exist"], str(path))
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise SpecError([f"the file is larger than {MAX_FILE_BYTES} bytes; a sweep file is a few kilobytes"], str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError([f"the file is not UTF-8 text: byte {data[err.start]:#04x} at offset {err.start} "
                         "(save it as UTF-8)"], str(path)) from None
    return parse_yaml(text, source=str(path))


def check_bounds(raw: Any, *, source: str) -> None:
    """SpecError if `raw` nests deeper than MAX_DEPTH or expands to more than MAX_VALUES values,
    naming the field that does."""
    sizes: dict[int, tuple[int, int]] = {}
    try:
        total = _measure(raw, 0, sizes)[0]
    except _TooDeep as err:
        raise SpecError([f"{_dotted(err.path)}: nested deeper than {MAX_DEPTH} levels (or refers to itself)"],
                        source) from None
    if total > MAX_VALUES:
        path, node = [], raw  # the innermost field (mapping key) that is too large alone
        while isinstance(node, dict) and (big := [(k, v) for k, v in node.items() if _size(v, sizes) > MAX_VALUES]):
            key, node = big[0]
            path.append(key)
        raise SpecError([f"{_dotted(path)}: expands to {total if not path else _size(node, sizes):,} values, "
                         f"more than the {MAX_VALUES:,} a sweep may have (YAML aliases count once per use)"], source)


class _TooDeep(Exception):
    def __init__(self):
        self.path: list[Any] = []


def _items(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, dict):
        return list(value.items())
    return list(enumerate(value)) if isinstance(value, (list, tuple)) else []


def _size(value: Any, sizes: dict[int, tuple[int, int]]) -> int:
    return sizes[id(value)][0] if isinstance(value, (dict, list, tuple)) else 1


def _measure(value: Any, depth: int, sizes: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(values under and including `value`, its height). Memoised by identity: a shared object
    costs one walk however often it is used; a self-reference never ends, so it nests too deep."""
    if not isinstance(value, (dict, list, tuple)):
        return 1, 0
    if id(value) not in sizes:
        if depth > MAX_DEPTH:
            raise _TooDeep()
        total, height = 1, 0
        for key, child in _items(value):
            try:
                n, h = _measure(child, depth + 1, sizes)
            except _TooDeep as err:
                err.path.insert(0, key)
                raise
            total, height = total + n, max(height, h + 1)
        sizes[id(value)] = (total, height)
    if depth + sizes[id(value)][1] > MAX_DEPTH:
        raise _TooDeep()
    return sizes[id(value)]


def _dotted(path: list[Any]) -> str:
    """["train", "epochs", 0] -> "train.epochs[0]"; [] -> "the sweep"."""
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "the sweep"
