"""The ``ecg`` pipeline's data: PTB-XL folds as a DataModule, and ProtoECGNet's label-to-branch partition."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from medml.data.ptbxl import PTBXL, SCP_BRANCH, SCP_CODES, ECGDataset, fit_standardizer
from medml.engine.data import MedmlDataModule
from medml.errors import DataLayoutError
from medml.pipelines.ecg.config import EcgConfig
from medml.pipelines.ecg.model import BRANCHES

#: ProtoECGNet's prototype_category -> branch (spec 1.3: 1 rhythm 1D, 3 morphology 2D partial, 4 global 2D).
CATEGORY_BRANCH = {1: "rhythm", 3: "morphology", 4: "global"}


def open_ptbxl(data_dir: str | Path, config: EcgConfig, progress: bool = False) -> PTBXL:
    """The prepared PTB-XL (cache built on first use) at the config's rate, source and filter."""
    cfg = config.data
    return PTBXL(data_dir, sampling_rate=cfg.sampling_rate, highpass=cfg.highpass, source=cfg.source, progress=progress)


class EcgDataModule(MedmlDataModule):
    """PTB-XL folds 1-8 / 9 (71-label 'all' targets, every record kept) from the memory-mapped cache."""

    config: EcgConfig

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        self.ptbxl = open_ptbxl(self.data_dir, self.config)
        self.train_index = self.ptbxl.split_indices("train")
        self.val_index = self.ptbxl.split_indices("val")
        # Standardisation lives in the module (buffers in the checkpoint), so datasets return raw mV.
        self.mean = self.std = None
        if self.config.data.standardize:
            self.mean, self.std = fit_standardizer(self.ptbxl.signals, self.train_index)
        self.split_summary = {
            "train_folds": list(range(1, 9)),
            "val_folds": [9],
            "test_folds": [10],
            "n_train": int(len(self.train_index)),
            "n_val": int(len(self.val_index)),
        }
        return ECGDataset(self.ptbxl, self.train_index, "all"), ECGDataset(self.ptbxl, self.val_index, "all")

    @property
    def codes(self) -> list[str]:
        return list(self.ptbxl.codes)

    def train_labels(self) -> np.ndarray:
        return np.asarray(self.ptbxl.labels[self.train_index])

    def record_path(self, index: int) -> Path:
        return self.ptbxl.record_path(int(index))


def ptbxl_statement_codes() -> list[str]:
    """PTB-XL's 71 SCP statements in ``scp_statements.csv`` row order (the table `medml.data.ptbxl` ships)."""
    return list(SCP_CODES)


def branch_label_indices(codes: Sequence[str]) -> dict[str, list[int]]:
    """Indices of each branch's labels within ``codes`` (row order), from the shipped SCP_BRANCH table."""
    out: dict[str, list[int]] = {name: [] for name in BRANCHES}
    for i, code in enumerate(codes):
        if code not in SCP_BRANCH:
            raise DataLayoutError(
                f"SCP code '{code}' has no ProtoECGNet branch (expected one of the 71 PTB-XL statements)"
            )
        out[CATEGORY_BRANCH[SCP_BRANCH[code]]].append(i)
    return out
