"""The sweep file: sweep-level settings plus a base lineage, a grid over it, and an analysis.

Every error is collected and reported at once, each with its dotted path, the value given and
the valid options; nothing runs until the whole file is valid.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from analysis.specs import AnalysisSpec
from orchestrator.errors import SpecError
from orchestrator.search import SearchSpec
from orchestrator.sweep_input import check_bounds, parse_yaml, read_sweep_file
from trainables import layout
from trainables.messages import shown
from trainables.specs import LineageSpec, SpecModel, with_overrides
from trainables.storage import Store, is_object_store, open_store, scheme_error

MAX_NAME_CHARS = 100

SWEEP_KEYS = ("name", "workdir", "storage_path", "tracking_uri", "resources", "max_concurrent",
              "max_failures", "chunk_size", "checkpoint_artifacts", "grid", "search", "analysis", "smoke")


class Resources(SpecModel):
    cpu: float = Field(1.0, gt=0, description="CPUs per lineage trial.")
    gpu: float = Field(0.0, ge=0, description="GPUs per lineage trial (fractional shares a GPU).")


class SweepSpec(SpecModel):
    """A validated sweep: `lineages` is the grid expanded into LineageSpecs, in grid order."""

    # The name becomes a folder (ray/<name>, reports/<name>) and part of MLflow tag keys (at most
    # 250 characters): bounded well below both.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_NAME_CHARS,
                      description="Sweep name (MLflow experiment).")
    workdir: str = Field(description="Where checkpoints, tables and the default MLflow store live.")
    storage_path: str | None = Field(
        None, description="Ray Tune storage (local path or s3://, gs://); default <workdir>/ray."
    )
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default sqlite under workdir.")
    resources: Resources = Field(Resources(), description="Resources of one lineage trial.")
    max_concurrent: int | None = Field(None, ge=1, description="Lineages running at once (default: as resources allow).")
    max_failures: int = Field(2, ge=0, description="Retries of a failed lineage trial.")
    chunk_size: int = Field(
        500, ge=1, description="Lineages per Tune experiment (grid or search): bounds the driver's memory on huge sweeps."
    )
    checkpoint_artifacts: Literal["weights", "full", "none"] = Field(
        "weights", description="What each level's MLflow run holds of its checkpoint: the weights and "
        "masks (only a reference to the level where the artifact store is the workdir's disk or bucket), "
        "the whole level folder, or nothing (trainables/artifacts.py)."
    )
    # Axes are checked by validate_sweep (each a non-empty list), with the lineage fields they set.
    grid: dict[str, Any] = Field({}, description="Dotted lineage field -> list of values; the cartesian product.")
    search: SearchSpec | None = Field(None, description="Optuna search over lineage fields (instead of a grid).")
    analysis: AnalysisSpec = Field(AnalysisSpec(), description="What `impsweep analyze` computes.")
    smoke: dict[str, Any] = Field({}, description="Overrides applied by --smoke (dotted keys).")
    base: dict[str, Any] = Field(description="The lineage fields shared by every grid point.")
    lineages: tuple[LineageSpec, ...] = Field(
        (), description="Expanded grid (filled by load_sweep); a search sweep's lineages are proposed as it runs."
    )

    @field_validator("workdir")
    @classmethod
    def _usable_workdir(cls, v: str) -> str:
        error = scheme_error(v)
        if error is not None:  # never a local folder named after an unknown scheme
            raise ValueError(error)
        return v

    @model_validator(mode="after")
    def _object_store_needs_a_tracking_store(self) -> SweepSpec:
        if is_object_store(self.workdir) and not self.tracking_uri:
            raise ValueError(f"tracking_uri: a workdir on an object store ({self.workdir}) needs an explicit "
                             "tracking_uri (an `mlflow server` URL, or a SQLite file you name): the default "
                             "SQLite file would live on each machine's disk")
        return self

    @property
    def resolved_workdir(self) -> str:
        """The workdir as every process finds it: an absolute path (trials and servers run in
        other directories), or the object-store URI."""
        return self.workdir if is_object_store(self.workdir) else str(Path(self.workdir).resolve())

    @property
    def store(self) -> Store:
        return open_store(self.resolved_workdir)

    @property
    def resolved_storage_path(self) -> str:
        return self.storage_path or self.store.uri(layout.RAY_STORAGE)

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.store.uri(layout.MLFLOW_DB)}"

    @property
    def artifact_location(self) -> str:
        """Where the sweep's MLflow experiment keeps artifacts unless a tracking server decides:
        under the workdir, never the directory a command runs in."""
        location = self.store.uri(layout.MLFLOW_ARTIFACTS)
        return location if is_object_store(location) else Path(location).as_uri()


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with a YAML value (`grid.seed=[0,1]`, `train.lr=0.05`, `download=true`)."""
    key, sep, raw = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key.strip()):
        raise SpecError([f"--set {shown(text)}: expected key=value with a dotted key, e.g. train.epochs=2"],
                        "overrides")
    try:
        return key.strip(), parse_yaml(raw, source=f"--set {key.strip()}")
    except SpecError as err:
        raise SpecError([f"--set {key.strip()}: {e}" for e in err.errors], "overrides") from None


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `raw` with dotted overrides; `grid.x` keys replace one grid axis whole."""
    grid_axes = {k[len("grid."):]: v for k, v in overrides.items() if k.startswith("grid.")}
    out = with_overrides(raw, {k: v for k, v in overrides.items() if not k.startswith("grid.")})
    if grid_axes:
        grid = out.get("grid") if isinstance(out.get("grid"), dict) else {}
        out["grid"] = {**grid, **grid_axes}
    return out


def _format(err: dict[str, Any], root: type[BaseModel], prefix: str = "") -> str:
    """`path: message (got value)`, with the valid field names for an unknown key."""
    loc = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
    path = prefix + ".".join(loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg += f"; expected one of {_fields_at(root, loc[:-1])}"
    value = err.get("input")
    got = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(value, dict) else f" (got {shown(value)})"
    return f"{path}: {msg}{got}" if path else msg


def _fields_at(root: type[BaseModel], loc: Sequence[str]) -> list[str]:
    """Field names of the model found by following `loc` from `root` (sweep keys at the top)."""
    cls = root
    for part in loc:
        annotation = cls.model_fields[part].annotation if part in cls.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        cls = annotation
    names = set(cls.model_fields) - {"base", "lineages"}
    if cls is LineageSpec:
        names |= set(SWEEP_KEYS)
    return sorted(names)


def expand_grid(base: dict[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(grid point, lineage dict) for every point of the cartesian product, in file order."""
    keys = list(grid)
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        lineage = apply_overrides(base, point)
        points.append((point, lineage))
    return points


