"""The sections of the sweep report: what each shows (figures saved as PNG, HTML tables and
notes) of the tables of one sweep. `analysis.report` puts them on the page."""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import polars as pl

from analysis import plots, unit_plots

_HEATMAPS_PER_MEASURE = 3  # L×L heatmaps drawn per measure (dense vs sparsest, one lineage per config)
_RF_CONFIGS = 3  # configs whose receptive fields are drawn
_RF_UNITS = 6  # hidden units drawn per config, spanning the range of inputs kept at the sparsest level


@dataclass(frozen=True)
class Item:
    """One entry of a section: a figure file with its caption, an HTML table, or a note."""

    png: str = ""
    caption: str = ""
    table: str = ""  # already escaped HTML
    note: str = ""


def sections(frames: dict[str, pl.DataFrame], folder: Path) -> list[tuple[str, list[Item]]]:
    """The report's sections after the lineage summary, each a title and its items; figures are
    saved into `folder`."""
    levels, lineages = frames["levels"], frames["lineages"]
    sections = [("Accuracy", _accuracy_items(levels, lineages, folder))]
    similarity = frames["similarity"]
    measures = sorted(similarity["measure"].unique().drop_nulls().to_list()) if not similarity.is_empty() else []
    if not measures:
        sections.append(("Similarity", [Item(note="No similarity table for this sweep: run `impsweep analyze`.")]))
    for measure in measures:
        rows = _one_analysis(similarity.filter(pl.col("measure") == measure))
        sections.append((f"Similarity: {measure}", _similarity_items(rows, levels, lineages, measure, folder)))
    sections.append(("PSP-entropy", _entropy_items(frames["neurons"], levels, folder)))
    sections.append(("Receptive fields", _receptive_items(frames["receptive_fields"], levels, lineages, folder)
                     + _displacement_items(frames["displacements"], levels, lineages, folder)))
    return sections


def _save(fig, folder: Path, name: str) -> str:
    png = f"{name}.png"
    fig.savefig(folder / png, dpi=110)
    return png


def _accuracy_items(levels: pl.DataFrame, lineages: pl.DataFrame, folder: Path) -> list[Item]:
    if levels.is_empty():
        return [Item(note="No levels recorded for this sweep yet.")]
    png = _save(plots.accuracy_vs_sparsity(levels, lineages), folder, "accuracy_vs_sparsity")
    by_level = (levels.join(lineages.select("lineage_id", "config_id"), on="lineage_id")
                .group_by("config_id", "level")
                .agg(pl.len().alias("seeds"), pl.col("sparsity").mean(), pl.col("test_acc").mean().alias("acc_mean"),
                     pl.col("test_acc").std().alias("acc_std"), pl.col("hessian_top_eig").mean(),
                     pl.col("perturbed_loss_increase").mean())
                .sort("config_id", "level"))
    by_level = by_level.drop([c for c in ("hessian_top_eig", "perturbed_loss_increase")
                              if by_level[c].null_count() == len(by_level)])
    return [Item(png=png, caption="Test accuracy against sparsity for each configuration: mean over seeds, "
                                   "shaded band ± one standard deviation."),
            Item(table=html_table(by_level, caption="Accuracy by level (mean and std over seeds)"))]


def _one_analysis(rows: pl.DataFrame) -> pl.DataFrame:
    """Rows of the analysis with the most rows, so that two analyses (e.g. probe sizes) of one
    measure are never averaged together."""
    counts = rows.group_by("analysis_id").len().sort(["len", "analysis_id"], descending=[True, False])
    return rows.filter(pl.col("analysis_id") == counts["analysis_id"][0])


