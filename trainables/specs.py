"""The lineage specification: what one IMP lineage computes (identity) and how (runtime)."""
from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainables.messages import shown

# Bump when an existing default or meaning changes: it renames every lineage on purpose.
SCHEMA_VERSION = 1

# Fields of LineageSpec that say where and how fast, never what: they never enter ids.
RUNTIME_FIELDS = frozenset(
    {"data_root", "download", "device", "compile", "precision", "fuse", "num_workers", "checkpoint_every_epochs",
     "max_device_data_gb", "report_every_s"}
)

# Keywords of `prune.exclude`; any other entry is a glob over parameter names.
EXCLUDE_KINDS = ("bias", "bn", "output")

# Larger integers are typos (epochs: 100000000000000000000000) and overflow what they size.
MAX_INT = 2**31 - 1


def with_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with dotted keys set: {"train.lr": 0.1} sets base["train"]["lr"]."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return out


class SpecModel(BaseModel):
    """Base of every spec: frozen, unknown keys refused, scalars strict. An int field takes an int
    within +-MAX_INT (not '1', 1.0 or true); a float field an int or a finite float (not '0.1',
    .inf or yes); a bool field true or false. Tuple fields say `strict=False`, which lets a list
    (YAML and JSON have no tuples) stand in while their items stay strict."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _ints_within_bounds(cls, value: Any) -> Any:
        items = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, int) and abs(v) > MAX_INT for v in items):
            raise ValueError(f"integers must lie within +-{MAX_INT}")
        return value


class TrainSpec(SpecModel):
    """How each level is trained."""

    optimizer: Literal["sgd", "adam"] = Field("sgd", description="Optimizer.")
    lr: float = Field(0.1, gt=0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD).")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay.")
    batch_size: int = Field(128, ge=1, description="Examples per step.")
    epochs: int = Field(10, ge=1, description="Epochs per level.")
    lr_schedule: Literal["constant", "step", "multistep", "cosine"] = Field(
        "constant", description="Learning-rate schedule within a level."
    )
    warmup_epochs: float = Field(0.0, ge=0, description="Linear warm-up from 0, in epochs.")
    milestones: tuple[int, ...] = Field((), strict=False, description="Epochs at which multistep decays.")
    step_epochs: int = Field(0, ge=0, description="Decay period of the step schedule, in epochs.")
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor of step and multistep.")

    @model_validator(mode="after")
    def _schedule_options(self) -> TrainSpec:
        if self.lr_schedule == "step" and self.step_epochs < 1:
            raise ValueError("train.step_epochs must be >= 1 when train.lr_schedule is 'step'")
        if self.lr_schedule == "multistep" and not self.milestones:
            raise ValueError("train.milestones must list epochs when train.lr_schedule is 'multistep'")
        return self


class PruneSpec(SpecModel):
    """Which weights are removed, when, and where training restarts from."""

    schedule: Literal["imp", "oneshot", "gradual", "aimp"] = Field(
        "imp", description="imp: prune-rewind-retrain rounds; oneshot/gradual: one level per target."
    )
    rate: float = Field(0.2, gt=0, lt=1, description="Fraction of the remaining weights removed per level.")
    levels: int = Field(4, ge=0, description="Pruned levels after the dense level 0.")
    targets: tuple[float, ...] | None = Field(
        None, strict=False, description="Sparsities of levels 1.. for oneshot/gradual (default: IMP's)."
    )
    scope: Literal["global", "layerwise"] = Field("global", description="Magnitude ranking scope.")
    rewind: Literal["init", "step", "lr", "finetune"] = Field("init", description="Restart point.")
    rewind_step: int = Field(0, ge=0, description="Iteration of level 0 to rewind to (rewind: step).")
    exclude: tuple[str, ...] = Field(
        ("bias", "bn"), strict=False, description="Never pruned: kinds bias/bn/output, or globs over parameter names."
    )
    layer_rates: dict[str, float] = Field(
        {}, description="Per-parameter rate overrides: glob (or 'output') -> rate."
    )
    control: Literal["random_reinit", "random_prune"] | None = Field(
        None, description="Control experiment: fresh init with the same mask, or a random mask."
    )
    aimp_epochs: int = Field(1, ge=1, description="Retraining epochs of intermediate levels (aimp).")
    finetune_lr: float | None = Field(None, gt=0, description="Constant lr of rewind: finetune.")
    gradual_start_epoch: float = Field(0.0, ge=0, description="Epoch at which gradual pruning starts.")
    gradual_end_epoch: float | None = Field(None, ge=0, description="Epoch it reaches the target.")
    gradual_every_steps: int = Field(10, ge=1, description="Steps between gradual mask updates.")
    stop_connected_fraction: float | None = Field(
        None, gt=0, lt=1,
        description="Stop once some pruned layer keeps at most this fraction of its units connected "
        "(a unit is connected while any of its incoming weights survives).",
    )

    @field_validator("targets")
    @classmethod
    def _targets_in_range(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None:
            bad = [t for t in v if not 0 < t < 1]
            if bad:
                raise ValueError(f"every target sparsity must lie in (0, 1); got {shown(bad)}")
        return v

    @field_validator("layer_rates")
    @classmethod
    def _rates_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: r for k, r in v.items() if not 0 <= r < 1}
        if bad:
            raise ValueError(f"layer rates must lie in [0, 1); got {shown(bad)}")
        return v

    @model_validator(mode="after")
    def _targets_need_schedule(self) -> PruneSpec:
        if self.targets is not None and self.schedule not in ("oneshot", "gradual"):
            raise ValueError(
                f"prune.targets applies to schedules oneshot and gradual, not {self.schedule!r}"
            )
        return self

    def level_sparsities(self) -> tuple[float, ...]:
        """Nominal sparsity of levels 1..L (prunable weights, uniform rate)."""
        if self.schedule in ("oneshot", "gradual") and self.targets is not None:
            return tuple(self.targets)
        return tuple(1 - (1 - self.rate) ** k for k in range(1, self.levels + 1))

    @property
    def n_levels(self) -> int:
        """Number of pruned levels (level 0, the dense network, not counted)."""
        return len(self.level_sparsities())


class LineageSpec(SpecModel):
    """One IMP lineage: a model, a dataset, a seed, training and pruning; levels 0..L."""

    model: str = Field(description="Model registry key, e.g. lenet_300_100.")
    model_options: dict[str, Any] = Field({}, description="Builder options of the model.")
    dataset: str = Field(description="Dataset registry key, e.g. digits.")
    dataset_options: dict[str, Any] = Field({}, description="Options that change the data.")
    seed: int = Field(0, ge=0, description="Seed of initialisation, data order and masks.")
    train: TrainSpec = Field(TrainSpec(), description="Training of each level.")
    prune: PruneSpec = Field(PruneSpec(), description="Pruning schedule.")
    # Runtime fields (RUNTIME_FIELDS): never part of ids.
    data_root: str | None = Field(None, description="Root folder of torchvision datasets.")
    download: bool = Field(False, description="Download torchvision datasets if missing.")
    device: str = Field("cpu", description="Training device: cpu, cuda, cuda:N or auto.")
    compile: bool = Field(False, description="torch.compile the model (CUDA).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Forward-pass arithmetic: bf16 autocast or fp32; auto is bf16 on CUDA, fp32 on CPU. "
        "Recorded in every checkpoint: a lineage resumes in the precision it started in."
    )
    fuse: int = Field(1, ge=1, description="Lineages trained together in one process.")
    num_workers: int = Field(0, ge=0, description="Data-loading workers (streaming path).")
    checkpoint_every_epochs: int = Field(1, ge=1, description="Progress checkpoint period.")
    report_every_s: float | None = Field(
        300.0, ge=0, description="Within a level, a Tune report at the first progress checkpoint this many "
        "seconds after the trial's last report (0: at every one; null: once per level only)."
    )
    max_device_data_gb: float = Field(
        4.0, gt=0, description="Datasets up to this size live on the training device; larger ones stream."
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from trainables.models import MODELS

        if v not in MODELS:
            raise ValueError(f"unknown model {shown(v)}; expected one of {sorted(MODELS)}")
        return v

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from trainables.data import DATASETS

        if v not in DATASETS:
            raise ValueError(f"unknown dataset {shown(v)}; expected one of {sorted(DATASETS)}")
        return v

    @model_validator(mode="after")
    def _known_options(self) -> LineageSpec:
        from trainables.data import DATASETS, dataset_options
        from trainables.models import MODELS, model_options

        checks = [("model_options", self.model, self.model_options, MODELS, model_options),
                  ("dataset_options", self.dataset, self.dataset_options, DATASETS, dataset_options)]
        for field, name, given, registry, valid_of in checks:
            if name in registry:
                unknown = sorted(set(given) - set(valid_of(name)))
                if unknown:
                    raise ValueError(
                        f"{field}: unknown option {shown(unknown[0])} for {name!r}; "
                        f"expected one of {sorted(valid_of(name))}"
                    )
        return self

    @model_validator(mode="after")
    def _rewind_step_within_training(self) -> LineageSpec:
        if self.prune.rewind == "step" and self.prune.rewind_step < 1:
            raise ValueError("prune.rewind_step must be >= 1 when prune.rewind is 'step'")
        return self
