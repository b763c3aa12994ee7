"""Datasets: bundled real data, local files, deterministic splits."""
from leanlm.data.dataset import Splits, TextDataset, make_splits
from leanlm.data.files import load_file
from leanlm.data.registry import DATASETS, DEFAULT_DATASET, dataset_names, load_dataset, load_splits, load_text

__all__ = ["TextDataset", "Splits", "make_splits", "load_file", "DATASETS", "DEFAULT_DATASET",
           "dataset_names", "load_dataset", "load_splits", "load_text"]
