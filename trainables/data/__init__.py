"""Datasets as in-memory tensors: registry and loading, probe sets, and epoch batches.

The whole dataset lives on one device and each epoch is drawn from it in bulk, which suits
every dataset here (CIFAR-100 is 0.7 GB as float32). Datasets larger than a device would
need a streaming path, which does not exist yet.
"""

from trainables.data.registry import DATASETS, dataset_options, load_dataset
from trainables.data.sampling import epoch_batches, probe_set
from trainables.data.splits import DatasetInfo, Splits

__all__ = ["DATASETS", "DatasetInfo", "Splits", "dataset_options", "epoch_batches", "load_dataset", "probe_set"]
