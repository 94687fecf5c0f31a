"""CT-RATE for CT-SSG: the cached datasets of one patient-level fold, and the one preprocessing chain; RAD-ChestCT
(external evaluation) through the same chain."""

from __future__ import annotations

from pathlib import Path

from monai.transforms import Compose

from medml.data import ctrate, radchestct
from medml.engine.data import MedmlDataModule
from medml.errors import ConfigError, DataLayoutError
from medml.pipelines.ct.config import CtConfig, CtData
from medml.transforms.ct import ct_preprocess


def preprocess_transform(cfg: CtData) -> Compose:
    """The Compose the cache and clinical prediction share (``{"image": Volume}`` -> ``{"image": (D, H, W)}``)."""
    return ct_preprocess(
        spacing=cfg.spacing, size=cfg.size, axcodes=cfg.axcodes.upper(), hu_window=cfg.hu_window, offset=cfg.offset
    )


def cached_split(data_dir: Path, split: str, config: CtConfig, progress: bool = False) -> ctrate.CtRateDataset:
    """All volumes of an official split (``train`` or ``valid``), preprocessed once into the cache."""
    volumes = ctrate.read_split(data_dir, split)
    return ctrate.CtRateDataset(volumes, build_cache(data_dir, volumes, config, progress))


def build_cache(data_dir: Path, volumes, config: CtConfig, progress: bool = False) -> Path:
    cfg = config.data
    return ctrate.build_cache(
        data_dir, volumes, preprocess_transform(cfg), cfg.preprocessing(), cfg.fallback_axcodes.upper(), progress
    )


def fold_datasets(data_dir: Path, config: CtConfig) -> tuple[ctrate.CtRateDataset, ctrate.CtRateDataset]:
    """(train, validation) of the configured fold of CT-RATE train, split by patient."""
    cfg = config.data
    volumes = ctrate.read_split(data_dir, "train")
    train, val = ctrate.split_train_val(volumes, cfg.folds, cfg.fold, cfg.split_seed)
    cache = build_cache(data_dir, volumes, config, progress=config.train.progress)
    return ctrate.CtRateDataset(train, cache), ctrate.CtRateDataset(val, cache)


def split_dataset(data_dir: Path, split: str, config: CtConfig) -> ctrate.CtRateDataset:
    """``test`` (the official ``valid``), ``val`` (the validation fold) or ``train`` (the training folds)."""
    if split in ("test", "valid"):
        return cached_split(data_dir, "valid", config)
    train, val = fold_datasets(data_dir, config)
    if split == "val":
        return val
    if split == "train":
        return train
    raise ConfigError(f"unknown split '{split}' for ct (test, val, train)")


class CtRateData(MedmlDataModule):
    """Training folds and the validation fold of CT-RATE train (the official ``valid`` split is the test set)."""

    config: CtConfig
    fold_key = "data.fold"  # ``--fold K`` sets the patient-level fold of the paper's 5-fold CV

    def build_datasets(self):
        train, val = fold_datasets(self.data_dir, self.config)
        patients = lambda ds: sorted({v.patient for v in ds.volumes})  # noqa: E731
        self.split_summary = {
            "fold": self.config.data.fold,
            "folds": self.config.data.folds,
            "train_volumes": len(train),
            "val_volumes": len(val),
            "train_patients": len(patients(train)),
            "val_patients": patients(val),
            "test": "official valid split",
        }
        return train, val


def dataset_kind(data_dir: Path, config: CtConfig) -> str:
    """``ct-rate`` or ``rad-chestct``: ``data.dataset``, or under ``auto`` RAD-ChestCT where the folder has the
    release's labels CSVs and no CT-RATE labels folder."""
    kind = config.data.dataset
    if kind != "auto":
        return kind
    has_ctrate = (ctrate.dataset_root(data_dir) / "multi_abnormality_labels").is_dir()
    return "rad-chestct" if not has_ctrate and radchestct.is_layout(data_dir) else "ct-rate"


def radchest_settings(config: CtConfig) -> radchestct.RadChestSettings:
    r = config.data.radchest
    return radchestct.RadChestSettings(tuple(r.spacing), r.axcodes.upper(), r.key)


def radchest_split(
    data_dir: Path, split: str, config: CtConfig, progress: bool = False
) -> tuple[radchestct.RadChestDataset, radchestct.SplitListing]:
    """RAD-ChestCT ``test`` (default), ``valid``/``val``, ``train`` or ``all``, preprocessed once into the cache
    exactly as CT-RATE is (the model sees the same grid, orientation and window)."""
    listing = radchestct.read_split(data_dir, split)
    cfg = config.data
    cache = radchestct.build_cache(
        data_dir, listing.volumes, preprocess_transform(cfg), cfg.preprocessing(), radchest_settings(config), progress
    )
    return radchestct.RadChestDataset(listing.volumes, cache), listing


def refuse_radchest_training(data_dir: Path) -> None:
    raise DataLayoutError(
        "a RAD-ChestCT folder: it is for external evaluation (medml evaluate ct), training needs CT-RATE", data_dir
    )