def _similarity_items(rows: pl.DataFrame, levels: pl.DataFrame, lineages: pl.DataFrame, measure: str,
                      folder: Path) -> list[Item]:
    safe = _safe_name(measure)
    items: list[Item] = []
    try:
        fig = plots.similarity_vs_sparsity(rows, levels, measure=measure, lineages=lineages)
    except ValueError:
        items.append(Item(note="No defined same-layer comparison with the dense network for this measure "
                                "(it needs analysis scope `dense`, `lineage` or `all`)."))
    else:
        items.append(Item(png=_save(fig, folder, f"similarity_vs_sparsity_{safe}"),
                           caption=f"{measure} between each layer and the same layer of its own lineage's dense "
                                   "network, against sparsity: mean over seeds, band ± one std."))
        items.append(Item(table=html_table(_to_dense_table(rows, levels),
                                            caption=f"Mean {measure} to the dense network, by layer and level")))
    drawn = 0
    for a, b in _heatmap_pairs(levels, lineages):
        fig = plots.layer_heatmap(rows, measure=measure, a_checkpoint=a, b_checkpoint=b)
        if fig is None:
            continue
        drawn += 1
        items.append(Item(png=_save(fig, folder, f"heatmap_{safe}_{drawn}"),
                           caption=f"{measure} between every layer of the dense {a} (rows) and every layer of "
                                   f"its sparsest level {b} (columns)."))
        if drawn == _HEATMAPS_PER_MEASURE:
            break
    if drawn == 0:
        items.append(Item(note="No layer×layer heatmap: it needs every layer pair (analysis `layers: all`)."))
    return items


def _to_dense_table(rows: pl.DataFrame, levels: pl.DataFrame) -> pl.DataFrame:
    same = rows.filter((pl.col("a_lineage_id") == pl.col("b_lineage_id")) & (pl.col("a_level") == 0)
                       & (pl.col("a_layer") == pl.col("b_layer")))
    table = same.group_by("a_layer", "b_level").agg(pl.col("value").mean()).rename({"a_layer": "layer"})
    order = {layer: i for i, layer in enumerate(plots.sort_layers(table["layer"].unique().to_list()))}
    wide = table.sort("b_level").pivot(on="b_level", index="layer", values="value")
    wide = wide.rename({c: f"L{c}" for c in wide.columns if c != "layer"})
    return wide.sort(pl.col("layer").replace_strict(order, return_dtype=pl.Int64))


def _heatmap_pairs(levels: pl.DataFrame, lineages: pl.DataFrame) -> list[tuple[str, str]]:
    """(dense, sparsest) checkpoint ids of the first lineage of each config."""
    first = lineages.sort("lineage_id").unique("config_id", keep="first").sort("config_id")
    pairs = []
    for lid in first["lineage_id"]:
        own = levels.filter(pl.col("lineage_id") == lid).sort("level")
        if len(own) >= 2 and own["level"][0] == 0:
            pairs.append((own["checkpoint_id"][0], own["checkpoint_id"][-1]))
    return pairs


def _entropy_items(neurons: pl.DataFrame, levels: pl.DataFrame, folder: Path) -> list[Item]:
    if neurons.drop_nulls("entropy").is_empty():
        return [Item(note="No neurons table (PSP-entropy) for this sweep.")]
    png = _save(unit_plots.entropy_distributions(neurons, levels), folder, "entropy_distributions")
    return [Item(png=png, caption="Distribution of units' PSP-entropy per level, pooled over lineages: "
                                   "low entropy means a unit is consistently on or off within each class.")]


def _receptive_items(rf: pl.DataFrame, levels: pl.DataFrame, lineages: pl.DataFrame, folder: Path) -> list[Item]:
    items: list[Item] = []
    first = lineages.sort("lineage_id").unique("config_id", keep="first").sort("config_id").head(_RF_CONFIGS)
    shapes: dict[str, tuple] = {}
    for i, row in enumerate(first.iter_rows(named=True)):
        own = levels.filter(pl.col("lineage_id") == row["lineage_id"]).sort("level")
        if len(own) < 2:
            continue
        try:
            masks, shape, units = _first_layer_masks(own.row(0, named=True), own.row(-1, named=True), row, shapes)
        except Exception as err:  # one unreadable checkpoint or conv model must not stop the report
            items.append(Item(note=f"{row['lineage_id']}: no receptive-field images ({err})."))
            continue
        png = _save(unit_plots.receptive_field_images(masks, shape, units=units), folder, f"receptive_fields_{i + 1}")
        items.append(Item(png=png, caption=f"{row['lineage_id']}: surviving first-layer connections of a few hidden "
                                            "units in input space, dense level (top) vs sparsest level (bottom)."))
    if rf.drop_nulls("locality").is_empty():
        items.append(Item(note="No receptive_fields table (locality) for this sweep."))
    else:
        items.append(Item(png=_save(unit_plots.locality_by_level(rf, levels), folder, "locality_by_level"),
                           caption="Locality of each unit's surviving inputs by level, pooled over lineages "
                                   "(0 = as spread out as a random mask, 1 = a compact patch)."))
    return items


