"""The ``ecg`` pipeline's data: PTB-XL folds as a DataModule, the preprocessing of clinical ECGs (the PTB-XL cache's
own, composed once), and ProtoECGNet's label-to-branch partition."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import CastToTyped, Compose, MapTransform
from torch.utils.data import Dataset

from medml.data.ptbxl import PTBXL, SCP_CODES, ECGDataset, fit_standardizer
from medml.engine.data import MedmlDataModule, eval_loader
from medml.errors import DataLayoutError, SignalError
from medml.io.ecg import check_signal
from medml.pipelines.ecg.config import EcgConfig, EcgDataConfig
from medml.pipelines.ecg.model import BRANCHES
from medml.transforms.ecg import FitLengthd, resample_highpass

#: ProtoECGNet's branch of every PTB-XL SCP statement, in scp_statements.csv row order (spec §1.3: the
#: ``prototype_category`` column of the authors' regrouped statements file, 1 = rhythm (1D, 16 codes), 3 =
#: time-localised morphology (2D partial, 52 codes), 4 = global 12-lead pattern (2D global, 3 codes); 2 is unused).
SCP_BRANCH: dict[str, str] = {
    "NDT": "morphology",
    "NST_": "morphology",
    "DIG": "global",
    "LNGQT": "morphology",
    "NORM": "global",
    "IMI": "morphology",
    "ASMI": "morphology",
    "LVH": "morphology",
    "LAFB": "morphology",
    "ISC_": "morphology",
    "IRBBB": "morphology",
    "1AVB": "rhythm",
    "IVCD": "rhythm",
    "ISCAL": "morphology",
    "CRBBB": "morphology",
    "CLBBB": "morphology",
    "ILMI": "morphology",
    "LAO/LAE": "morphology",
    "AMI": "morphology",
    "ALMI": "morphology",
    "ISCIN": "morphology",
    "INJAS": "morphology",
    "LMI": "morphology",
    "ISCIL": "morphology",
    "LPFB": "morphology",
    "ISCAS": "morphology",
    "INJAL": "morphology",
    "ISCLA": "morphology",
    "RVH": "morphology",
    "ANEUR": "morphology",
    "RAO/RAE": "morphology",
    "EL": "global",
    "WPW": "morphology",
    "ILBBB": "morphology",
    "IPLMI": "morphology",
    "ISCAN": "morphology",
    "IPMI": "morphology",
    "SEHYP": "morphology",
    "INJIN": "morphology",
    "INJLA": "morphology",
    "PMI": "morphology",
    "3AVB": "rhythm",
    "INJIL": "morphology",
    "2AVB": "rhythm",
    "ABQRS": "morphology",
    "PVC": "morphology",
    "STD_": "morphology",
    "VCLVH": "morphology",
    "QWAVE": "morphology",
    "LOWT": "morphology",
    "NT_": "morphology",
    "PAC": "morphology",
    "LPR": "morphology",
    "INVT": "morphology",
    "LVOLT": "morphology",
    "HVOLT": "morphology",
    "TAB_": "morphology",
    "STE_": "morphology",
    "PRC(S)": "morphology",
    "SR": "rhythm",
    "AFIB": "rhythm",
    "STACH": "rhythm",
    "SARRH": "rhythm",
    "SBRAD": "rhythm",
    "PACE": "rhythm",
    "SVARR": "rhythm",
    "BIGU": "rhythm",
    "AFLT": "rhythm",
    "SVTAC": "rhythm",
    "PSVT": "rhythm",
    "TRIGU": "rhythm",
}


def open_ptbxl(data_dir: str | Path, config: EcgConfig, progress: bool = False) -> PTBXL:
    """The prepared PTB-XL (cache built on first use) at the config's rate, source and filter."""
    cfg = config.data
    return PTBXL(data_dir, sampling_rate=cfg.sampling_rate, highpass=cfg.highpass, source=cfg.source, progress=progress)


class CheckEcgd(MapTransform):
    """Refuse an ECG the model must not see, with a `SignalError` naming ``data["path"]``.

    On the input (``after=False``): not 12 leads, NaN, a flat lead (checked before resampling, whose edge
    transients could hide one), or a length the ``data.length_policy`` refuses. On the output (``after=True``): a
    lead the high-pass flattened, over the samples that are signal rather than padding (``data["valid_samples"]``).
    """

    def __init__(self, cfg: EcgDataConfig, after: bool = False, key: str = "signal") -> None:
        super().__init__(key)
        self.cfg, self.after, self.key = cfg, after, key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d, cfg = dict(data), self.cfg
        x, fs, path = d[self.key], float(d["fs"]), d.get("path")
        if self.after:
            check_signal(x[:, : d["valid_samples"]], fs, path, flat_lead_mv=cfg.flat_lead_mv)
            return d
        if x.ndim != 2 or x.shape[0] != 12:
            raise SignalError(f"expected 12 leads, got an array of shape {x.shape}", path)
        check_signal(x, fs, path, flat_lead_mv=cfg.flat_lead_mv)
        seconds = x.shape[1] / fs
        if cfg.length_policy == "strict" and abs(seconds - cfg.seconds) > 1.0 / fs:
            raise SignalError(
                f"record lasts {seconds:.2f} s; data.length_policy 'strict' needs {cfg.seconds:g} s", path
            )
        if seconds < cfg.min_seconds:
            raise SignalError(f"record lasts {seconds:.2f} s, shorter than data.min_seconds={cfg.min_seconds:g}", path)
        return d