def validate_sweep(raw: Any, source: str = "sweep") -> SweepSpec:
    """Validate a parsed sweep mapping; raises SpecError listing every problem."""
    if not isinstance(raw, dict):
        raise SpecError([f"the sweep file must be a mapping of keys; got {type(raw).__name__}"], source)
    sweep_part = {k: v for k, v in raw.items() if k in SWEEP_KEYS}
    base = {k: v for k, v in raw.items() if k not in SWEEP_KEYS}
    errors: list[str] = []
    sweep = None
    try:
        sweep = SweepSpec.model_validate({**sweep_part, "base": base})
    except ValidationError as err:
        errors += [_format(e, SweepSpec) for e in err.errors() if e["loc"][:1] not in (("base",), ("grid",))]
    grid, grid_errors = _grid_axes(raw)
    errors += grid_errors
    lineages, seen = [], set()
    for point, lineage in expand_grid(base, grid):
        try:
            lineages.append(LineageSpec.model_validate(lineage))
        except ValidationError as err:
            for e in err.errors():
                key = ".".join(map(str, e["loc"]))
                line = _format(e, LineageSpec, "grid." if key in point else "")
                if line not in seen:
                    seen.add(line)
                    errors.append(line)
    errors += _search_errors(raw, base, grid, seen)
    if errors:
        raise SpecError(errors, source)
    return sweep.model_copy(update={"lineages": () if sweep.search else _dedupe(lineages)})


