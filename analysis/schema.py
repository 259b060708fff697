"""Schemas of the Parquet tables under `<workdir>/tables/` (DESIGN.md, 'Tables')."""
from __future__ import annotations

import pyarrow as pa

TABLES_SCHEMA_VERSION = 1

LINEAGES = pa.schema([
    ("lineage_id", pa.string()), ("config_id", pa.string()), ("model", pa.string()),
    ("dataset", pa.string()), ("seed", pa.int64()), ("schedule", pa.string()), ("rewind", pa.string()),
    ("rate", pa.float64()), ("spec_json", pa.string()), ("schema_version", pa.int32()),
])

SWEEP_LINEAGES = pa.schema([
    ("sweep", pa.string()), ("lineage_id", pa.string()), ("schema_version", pa.int32()),
])

LEVELS = pa.schema([
    ("checkpoint_id", pa.string()), ("lineage_id", pa.string()), ("level", pa.int32()),
    ("sparsity", pa.float64()), ("sparsity_all", pa.float64()), ("test_acc", pa.float64()),
    ("test_loss", pa.float64()), ("train_loss", pa.float64()), ("epochs", pa.float64()),
    ("wall_s", pa.float64()), ("checkpoint_uri", pa.string()), ("mlflow_run_id", pa.string()),
    # Sharpness of the minimum (null until analysed): top Hessian eigenvalue of the training loss
    # on the unpruned weights, and the mean loss increase under relative perturbations of size ε.
    ("hessian_top_eig", pa.float64()), ("perturbed_loss_increase", pa.float64()),
    ("sharpness_epsilon", pa.float64()),
    ("schema_version", pa.int32()),
])

LAYERS = pa.schema([
    ("checkpoint_id", pa.string()), ("layer", pa.string()), ("n_params", pa.int64()),
    ("n_zero", pa.int64()), ("sparsity", pa.float64()), ("schema_version", pa.int32()),
])

# One row per unordered pair of representations (canonical order, self-pairs included) and
# measure; the measure is the Hive partition `measure=<m>`, so it is not a column of the files.
SIMILARITY = pa.schema([
    ("analysis_id", pa.string()),
    ("a_checkpoint_id", pa.string()), ("a_lineage_id", pa.string()), ("a_level", pa.int32()),
    ("a_layer", pa.string()),
    ("b_checkpoint_id", pa.string()), ("b_lineage_id", pa.string()), ("b_level", pa.int32()),
    ("b_layer", pa.string()),
    ("value", pa.float64()), ("n_examples", pa.int64()), ("a_dim", pa.int64()), ("b_dim", pa.int64()),
    ("conv_mode", pa.string()), ("options", pa.string()), ("status", pa.string()),
    ("schema_version", pa.int32()),
])

# PSP-entropy (Tartaglione et al. 2020) of every unit of every probe layer.
NEURONS = pa.schema([
    ("checkpoint_id", pa.string()), ("layer", pa.string()), ("unit", pa.int64()),
    ("entropy", pa.float64()), ("rates", pa.list_(pa.float64())), ("schema_version", pa.int32()),
])

# Locality of the surviving first-layer connections of fully connected models (Pellegrini &
# Biroli 2021); null where undefined (a unit with at most one input).
RECEPTIVE_FIELDS = pa.schema([
    ("checkpoint_id", pa.string()), ("layer", pa.string()), ("unit", pa.int64()),
    ("n_inputs", pa.int64()), ("spread", pa.float64()), ("locality", pa.float64()),
    ("schema_version", pa.int32()),
])

# Histogram of pairwise displacements between surviving inputs of the same unit, summed over units.
DISPLACEMENTS = pa.schema([
    ("checkpoint_id", pa.string()), ("layer", pa.string()), ("distance", pa.float64()),
    ("same_channel", pa.int64()), ("cross_channel", pa.int64()), ("schema_version", pa.int32()),
])

SCHEMAS = {
    "lineages": LINEAGES,
    "sweep_lineages": SWEEP_LINEAGES,
    "levels": LEVELS,
    "layers": LAYERS,
    "similarity": SIMILARITY,
    "neurons": NEURONS,
    "receptive_fields": RECEPTIVE_FIELDS,
    "displacements": DISPLACEMENTS,
}
