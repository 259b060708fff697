"""Figures of a sweep's accuracy and layer similarity, and the building blocks every figure of
the report shares (`analysis.unit_plots` draws the units): pure functions from polars frames to
matplotlib Figures.

Built with the object-oriented `matplotlib.figure.Figure` API, so no backend or global pyplot
state is involved; `Figure.savefig(path)` renders PNG with Agg. Functions raise `ValueError`
when given no rows to draw, naming what was missing.
"""
from __future__ import annotations

import math
import re

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.figure import Figure

_SPARSITY_LABEL = "sparsity (fraction of prunable weights at zero)"
_CONFIG_FIELDS = ("model", "dataset", "schedule", "rewind", "rate")
_MAX_ANNOTATED_LAYERS = 8  # heatmap cells carry their value as text up to this many layers


def accuracy_vs_sparsity(levels: pl.DataFrame, lineages: pl.DataFrame) -> Figure:
    """Test accuracy against sparsity: one line per config (mean over seeds, band ± std)."""
    df = with_config(levels, lineages, on="lineage_id")
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


def similarity_vs_sparsity(similarity: pl.DataFrame, levels: pl.DataFrame, *, measure: str,
                           lineages: pl.DataFrame) -> Figure:
    """Similarity of each layer to the same layer of its own lineage's dense network, against the
    sparsity of the pruned checkpoint: one panel per config, one line per layer (mean over
    seeds, band ± std). Level 0 is the dense network compared with itself."""
    rows = _of_measure(similarity, measure).filter(
        (pl.col("a_lineage_id") == pl.col("b_lineage_id")) & (pl.col("a_level") == 0)
        & (pl.col("a_layer") == pl.col("b_layer")))
    rows = rows.join(levels.select(pl.col("checkpoint_id").alias("b_checkpoint_id"), "sparsity"),
                     on="b_checkpoint_id", how="inner")
    rows = with_config(rows.rename({"b_lineage_id": "lineage_id"}), lineages, on="lineage_id").drop_nulls("value")
    if rows.is_empty():
        raise ValueError(f"similarity_vs_sparsity: no defined similarity-to-dense values for measure {measure!r}")
    stats = (rows.group_by("config_id", "a_layer", "b_level")
             .agg(pl.col("sparsity").mean(), pl.col("value").mean().alias("mean"),
                  pl.col("value").std().fill_null(0.0).alias("std"))
             .sort("config_id", "b_level"))
    configs = stats["config_id"].unique(maintain_order=True).to_list()
    labels = config_labels(lineages)
    fig, axes = panels(len(configs), sharey=True)
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


def layer_heatmap(similarity: pl.DataFrame, *, measure: str, a_checkpoint: str, b_checkpoint: str) -> Figure | None:
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


def with_config(df: pl.DataFrame, lineages: pl.DataFrame, *, on: str) -> pl.DataFrame:
    """`df` with the config_id of its lineage id column `on`, from the `lineages` table (rows of
    lineages it does not hold are dropped)."""
    return df.join(lineages.select("lineage_id", "config_id").rename({"lineage_id": on}), on=on, how="inner")


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


def panels(n: int, *, sharey: bool) -> tuple[Figure, list]:
    """A figure of `n` panels, at most three a row; returns it and its `n` axes."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.6 * cols + 0.6, 3.8 * rows + 0.5), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]