def _grid_axes(raw: dict[str, Any]) -> tuple[dict[str, list[Any]], list[str]]:
    """The well-formed axes of the sweep's grid, and an error for every other part of it."""
    grid = raw.get("grid", {})
    if not isinstance(grid, dict):
        return {}, [f"grid: expected a mapping of dotted lineage field -> list of values (got {shown(grid)})"]
    errors = [f"grid: axis names must be dotted lineage fields, e.g. seed or train.lr (got {shown(k)})"
              for k in grid if not isinstance(k, str)]
    errors += [f"grid.{k}: expected a non-empty list of values (got {shown(v)})"
               for k, v in grid.items() if isinstance(k, str) and (not isinstance(v, list) or not v)]
    return {k: v for k, v in grid.items() if isinstance(k, str) and isinstance(v, list) and v}, errors


def _search_errors(raw: dict[str, Any], base: dict[str, Any], grid: dict[str, Any], seen: set[str]) -> list[str]:
    """Every example value of every searched field must make a valid lineage."""
    search = raw.get("search")
    if not isinstance(search, dict):
        return []
    errors = []
    if grid:
        errors.append(f"grid: a sweep with `search` cannot also have a grid (got axes {sorted(grid)}); "
                      "search over the field instead, e.g. a `choice` of seeds")
    try:
        spec = SearchSpec.model_validate(search)
    except ValidationError:
        return errors  # already reported by the SweepSpec validation
    for key, dist in spec.space.items():
        for value in dist.examples():
            try:
                LineageSpec.model_validate(apply_overrides(base, {key: value}))
            except ValidationError as err:
                for e in err.errors():
                    line = _format(e, LineageSpec, "search.space.")
                    if ".".join(map(str, e["loc"])) == key and line not in seen:
                        seen.add(line)
                        errors.append(line)
    return errors


def _dedupe(lineages: list[LineageSpec]) -> tuple[LineageSpec, ...]:
    """One spec per lineage id: grid points that differ only in runtime fields collapse."""
    from trainables.ids import lineage_id

    out: dict[str, LineageSpec] = {}
    for spec in lineages:
        out.setdefault(lineage_id(spec), spec)
    return tuple(out.values())


def load_sweep(
    source: str | Path | Mapping[str, Any], *, overrides: Sequence[str] | Mapping[str, Any] = (), smoke: bool = False
) -> SweepSpec:
    """Read a sweep file (or mapping), apply `smoke:` overrides if asked, then `--set` overrides."""
    if isinstance(source, Mapping):
        raw, name = dict(source), "sweep"
    else:
        raw, name = read_sweep_file(source), str(source)
    if not isinstance(raw, dict):
        raise SpecError([f"the sweep file must be a mapping of keys; got {type(raw).__name__}"], name)
    check_bounds(raw, source=name)
    if smoke:
        smoke_overrides = raw.get("smoke") or {}
        if not isinstance(smoke_overrides, dict) or not smoke_overrides:
            raise SpecError(["--smoke: this sweep file has no `smoke:` mapping of overrides"], name)
        bad = [k for k in smoke_overrides if not isinstance(k, str)]
        if bad:
            raise SpecError([f"smoke: override keys must be dotted fields, e.g. train.epochs (got {shown(k)})"
                             for k in bad], name)
        raw = apply_overrides(raw, smoke_overrides)
    if not isinstance(overrides, Mapping):
        overrides = dict(parse_override(o) for o in overrides)
    raw = apply_overrides(raw, overrides)
    check_bounds(raw, source=name)
    return validate_sweep(raw, name)