def ecg_preprocessing(cfg: EcgDataConfig) -> Compose:
    """Clinical ECG ``{"signal": (12, n) mV, "fs": Hz, "path"}`` -> ``signal`` (12, seconds * rate) float32.

    Checks (`CheckEcgd`), then the PTB-XL cache's own resampling and high-pass (`resample_highpass`, so clinical
    inputs get exactly the training preprocessing), a 10-s window or zero padding (``data.crop``), and the check
    that the high-pass left no flat lead.
    """
    return Compose(
        [
            CheckEcgd(cfg),
            resample_highpass(cfg.sampling_rate, cfg.highpass),
            FitLengthd("signal", int(round(cfg.seconds * cfg.sampling_rate)), cfg.crop, valid_key="valid_samples"),
            CheckEcgd(cfg, after=True),
            CastToTyped("signal", np.float32),
        ]
    )


class EcgDataModule(MedmlDataModule):
    """PTB-XL folds 1-8 / 9 (71-label 'all' targets, every record kept) from the memory-mapped cache."""

    config: EcgConfig
    official_folds = tuple(range(1, 10))  # ``--fold K``: validate on strat_fold K, train on the rest of 1-9

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        self.ptbxl = open_ptbxl(self.data_dir, self.config)
        self.train_index = self.ptbxl.split_indices("train")
        self.val_index = self.ptbxl.split_indices("val")
        if self.fold is not None:  # fold 10 stays the test set; --fold 9 is the default split
            pool = np.union1d(self.train_index, self.val_index)
            self.train_index = pool[self.ptbxl.folds[pool] != self.fold]
            self.val_index = pool[self.ptbxl.folds[pool] == self.fold]
        # Standardisation lives in the module (buffers in the checkpoint), so datasets return raw mV.
        self.mean = self.std = None
        if self.config.data.standardize:
            self.mean, self.std = fit_standardizer(self.ptbxl.signals, self.train_index)
        self.split_summary = {
            "train_folds": [f for f in range(1, 10) if f != (self.fold or 9)],
            "val_folds": [self.fold or 9],
            "test_folds": [10],
            "n_train": int(len(self.train_index)),
            "n_val": int(len(self.val_index)),
        }
        return ECGDataset(self.ptbxl, self.train_index, "all"), ECGDataset(self.ptbxl, self.val_index, "all")

    @property
    def codes(self) -> list[str]:
        return list(self.ptbxl.codes)

    def val_dataloader(self):
        """Fold 9; in a branch stage with ``data.branch_validation: official_sampling``, the official resampled
        fold 9 of that branch (`branch_validation_draw`), on which the stage's model selection then runs."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        stage = getattr(module, "stage", None)
        branch = getattr(stage, "branch", None)
        if branch is None or self.config.data.branch_validation != "official_sampling":
            return super().val_dataloader()
        draw = branch_validation_draw(
            np.asarray(self.ptbxl.labels[self.val_index]),
            branch_label_indices(self.codes)[branch],
            self.config.train.seed,
        )
        if draw is None:  # no fold-9 record has a label of this branch: nothing to weight, use the fold as it is
            return super().val_dataloader()
        return eval_loader(DrawnDataset(self.val_dataset, draw), self.config.train)

    def train_labels(self) -> np.ndarray:
        return np.asarray(self.ptbxl.labels[self.train_index])

    def record_path(self, index: int) -> Path:
        return self.ptbxl.record_path(int(index))


def branch_validation_draw(labels: np.ndarray, branch_index: Sequence[int], seed: int) -> np.ndarray | None:
    """The official branch validation loader's sample: ``len(labels)`` draws with replacement, a record weighted by
    the summed validation class weights ``(sum_k n_k - n_c) / n_c`` of its branch labels (spec 1.9), so records
    without a label of the branch are never drawn. One seeded draw per stage (the official loader draws anew each
    epoch), so every epoch of a stage is selected on the same sample. ``None`` when no record can be drawn."""
    y = (np.asarray(labels)[:, list(branch_index)] > 0.5).astype(np.float64)
    n = y.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(n > 0, (n.sum() - n) / n, 0.0)
    record_weight = y @ weight
    if not (record_weight > 0).any():
        return None
    generator = torch.Generator().manual_seed(int(seed))
    draw = torch.multinomial(torch.as_tensor(record_weight), len(y), replacement=True, generator=generator)
    return draw.numpy()


class DrawnDataset(Dataset):
    """``dataset`` at the drawn positions; each item's ``draw`` (its position in the draw) tells repeated records
    apart, so a whole-fold metric counts a record as often as it was drawn."""

    def __init__(self, dataset: Dataset, draw: np.ndarray):
        self.dataset, self.draw = dataset, np.asarray(draw)

    def __len__(self) -> int:
        return len(self.draw)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[int(self.draw[i])], "draw": i}


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
        out[SCP_BRANCH[code]].append(i)
    return out
