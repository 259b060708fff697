"""Figures of units: the PSP-entropy of units, the locality of first-layer units' surviving
inputs, the distances between those inputs, and the inputs themselves drawn in input space. Pure
functions from polars frames (or masks) to matplotlib Figures, like `analysis.plots`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.figure import Figure

from analysis.plots import config_labels, panels, sort_layers, with_config

_HIST_BINS = 30


def entropy_distributions(neurons: pl.DataFrame, levels: pl.DataFrame) -> Figure:
    """Distribution of units' PSP-entropy per level (pooled over lineages): one panel per layer,
    one density line per level, coloured from dense (dark) to sparsest (light)."""
    df = neurons.join(levels.select("checkpoint_id", "level", "sparsity"), on="checkpoint_id", how="inner")
    df = df.drop_nulls("entropy")
    if df.is_empty():
        raise ValueError("entropy_distributions: no neuron entropies for these levels")
    return _distributions(df, "entropy", "PSP-entropy (bits)", "PSP-entropy of units by level")


def locality_by_level(receptive_fields: pl.DataFrame, levels: pl.DataFrame) -> Figure:
    """Locality of units' surviving inputs per level (box per level, pooled over lineages), one
    panel per layer; 0 is as spread out as a random mask of the same size, 1 a compact patch."""
    df = receptive_fields.join(levels.select("checkpoint_id", "level", "sparsity"), on="checkpoint_id", how="inner")
    df = df.drop_nulls("locality")
    if df.is_empty():
        raise ValueError("locality_by_level: no defined locality values for these levels")
    layers = sort_layers(df["layer"].unique().to_list())
    fig, axes = panels(len(layers), sharey=True)
    for ax, layer in zip(axes, layers):
        part = df.filter(pl.col("layer") == layer)
        by_level = part.group_by("level").agg(pl.col("locality"), pl.col("sparsity").mean()).sort("level")
        data = [np.asarray(v) for v in by_level["locality"].to_list()]
        ticks = [f"L{lv}\n{s:.2f}" for lv, s in zip(by_level["level"], by_level["sparsity"])]
        ax.boxplot(data, positions=range(len(data)), widths=0.6, showfliers=False)
        ax.set_xticks(range(len(data)), ticks)
        ax.axhline(0.0, color="grey", linestyle="--", linewidth=1)
        ax.set_title(layer, fontsize="medium")
        ax.set_xlabel("level / sparsity")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("locality (0 = random mask)")
    fig.suptitle("Locality of surviving first-layer connections by level")
    return fig


def displacement_histograms(displacements: pl.DataFrame, levels: pl.DataFrame, *,
                            lineages: pl.DataFrame) -> Figure:
    """Distances between pairs of one unit's surviving first-layer inputs, by level: one row of
    panels per (config, layer), same-channel pairs left and different-channel pairs right (that
    column only when the inputs have several channels), one line per level (pooled over the
    config's lineages), each the fraction of its pairs at each distance. The dense level keeps
    every input, so its line is what a random mask gives: a sparse level above it at short
    distances has kept local receptive fields."""
    df = displacements.join(levels.select("checkpoint_id", "lineage_id", "level", "sparsity"),
                            on="checkpoint_id", how="inner")
    if df.is_empty() or df.select(pl.col("same_channel").sum() + pl.col("cross_channel").sum()).item() == 0:
        raise ValueError("displacement_histograms: no displacement counts for these levels")
    df = with_config(df, lineages, on="lineage_id")
    stats = (df.group_by("config_id", "layer", "level", "distance")
             .agg(pl.col("same_channel").sum(), pl.col("cross_channel").sum(), pl.col("sparsity").mean())
             .sort("config_id", "layer", "level", "distance"))
    kinds = [("same_channel", "same channel")]
    if stats["cross_channel"].sum() > 0:
        kinds.append(("cross_channel", "different channel"))
    depth = {layer: i for i, layer in enumerate(sort_layers(stats["layer"].unique().to_list()))}
    panels = sorted(set(stats.select("config_id", "layer").iter_rows()), key=lambda k: (k[0], depth[k[1]]))
    labels = config_labels(lineages)
    level_list = sorted(stats["level"].unique().to_list())
    colors = colormaps["viridis"]
    fig = Figure(figsize=(5.2 * len(kinds) + 0.6, 3.6 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), len(kinds), squeeze=False, sharex="row")
    for row, (config, layer) in enumerate(panels):
        part = stats.filter((pl.col("config_id") == config) & (pl.col("layer") == layer))
        for col, (column, title) in enumerate(kinds):
            ax = axes[row][col]
            for lv in level_list:
                line = part.filter(pl.col("level") == lv)
                total = line[column].sum()
                if total == 0:
                    continue
                ax.plot(line["distance"].to_numpy(), line[column].to_numpy() / total, drawstyle="steps-mid",
                        color=colors(lv / max(level_list[-1], 1)),
                        label=f"L{lv} (sparsity {line['sparsity'].mean():.2f})")
            ax.set_title(f"{labels.get(config, config)}: {layer}, {title}", fontsize="medium")
            ax.set_xlabel("distance between the two inputs (pixels)")
            ax.set_ylabel("fraction of pairs")
            ax.grid(alpha=0.3)
    handles = [ax for ax in fig.axes if _lines(ax)]
    if handles:
        handles[0].legend(fontsize="x-small", ncol=1 + len(level_list) // 8)
    fig.suptitle("Pairwise distances of surviving first-layer inputs by level")
    return fig


def _lines(ax) -> list:
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def receptive_field_images(masks: Sequence[tuple[str, np.ndarray]], input_shape: tuple[int, ...], *,
                           units: Sequence[int]) -> Figure:
    """Surviving connections of a few first-layer `units`, drawn in input space: one row per
    (label, mask [units, inputs] bool) in `masks`, one column per unit. Images (C, H, W) show
    the fraction of channels kept at each pixel; 1-D inputs (L,) or (C, L) a strip per channel."""
    if not masks or not units:
        raise ValueError("receptive_field_images: need at least one mask and one unit")
    n_inputs = math.prod(input_shape)
    for label, mask in masks:
        if mask.ndim != 2 or mask.shape[1] != n_inputs:
            raise ValueError(f"mask {label!r} must be [units, {n_inputs}] for input_shape {tuple(input_shape)}; "
                             f"got {tuple(mask.shape)}")
    image_like = len(input_shape) == 3
    cell = (1.6, 1.7) if image_like else (2.4, 1.0)
    fig = Figure(figsize=(cell[0] * len(units) + 1.2, cell[1] * len(masks) + 0.6), layout="constrained")
    axes = fig.subplots(len(masks), len(units), squeeze=False)
    for r, (label, mask) in enumerate(masks):
        for c, unit in enumerate(units):
            ax = axes[r][c]
            kept = np.asarray(mask[unit], dtype=np.float64).reshape(input_shape)
            picture = kept.mean(axis=0) if image_like else kept.reshape(-1, input_shape[-1])
            ax.imshow(picture, cmap="gray_r", vmin=0, vmax=1, aspect="equal" if image_like else "auto",
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"unit {unit}: {int(kept.sum())} in", fontsize="x-small")
            if c == 0:
                ax.set_ylabel(label, fontsize="small")
    fig.suptitle("Surviving first-layer connections in input space (black = kept)")
    return fig


def _distributions(df: pl.DataFrame, column: str, xlabel: str, title: str) -> Figure:
    """One panel per layer, a density line per level over bins shared within the panel."""
    layers = sort_layers(df["layer"].unique().to_list())
    level_list = sorted(df["level"].unique().to_list())
    colors = colormaps["viridis"]
    fig, axes = panels(len(layers), sharey=False)
    for ax, layer in zip(axes, layers):
        part = df.filter(pl.col("layer") == layer)
        values = part[column].to_numpy()
        edges = np.histogram_bin_edges(values, bins=_HIST_BINS)
        centres = (edges[:-1] + edges[1:]) / 2
        for lv in level_list:
            sub = part.filter(pl.col("level") == lv)
            if sub.is_empty():
                continue
            density, _ = np.histogram(sub[column].to_numpy(), bins=edges, density=True)
            ax.plot(centres, density, drawstyle="steps-mid", color=colors(lv / max(level_list[-1], 1)),
                    label=f"L{lv} (sparsity {sub['sparsity'].mean():.2f})")
        ax.set_title(layer, fontsize="medium")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize="x-small")
    fig.suptitle(title)
    return fig
