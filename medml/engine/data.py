"""DataLoaders that behave the same on one process and under DDP, and across ``--resume``.

Training order comes from a `DistributedSampler` even on one process: its permutation is a function of
(seed, epoch) only, and Lightning calls ``set_epoch`` every epoch, so a resumed run sees exactly the batches the
uninterrupted run would have, and N processes with batch b see the same global batches as one process with N*b.

Cross-validation (``medml train NAME --fold K``, nnU-Net's scheme): the engine sets ``datamodule.fold`` before
``setup``. A dataset with official folds (PTB-XL's ``strat_fold``) lists them in ``official_folds`` and applies
``self.fold`` itself in `build_datasets`; a pipeline whose config already has a fold key names it in ``fold_key``
(the engine sets it, so config.yaml says which fold was trained); for every other dataset the engine splits the
training dataset into ``num_folds`` deterministic folds (`kfold_indices`; cases of one group, e.g. the frames of one
video, stay in one fold when the pipeline gives `fold_groups`) and validates on fold K.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from medml.config import PipelineConfig, TrainConfig
from medml.errors import ConfigError

#: Generated folds do not depend on ``train.seed``: runs with different seeds share them (nnU-Net fixes its seed too).
FOLD_SEED = 12345


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def per_device_batch(cfg: TrainConfig, world_size: int | None = None) -> int:
    """Training batch of one process: ``global_batch_size / world`` when the global batch is fixed, else
    ``batch_size`` (the learning rate is never rescaled: a recipe that fixes the global batch keeps the paper's)."""
    size = world()[1] if world_size is None else world_size
    if cfg.global_batch_size is None:
        return cfg.batch_size
    if cfg.global_batch_size % size:
        raise ConfigError(
            f"config key 'train.global_batch_size': {cfg.global_batch_size} does not divide over {size} processes"
        )
    return cfg.global_batch_size // size


def train_loader(
    dataset: Dataset,
    cfg: TrainConfig,
    collate_fn: Callable | None = None,
    batch_size: int | None = None,
    drop_last: bool = True,
) -> DataLoader:
    rank, size = world()
    sampler = DistributedSampler(
        dataset, num_replicas=size, rank=rank, shuffle=True, seed=cfg.seed, drop_last=drop_last
    )
    return DataLoader(
        dataset,
        batch_size=batch_size or per_device_batch(cfg),
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=False,
    )


def eval_loader(
    dataset: Dataset,
    cfg: TrainConfig,
    collate_fn: Callable | None = None,
    batch_size: int | None = None,
    shard: bool = True,
) -> DataLoader:
    """In-order loader; under DDP each process takes every N-th sample (``shard=False`` to give each all)."""
    rank, size = world()
    sampler = DistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=False) if shard and size > 1 else None
    return DataLoader(
        dataset,
        batch_size=batch_size or cfg.batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
    )


def kfold_indices(
    n: int, fold: int, num_folds: int, groups: Sequence[Hashable] | None = None, seed: int = FOLD_SEED
) -> tuple[list[int], list[int]]:
    """(train, validation) indices of fold ``fold`` of a deterministic ``num_folds``-fold split of ``n`` cases.

    Groups (default: each case its own) are shuffled with ``seed`` and dealt round-robin into folds, so fold sizes
    differ by at most one group and a group never straddles two folds.
    """
    keys = list(groups) if groups is not None else list(range(n))
    if len(keys) != n:
        raise ValueError(f"{len(keys)} group keys for {n} cases")
    unique = sorted(set(keys), key=repr)
    if len(unique) < num_folds:
        raise ConfigError(f"--folds {num_folds}: the training set has only {len(unique)} case group(s)")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: rank % num_folds for rank, j in enumerate(order)}
    val = [i for i, key in enumerate(keys) if fold_of[key] == fold]
    train = [i for i, key in enumerate(keys) if fold_of[key] != fold]
    return train, val


class MedmlDataModule(L.LightningDataModule):
    """The DataModule every pipeline starts from: train/val datasets in, engine-correct loaders out.

    A pipeline implements `build_datasets` (read the official layout, choose the split) and, if its samples do
    not stack with the default collate (detection targets, variable-length records), sets ``collate_fn``.
    Anything `build_datasets` stores on ``self`` (the adapter, label names, class weights) is there for
    ``build_module``. ``split_summary`` goes into ``run.json``.
    """

    collate_fn: Callable | None = None
    #: Official fold numbers of the dataset; a subclass that sets them applies ``self.fold`` in `build_datasets`.
    official_folds: ClassVar[tuple[int, ...] | None] = None
    #: The config key of a pipeline whose config already chooses its fold (ct: ``data.fold``): ``--fold K`` sets it.
    fold_key: ClassVar[str | None] = None

    def __init__(self, data_dir: str | Path, config: PipelineConfig):
        super().__init__()
        self.data_dir, self.config = Path(data_dir), config
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.split_summary: dict[str, Any] = {}
        self.fold: int | None = None  # set by the engine before setup (``--fold``)
        self.num_folds = 5  # of a generated fold scheme (``--folds``)

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """(train, val) datasets from ``self.data_dir``; called once, on every process."""
        raise NotImplementedError

    def fold_groups(self, train: Dataset) -> Sequence[Hashable] | None:
        """A group key per training case (patient, video) kept within one generated fold; None: case by case."""
        return None

    def fold_validation(self, train: Dataset, indices: list[int]) -> Dataset:
        """The validation part of a generated fold. It comes from the training dataset; a pipeline whose training
        dataset augments returns its un-augmented view of those cases here."""
        return Subset(train, indices)

    def fold_scheme(self) -> dict[str, Any]:
        """What ``--fold`` means for this dataset (for run.json and the error on a wrong K)."""
        if self.fold_key is not None:
            return {"scheme": "config", "key": self.fold_key}
        if self.official_folds is not None:
            return {"scheme": "official", "folds": list(self.official_folds)}
        return {"scheme": "generated", "folds": list(range(self.num_folds)), "seed": FOLD_SEED}

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        scheme = self.fold_scheme()
        if self.fold is not None and "folds" in scheme and self.fold not in scheme["folds"]:
            folds = scheme["folds"]
            raise ConfigError(
                f"--fold {self.fold}: this dataset's {scheme['scheme']} folds are {folds[0]}..{folds[-1]}"
            )
        train, val = self.build_datasets()
        if self.fold is not None and self.official_folds is None and self.fold_key is None:
            train_idx, val_idx = kfold_indices(len(train), self.fold, self.num_folds, self.fold_groups(train))
            train, val = Subset(train, train_idx), self.fold_validation(train, val_idx)
            self.split_summary = {
                **self.split_summary,
                "fold": self.fold,
                **scheme,
                "n_train": len(train_idx),
                "n_val": len(val_idx),
            }
        self.train_dataset, self.val_dataset = train, val

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_dataset, self.config.train, collate_fn=self.collate_fn)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.val_dataset, self.config.train, collate_fn=self.collate_fn)
