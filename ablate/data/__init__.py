"""Datasets: the typed view of a raw dataset folder, formats, verification, synthetic data."""

from ablate.data.dataset import Case, Dataset, read_nnunet_raw

__all__ = ["Case", "Dataset", "read_nnunet_raw"]
