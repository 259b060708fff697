"""Figures from synthetic tables: one line per config or layer, x data = sparsities, labels."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from matplotlib.figure import Figure

from analysis import plots, unit_plots
from analysis.tables import to_arrow

SPARSITY = [0.0, 0.2, 0.36]
LAYERS = ["fc10", "fc2", "fc1"]  # natural order is fc1, fc2, fc10


def _frame(rows: list[dict], name: str) -> pl.DataFrame:
    return pl.from_arrow(to_arrow(rows, name))


def _lineages(configs=("cA", "cB"), seeds=(0, 1)) -> pl.DataFrame:
    schedules = {"cA": "imp", "cB": "oneshot"}
    return _frame([{"lineage_id": f"{c}-s{s}", "config_id": c, "model": "lenet_300_100", "dataset": "digits",
                    "seed": s, "schedule": schedules.get(c, "imp"), "rewind": "init", "rate": 0.2,
                    "spec_json": "{}"} for c in configs for s in seeds], "lineages")


def _levels(lineages: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for lid, seed in lineages.select("lineage_id", "seed").iter_rows():
        for level, sparsity in enumerate(SPARSITY):
            rows.append({"checkpoint_id": f"{lid}/L{level:02d}", "lineage_id": lid, "level": level,
                         "sparsity": sparsity, "test_acc": 0.9 - 0.1 * level + 0.01 * seed})
    return _frame(rows, "levels")


def _similarity(levels: pl.DataFrame, *, all_layers: bool = False) -> pl.DataFrame:
    """Each checkpoint vs its lineage's dense level, same layer (value 1 - level/10 - seed/100);
    with `all_layers`, also every layer pair of dense vs L02 of the first lineage."""
    rows = []
    for cid, lid, level in levels.select("checkpoint_id", "lineage_id", "level").iter_rows():
        seed = int(lid.rsplit("-s", 1)[1])
        for layer in LAYERS:
            rows.append(_sim_row(f"{lid}/L00", cid, layer, layer, 1 - level / 10 - seed / 100))
    if all_layers:
        a, b = "cA-s0/L00", "cA-s0/L02"
        rows += [_sim_row(a, b, la, lb, 0.5) for la in LAYERS for lb in LAYERS if la != lb]
    # a cross-lineage row must not enter the similarity-to-dense figure
    rows.append(_sim_row("cA-s0/L00", "cA-s1/L01", "fc1", "fc1", -5.0))
    frame = _frame(rows, "similarity").with_columns(pl.lit("linear_cka").alias("measure"))
    other = frame.with_columns(pl.lit("pwcca").alias("measure"), pl.lit(-9.0).alias("value"))
    return pl.concat([frame, other])


def _sim_row(a: str, b: str, a_layer: str, b_layer: str, value: float | None) -> dict:
    return {"analysis_id": "a1", "a_checkpoint_id": a, "a_lineage_id": a.split("/")[0], "a_level": int(a[-2:]),
            "a_layer": a_layer, "b_checkpoint_id": b, "b_lineage_id": b.split("/")[0], "b_level": int(b[-2:]),
            "b_layer": b_layer, "value": value, "status": "ok"}


def _lines(ax) -> list:
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_accuracy_vs_sparsity_has_one_line_per_config_with_mean_over_seeds():
    lineages = _lineages()
    fig = plots.accuracy_vs_sparsity(_levels(lineages), lineages)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    lines = _lines(ax)
    assert [line.get_label() for line in lines] == ["imp", "oneshot"]
    for line in lines:
        np.testing.assert_allclose(line.get_xdata(), SPARSITY)
        np.testing.assert_allclose(line.get_ydata(), [0.905, 0.805, 0.705])
    assert "sparsity" in ax.get_xlabel() and ax.get_ylabel() == "test accuracy"
    assert len(ax.collections) == 2  # a ± std band per config (two seeds differ)


def test_similarity_vs_sparsity_is_one_panel_per_config_and_one_line_per_layer():
    lineages = _lineages()
    levels = _levels(lineages)
    fig = plots.similarity_vs_sparsity(_similarity(levels), levels, measure="linear_cka", lineages=lineages)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["imp", "oneshot"]
    for ax in axes:
        lines = _lines(ax)
        assert [line.get_label() for line in lines] == ["fc1", "fc2", "fc10"]
        for line in lines:
            np.testing.assert_allclose(line.get_xdata(), SPARSITY)
            np.testing.assert_allclose(line.get_ydata(), [0.995, 0.895, 0.795])  # mean over seeds 0, 1
    assert "linear_cka" in axes[0].get_ylabel()


def test_similarity_vs_sparsity_without_defined_dense_rows_raises():
    lineages = _lineages()
    levels = _levels(lineages)
    with pytest.raises(ValueError, match="nbs"):
        plots.similarity_vs_sparsity(_similarity(levels), levels, measure="nbs", lineages=lineages)
    undefined = _similarity(levels).with_columns(pl.lit(None, pl.Float64).alias("value"))
    with pytest.raises(ValueError, match="linear_cka"):
        plots.similarity_vs_sparsity(undefined, levels, measure="linear_cka", lineages=lineages)


def test_layer_heatmap_is_l_by_l_only_when_every_pair_exists():
    lineages = _lineages()
    levels = _levels(lineages)
    assert plots.layer_heatmap(_similarity(levels), measure="linear_cka", a_checkpoint="cA-s0/L00",
                               b_checkpoint="cA-s0/L02") is None
    fig = plots.layer_heatmap(_similarity(levels, all_layers=True), measure="linear_cka", a_checkpoint="cA-s0/L02",
                              b_checkpoint="cA-s0/L00")
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (3, 3)
    # rows are layers of the first argument (L02, level 2 of seed 0: 0.8 on the diagonal)
    np.testing.assert_allclose(np.diag(image), 0.8)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["fc1", "fc2", "fc10"]


def test_layer_heatmap_of_a_checkpoint_with_itself_mirrors_the_stored_half():
    rows = [_sim_row("x-s0/L00", "x-s0/L00", a, b, v)
            for a, b, v in [("fc1", "fc1", 1.0), ("fc1", "fc2", 0.3), ("fc2", "fc2", 1.0)]]
    sim = _frame(rows, "similarity")
    image = plots.layer_heatmap(sim, measure="m", a_checkpoint="x-s0/L00", b_checkpoint="x-s0/L00").axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(image, [[1.0, 0.3], [0.3, 1.0]])


def test_entropy_distributions_has_a_panel_per_layer_and_a_line_per_level():
    lineages = _lineages(configs=("cA",))
    levels = _levels(lineages)
    rng = np.random.default_rng(0)
    rows = [{"checkpoint_id": cid, "layer": layer, "unit": u, "entropy": float(rng.uniform(0, 10)), "rates": [0.5]}
            for cid in levels["checkpoint_id"] for layer in ("fc1_relu", "fc2_relu") for u in range(20)]
    fig = unit_plots.entropy_distributions(_frame(rows, "neurons"), levels)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["fc1_relu", "fc2_relu"]
    assert all(len(_lines(ax)) == len(SPARSITY) for ax in axes)
    assert _lines(axes[0])[2].get_label() == "L2 (sparsity 0.36)"


def test_locality_by_level_has_a_box_per_level_and_drops_undefined_values():
    lineages = _lineages(configs=("cA",), seeds=(0,))
    levels = _levels(lineages)
    rows = [{"checkpoint_id": cid, "layer": "fc1", "unit": u, "n_inputs": 5, "spread": 1.0,
             "locality": None if u == 0 else 0.1 * u} for cid in levels["checkpoint_id"] for u in range(4)]
    fig = unit_plots.locality_by_level(_frame(rows, "receptive_fields"), levels)
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["L0\n0.00", "L1\n0.20", "L2\n0.36"]
    with pytest.raises(ValueError, match="locality"):
        unit_plots.locality_by_level(_frame(rows[:1], "receptive_fields"), levels)


def _displacements(levels: pl.DataFrame, *, cross: bool) -> pl.DataFrame:
    """Per checkpoint: pair counts at distances 0.25 (bin 0), 1, 2, 3; sparser levels closer."""
    rows = []
    for cid, level in levels.select("checkpoint_id", "level").iter_rows():
        for d, distance in enumerate([0.25, 1.0, 2.0, 3.0]):
            same = 0 if d == 0 else (10 + 5 * level) // d
            rows.append({"checkpoint_id": cid, "layer": "fc1", "distance": distance, "same_channel": same,
                         "cross_channel": (4 + d) if cross else 0})
    return _frame(rows, "displacements")


@pytest.mark.parametrize("cross", [False, True])
def test_displacement_histograms_have_a_line_per_level_and_a_column_per_channel_kind(cross):
    lineages = _lineages(configs=("cA",))
    levels = _levels(lineages)
    fig = unit_plots.displacement_histograms(_displacements(levels, cross=cross), levels, lineages=lineages)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == (2 if cross else 1)
    assert "same channel" in axes[0].get_title() and (not cross or "different channel" in axes[1].get_title())
    lines = _lines(axes[0])
    assert [line.get_label() for line in lines] == [f"L{lv} (sparsity {sp:.2f})" for lv, sp in enumerate(SPARSITY)]
    for line in lines:  # fractions of each level's pairs, pooled over both seeds
        assert line.get_ydata().sum() == pytest.approx(1.0)
    np.testing.assert_allclose(lines[0].get_xdata(), [0.25, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(lines[0].get_ydata(), np.array([0, 10, 5, 3]) / 18)


def test_displacement_histograms_without_counts_raise():
    lineages = _lineages()
    levels = _levels(lineages)
    with pytest.raises(ValueError, match="no displacement counts"):
        unit_plots.displacement_histograms(_frame([], "displacements"), levels, lineages=lineages)
    zeros = _displacements(levels, cross=False).with_columns(pl.lit(0).alias("same_channel"))
    with pytest.raises(ValueError, match="no displacement counts"):
        unit_plots.displacement_histograms(zeros, levels, lineages=lineages)


@pytest.mark.parametrize("input_shape, picture", [((1, 4, 4), (4, 4)), ((3, 2, 5), (2, 5)), ((12,), (1, 12)),
                                                  ((2, 6), (2, 6))])
def test_receptive_field_images_draw_masks_in_input_space(input_shape, picture):
    n = int(np.prod(input_shape))
    dense = np.ones((5, n), dtype=bool)
    sparse = np.zeros((5, n), dtype=bool)
    sparse[3, :2] = True
    fig = unit_plots.receptive_field_images([("dense", dense), ("sparse", sparse)], input_shape, units=[1, 3])
    assert len(fig.axes) == 4
    images = [ax.get_images()[0].get_array() for ax in fig.axes]
    assert all(im.shape == picture for im in images)
    assert images[0].min() == 1 and images[2].sum() == 0 and images[3].sum() > 0
    assert fig.axes[3].get_title() == "unit 3: 2 in" and fig.axes[2].get_ylabel() == "sparse"


def test_receptive_field_images_reject_a_mask_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"\[units, 16\]"):
        unit_plots.receptive_field_images([("x", np.ones((2, 15), dtype=bool))], (1, 4, 4), units=[0])


def test_config_labels_name_what_differs_and_fall_back_to_the_id():
    assert plots.config_labels(_lineages()) == {"cA": "imp", "cB": "oneshot"}
    same = _lineages().with_columns(pl.lit("imp").alias("schedule"))
    assert plots.config_labels(same) == {"cA": "cA", "cB": "cB"}
    single = plots.config_labels(_lineages(configs=("cA",)))
    assert single == {"cA": "lenet_300_100, digits, imp, rewind=init, rate=0.2"}


def test_empty_inputs_raise_value_error():
    lineages = _lineages()
    with pytest.raises(ValueError, match="no levels"):
        plots.accuracy_vs_sparsity(_levels(lineages).clear(), lineages)
    with pytest.raises(ValueError, match="entropies"):
        unit_plots.entropy_distributions(_frame([], "neurons"), _levels(lineages))


def test_sort_layers_is_natural():
    assert plots.sort_layers(["conv10", "conv2", "fc", "conv1"]) == ["conv1", "conv2", "conv10", "fc"]
