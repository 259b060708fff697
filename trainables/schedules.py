"""Pruning schedules as level plans: what each level prunes from, to which sparsity, for how long.

- imp:     level k prunes level k−1's trained weights by one round (sparsity 1 − (1 − rate)^k);
- aimp:    as imp, but intermediate levels retrain only `aimp_epochs` (Zullich et al. 2021);
- oneshot: level k prunes the dense level 0 to target k at once, then retrains;
- gradual: level k trains from the rewind point while the sparsity ramps to target k on the
           cubic schedule of Zhu & Gupta (2017).
All of them produce one level per sparsity, so schedules compare at equal sparsity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.masks import Masks, apply_masks, dense_masks
from trainables.pruning import cubic_sparsity, magnitude_masks, random_masks_like, rounds_for
from trainables.specs import LineageSpec, PruneSpec


@dataclass(frozen=True)
class GradualRamp:
    """Raises the sparsity of `masks` from 0 to `final` between two steps, every `every` steps."""

    prune: PruneSpec
    final: float
    start_step: int
    end_step: int
    every: int

    def update(self, step: int, *, model: nn.Module, masks: Masks) -> None:
        if step < self.start_step or step > self.end_step:
            return
        if (step - self.start_step) % self.every and step != self.end_step:
            return
        target = cubic_sparsity(step, start_step=self.start_step, end_step=self.end_step, final=self.final)
        if target <= 0:
            return
        masks.update(magnitude_masks(model, masks, spec=self.prune, rounds=rounds_for(target, self.prune.rate)))
        apply_masks(model, masks)


@dataclass(frozen=True)
class LevelPlan:
    level: int
    source_level: int | None  # whose trained weights and masks are pruned; None for level 0
    rounds: float  # IMP rounds' worth of pruning this level ends at
    epochs: int
    lr: float | None = None  # peak learning rate override (rewind: finetune)
    constant_lr: bool = False
    gradual: GradualRamp | None = None


def level_plans(spec: LineageSpec, steps_per_epoch: int = 1) -> list[LevelPlan]:
    """Plans of levels 0..L. `steps_per_epoch` places the gradual ramp in steps."""
    prune, epochs = spec.prune, spec.train.epochs
    plans = [LevelPlan(0, None, 0.0, epochs)]
    lr, constant = None, False
    if prune.rewind == "finetune":
        lr, constant = (prune.finetune_lr or spec.train.lr / 10), True
    sparsities = prune.level_sparsities()
    for k, target in enumerate(sparsities, start=1):
        rounds = rounds_for(target, prune.rate)
        if prune.schedule == "imp":
            plans.append(LevelPlan(k, k - 1, rounds, epochs, lr, constant))
        elif prune.schedule == "aimp":
            level_epochs = epochs if k == len(sparsities) else prune.aimp_epochs
            plans.append(LevelPlan(k, k - 1, rounds, level_epochs, lr, constant))
        elif prune.schedule == "oneshot":
            plans.append(LevelPlan(k, 0, rounds, epochs, lr, constant))
        else:
            total = epochs * steps_per_epoch
            end_epoch = prune.gradual_end_epoch if prune.gradual_end_epoch is not None else 0.75 * epochs
            ramp = GradualRamp(
                prune, target,
                start_step=min(int(prune.gradual_start_epoch * steps_per_epoch), total),
                end_step=min(max(int(end_epoch * steps_per_epoch), 1), total),
                every=prune.gradual_every_steps,
            )
            plans.append(LevelPlan(k, 0, rounds, epochs, lr, constant, ramp))
    return plans


def level_masks(
    spec: LineageSpec, plan: LevelPlan, *, model: nn.Module, source_masks: Masks, generator_seed: int
) -> Masks:
    """Masks a level starts training with; `model` holds the source level's trained weights."""
    if plan.gradual is not None:
        return dense_masks(model, tuple(source_masks))
    masks = magnitude_masks(model, source_masks, spec=spec.prune, rounds=plan.rounds)
    if spec.prune.control == "random_prune":
        counts = {name: int(m.sum()) for name, m in masks.items()}
        generator = torch.Generator().manual_seed(generator_seed)
        masks = random_masks_like(source_masks, counts, generator=generator)
    return masks