def _displacement_items(displacements: pl.DataFrame, levels: pl.DataFrame, lineages: pl.DataFrame,
                        folder: Path) -> list[Item]:
    try:
        fig = unit_plots.displacement_histograms(displacements, levels, lineages=lineages)
    except ValueError:
        return [Item(note="No displacements table (distances between surviving first-layer inputs) "
                           "for this sweep: it needs a fully connected first layer.")]
    return [Item(png=_save(fig, folder, "displacement_histograms"),
                  caption="Distances between pairs of surviving inputs of one first-layer unit, by level, pooled "
                          "over lineages (fraction of each level's pairs; same input channel left, different "
                          "channels right when the inputs have several). The dense level keeps every input, so "
                          "its line is the random-mask baseline: sparse levels above it at short distances have "
                          "kept local receptive fields.")]


def _first_layer_masks(dense: dict, sparse: dict, lineage: dict, shapes: dict[str, tuple]
                       ) -> tuple[list[tuple[str, np.ndarray]], tuple[int, ...], list[int]]:
    """([(label, first-layer mask [units, inputs])] of two levels, input shape, units to draw)."""
    from analysis.receptive_fields import first_layer_mask
    from trainables.checkpoints import load_checkpoint
    from trainables.data import load_dataset
    from trainables.models import build_model

    spec = json.loads(lineage["spec_json"])
    out, model = [], None
    for level in (dense, sparse):
        uri = level["checkpoint_uri"]
        checkpoint = load_checkpoint(unquote(urlparse(uri).path) if uri.startswith("file:") else uri)
        masks = checkpoint.masks
        if next(iter(masks.values())).ndim != 2:  # a conv first layer: no need to load the data
            raise ValueError(f"model {spec['model']!r} does not start with a fully connected layer")
        if model is None:
            key = json.dumps([spec["dataset"], spec.get("dataset_options")], sort_keys=True)
            if key not in shapes:
                root = (checkpoint.spec or {}).get("data_root")  # a runtime field: in the full spec only
                info = load_dataset(spec["dataset"], options=spec.get("dataset_options"), data_root=root).info
                shapes[key] = (tuple(info.input_shape), info.num_classes)
            model = build_model(spec["model"], input_shape=shapes[key][0], num_classes=shapes[key][1],
                                options=spec.get("model_options"))
        layer, mask = first_layer_mask(model, masks)
        out.append((f"L{level['level']} {layer} (sparsity {level['sparsity']:.2f})", mask.numpy()))
    # Units at evenly spaced ranks of surviving inputs (dead units left out): typical, not extreme.
    kept = out[-1][1].sum(axis=1)
    ranked = [u for u in np.argsort(-kept, kind="stable").tolist() if kept[u] > 0] or [0]
    picks = np.linspace(0, len(ranked) - 1, min(_RF_UNITS, len(ranked))).round().astype(int)
    units = sorted({ranked[i] for i in picks})
    return out, shapes[key][0], units


def html_table(df: pl.DataFrame, *, caption: str = "") -> str:
    """`df` as an escaped HTML table; floats with 4 significant digits, nulls blank."""
    e = html.escape

    def cell(value) -> str:
        if value is None:
            return "<td></td>"
        if isinstance(value, float):
            return f"<td>{value:.4g}</td>"
        return f"<td class=\"text\">{e(str(value))}</td>" if isinstance(value, str) else f"<td>{e(str(value))}</td>"

    head = "".join(f"<th>{e(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in df.iter_rows())
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
