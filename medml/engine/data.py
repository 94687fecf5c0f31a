"""DataLoaders that behave the same on one process and under DDP, and across ``--resume``.

Training order comes from a `DistributedSampler` even on one process: its permutation is a function of
(seed, epoch) only, and Lightning calls ``set_epoch`` every epoch, so a resumed run sees exactly the batches the
uninterrupted run would have, and N processes with batch b see the same global batches as one process with N*b.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medml.config import PipelineConfig, TrainConfig
from medml.errors import ConfigError


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


class MedmlDataModule(L.LightningDataModule):
    """The DataModule every pipeline starts from: train/val datasets in, engine-correct loaders out.

    A pipeline implements `build_datasets` (read the official layout, choose the split) and, if its samples do
    not stack with the default collate (detection targets, variable-length records), sets ``collate_fn``.
    Anything `build_datasets` stores on ``self`` (the adapter, label names, class weights) is there for
    ``build_module``. ``split_summary`` goes into ``run.json``.
    """

    collate_fn: Callable | None = None

    def __init__(self, data_dir: str | Path, config: PipelineConfig):
        super().__init__()
        self.data_dir, self.config = Path(data_dir), config
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.split_summary: dict[str, Any] = {}

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """(train, val) datasets from ``self.data_dir``; called once, on every process."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset, self.val_dataset = self.build_datasets()

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_dataset, self.config.train, collate_fn=self.collate_fn)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.val_dataset, self.config.train, collate_fn=self.collate_fn)
