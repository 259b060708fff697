"""Figures of a sweep's tables: pure functions from polars frames (or masks) to matplotlib Figures.

Built with the object-oriented `matplotlib.figure.Figure` API, so no backend or global pyplot
state is involved; `Figure.savefig(path)` renders PNG with Agg. Functions raise `ValueError`
when given no rows to draw, naming what was missing.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.figure import Figure

_SPARSITY_LABEL = "sparsity (fraction of prunable weights at zero)"
_CONFIG_FIELDS = ("model", "dataset", "schedule", "rewind", "rate")
_HIST_BINS = 30
_MAX_ANNOTATED_LAYERS = 8  # heatmap cells carry their value as text up to this many layers


def accuracy_vs_sparsity(levels: pl.DataFrame, lineages: pl.DataFrame) -> Figure:
    """Test accuracy against sparsity: one line per config (mean over seeds, band ± std)."""
    df = _with_config(levels, lineages, "lineage_id")
    if df.is_empty():
        raise ValueError("accuracy_vs_sparsity: no levels to plot")
    stats = (df.group_by("config_id", "level")
             .agg(pl.col("sparsity").mean(), pl.col("test_acc").mean().alias("mean"),
                  pl.col("test_acc").std().fill_null(0.0).alias("std"))
             .sort("config_id", "level"))
    labels = config_labels(lineages)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    colors = colormaps["tab10"]
    for i, (config,) in enumerate(stats.select("config_id").unique(maintain_order=True).iter_rows()):
        part = stats.filter(pl.col("config_id") == config)
        _line_with_band(ax, part, labels.get(config, config), colors(i % 10), marker="o")
    ax.set_xlabel(_SPARSITY_LABEL)
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs sparsity (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def similarity_vs_sparsity(similarity: pl.DataFrame, levels: pl.DataFrame, measure: str, *,
                           lineages: pl.DataFrame | None = None) -> Figure:
    """Similarity of each layer to the same layer of its own lineage's dense network, against the
    sparsity of the pruned checkpoint: one panel per config, one line per layer (mean over
    seeds, band ± std). Level 0 is the dense network compared with itself."""
    rows = _of_measure(similarity, measure).filter(
        (pl.col("a_lineage_id") == pl.col("b_lineage_id")) & (pl.col("a_level") == 0)
        & (pl.col("a_layer") == pl.col("b_layer")))
    rows = rows.join(levels.select(pl.col("checkpoint_id").alias("b_checkpoint_id"), "sparsity"),
                     on="b_checkpoint_id", how="inner")
    rows = _with_config(rows.rename({"b_lineage_id": "lineage_id"}), lineages, "lineage_id").drop_nulls("value")
    if rows.is_empty():
        raise ValueError(f"similarity_vs_sparsity: no defined similarity-to-dense values for measure {measure!r}")
    stats = (rows.group_by("config_id", "a_layer", "b_level")
             .agg(pl.col("sparsity").mean(), pl.col("value").mean().alias("mean"),
                  pl.col("value").std().fill_null(0.0).alias("std"))
             .sort("config_id", "b_level"))
    configs = stats["config_id"].unique(maintain_order=True).to_list()
    labels = config_labels(lineages) if lineages is not None else {}
    fig, axes = _panels(len(configs), sharey=True)
    layers = sort_layers(stats["a_layer"].unique().to_list())
    colors = colormaps["viridis"]
    for ax, config in zip(axes, configs):
        part = stats.filter(pl.col("config_id") == config)
        for i, layer in enumerate(layers):
            line = part.filter(pl.col("a_layer") == layer)
            if not line.is_empty():
                _line_with_band(ax, line, layer, colors(i / max(len(layers) - 1, 1)), marker=".")
        ax.set_title(labels.get(config, config), fontsize="medium")
        ax.set_xlabel(_SPARSITY_LABEL)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{measure} to the dense network")
    axes[0].legend(title="layer", fontsize="small")
    fig.suptitle(f"{measure}: each layer vs the same layer of its dense network")
    return fig


def layer_heatmap(similarity: pl.DataFrame, measure: str, a_checkpoint: str, b_checkpoint: str) -> Figure | None:
    """L×L similarity between every layer of `a_checkpoint` (rows) and every layer of
    `b_checkpoint` (columns); None unless every pair was computed (analysis `layers: all`).
    An undefined (null) value is left blank."""
    rows = _of_measure(similarity, measure)
    pair = rows.filter(((pl.col("a_checkpoint_id") == a_checkpoint) & (pl.col("b_checkpoint_id") == b_checkpoint))
                       | ((pl.col("a_checkpoint_id") == b_checkpoint) & (pl.col("b_checkpoint_id") == a_checkpoint)))
    cells: dict[tuple[str, str], float] = {}
    for a_ckpt, a_layer, b_layer, value in pair.select("a_checkpoint_id", "a_layer", "b_layer", "value").iter_rows():
        row, col = (a_layer, b_layer) if a_ckpt == a_checkpoint else (b_layer, a_layer)
        cells[(row, col)] = math.nan if value is None else value
        if a_checkpoint == b_checkpoint:  # stored once per unordered pair: mirror it
            cells[(col, row)] = cells[(row, col)]
    row_layers = sort_layers({r for r, _ in cells})
    col_layers = sort_layers({c for _, c in cells})
    if len(row_layers) < 2 or any((r, c) not in cells for r in row_layers for c in col_layers):
        return None
    matrix = np.array([[cells[(r, c)] for c in col_layers] for r in row_layers])
    finite = matrix[np.isfinite(matrix)]
    in_unit = finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1)
    size = 2.2 + 0.45 * max(len(row_layers), len(col_layers))
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="magma", vmin=0 if in_unit else None, vmax=1 if in_unit else None)
    ax.set_xticks(range(len(col_layers)), col_layers, rotation=45, ha="right")
    ax.set_yticks(range(len(row_layers)), row_layers)
    ax.set_xlabel(f"layer of {b_checkpoint}")
    ax.set_ylabel(f"layer of {a_checkpoint}")
    if max(len(row_layers), len(col_layers)) <= _MAX_ANNOTATED_LAYERS:
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                        color="white" if not in_unit or value < 0.6 else "black")
    fig.colorbar(image, ax=ax, label=measure)
    ax.set_title(f"{measure}: {a_checkpoint} vs {b_checkpoint}", fontsize="medium")
    return fig


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
    fig, axes = _panels(len(layers), sharey=True)
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
                            lineages: pl.DataFrame | None = None) -> Figure:
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
    df = _with_config(df, lineages, "lineage_id")
    stats = (df.group_by("config_id", "layer", "level", "distance")
             .agg(pl.col("same_channel").sum(), pl.col("cross_channel").sum(), pl.col("sparsity").mean())
             .sort("config_id", "layer", "level", "distance"))
    kinds = [("same_channel", "same channel")]
    if stats["cross_channel"].sum() > 0:
        kinds.append(("cross_channel", "different channel"))
    depth = {layer: i for i, layer in enumerate(sort_layers(stats["layer"].unique().to_list()))}
    panels = sorted(set(stats.select("config_id", "layer").iter_rows()), key=lambda k: (k[0], depth[k[1]]))
    labels = config_labels(lineages) if lineages is not None and not lineages.is_empty() else {}
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


def config_labels(lineages: pl.DataFrame) -> dict[str, str]:
    """Short legend label per config_id: the descriptive fields that differ between configs
    (model, dataset, schedule, rewind, rate), plus the id when those do not tell them apart."""
    configs = lineages.unique("config_id", keep="first", maintain_order=True).sort("config_id")
    fields = [f for f in _CONFIG_FIELDS if f in configs.columns and configs[f].n_unique() > 1]
    if len(configs) == 1:
        fields = [f for f in _CONFIG_FIELDS if f in configs.columns]
    labels = {}
    for row in configs.iter_rows(named=True):
        parts = [f"{f}={row[f]}" if f in ("rewind", "rate") else str(row[f]) for f in fields]
        labels[row["config_id"]] = ", ".join(parts)
    if len(set(labels.values())) < len(labels) or not fields:  # configs differing elsewhere (e.g. lr)
        labels = {k: f"{v} ({k})" if v else k for k, v in labels.items()}
    return labels


def sort_layers(layers) -> list[str]:
    """Layer names in natural order (fc2 before fc10), a stand-in for depth."""
    def key(name: str) -> list:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    return sorted(layers, key=key)


def _with_config(df: pl.DataFrame, lineages: pl.DataFrame | None, on: str) -> pl.DataFrame:
    """`df` with a config_id column: from `lineages` when given, else from the lineage id
    (`<config_id>-s<seed>`)."""
    if lineages is not None and not lineages.is_empty():
        return df.join(lineages.select("lineage_id", "config_id").rename({"lineage_id": on}), on=on, how="inner")
    return df.with_columns(pl.col(on).str.replace(r"-s\d+$", "").alias("config_id"))


def _of_measure(similarity: pl.DataFrame, measure: str) -> pl.DataFrame:
    if "measure" in similarity.columns:
        return similarity.filter(pl.col("measure") == measure)
    return similarity


def _line_with_band(ax, stats: pl.DataFrame, label: str, color, *, marker: str) -> None:
    """Plot columns sparsity/mean with a ± std band (no band when there is one seed)."""
    x, y, s = (stats[c].to_numpy() for c in ("sparsity", "mean", "std"))
    ax.plot(x, y, marker=marker, color=color, label=label)
    if np.any(s > 0):
        ax.fill_between(x, y - s, y + s, color=color, alpha=0.2, linewidth=0)


def _panels(n: int, *, sharey: bool) -> tuple[Figure, list]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.6 * cols + 0.6, 3.8 * rows + 0.5), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _distributions(df: pl.DataFrame, column: str, xlabel: str, title: str) -> Figure:
    """One panel per layer, a density line per level over bins shared within the panel."""
    layers = sort_layers(df["layer"].unique().to_list())
    level_list = sorted(df["level"].unique().to_list())
    colors = colormaps["viridis"]
    fig, axes = _panels(len(layers), sharey=False)
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
