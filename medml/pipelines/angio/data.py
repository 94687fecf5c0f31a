"""Training data of the ``angio`` pipeline: the labelled-fraction protocol of semi-supervised training (labelled
and unlabelled pools of MOSXAV training frames) and the DataModule of both streams and the validation videos."""

from __future__ import annotations

from typing import Literal

import numpy as np
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import Dataset

from medml.data.mosxav import MOSXAV, AngioFrames, FrameItem
from medml.engine.data import MedmlDataModule, train_loader
from medml.errors import ConfigError, DataLayoutError
from medml.pipelines.angio.augment import LabelledViews, UnlabelledViews, strong_transform, weak_transform
from medml.pipelines.angio.config import AngioConfig


def _share(fraction: float, total: int) -> int:
    """``fraction`` of ``total`` rounded half up (Python's round() rounds 2.5 to 2), at least 1."""
    return max(1, int(np.floor(fraction * total + 0.5)))


def labelled_pools(
    mosxav: MOSXAV, fraction: float = 0.25, by: Literal["frames", "videos"] = "frames", seed: int = 0
) -> tuple[list[FrameItem], list[FrameItem]]:
    """Split the training videos' frames into a labelled and an unlabelled pool.

    The labelled pool is a ``fraction`` of the annotated frames of the training videos, drawn either as single
    frames (``by="frames"``) or as whole videos (``by="videos"``, every annotated frame of the drawn videos; stricter,
    since neighbouring frames are near-duplicates). The unlabelled pool is every other frame of the training videos,
    including annotated frames that were not drawn (their masks are dropped). Validation and test videos never
    enter either pool. The draw depends only on ``seed`` and the dataset.

    Args:
        mosxav: the dataset index.
        fraction: in (0, 1]; 1/8, 1/4, 1/2 and 1 are the usual protocols. Counts are rounded half up, at least 1.
        by: "frames" or "videos".
        seed: seed of the draw.

    Returns:
        (labelled, unlabelled) lists of `FrameItem` in (video, frame) order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"data.labelled_fraction must be in (0, 1], got {fraction}")
    if by not in ("frames", "videos"):
        raise ConfigError(f"data.labelled_by must be 'frames' or 'videos', got {by!r}")
    frames = mosxav.items("train")
    annotated = [item for item in frames if item.mask_path is not None]
    if not annotated:
        raise DataLayoutError("no annotated frames in the training videos", mosxav.root / "trainval")
    rng = np.random.default_rng(seed)
    if by == "frames":
        count = _share(fraction, len(annotated))
        chosen = {annotated[i].image_path for i in rng.permutation(len(annotated))[:count]}
    else:
        videos = sorted({item.video for item in annotated})
        count = _share(fraction, len(videos))
        chosen_videos = {videos[i] for i in rng.permutation(len(videos))[:count]}
        chosen = {item.image_path for item in annotated if item.video in chosen_videos}
    labelled = [item for item in annotated if item.image_path in chosen]
    unlabelled = [
        FrameItem(item.split, item.video, item.frame_index, item.image_path, None)
        for item in frames
        if item.image_path not in chosen
    ]
    return labelled, unlabelled


class AngioDataModule(MedmlDataModule):
    """Labelled + unlabelled training streams (CombinedLoader, max_size_cycle) and the validation videos.

    ``train_dataset`` is the labelled stream, ``train_unlabelled`` the unlabelled one; validation uses the base
    class's loader.
    """

    config: AngioConfig

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        cfg = self.config.data
        mosxav = MOSXAV(self.data_dir)
        labelled, unlabelled = labelled_pools(mosxav, cfg.labelled_fraction, cfg.labelled_by, cfg.split_seed)
        val = mosxav.items("val", annotated_only=True)
        weak = (
            weak_transform(cfg.rotate_limit, (cfg.scale_min, cfg.scale_max), flip_p=cfg.flip_p) if cfg.augment else None
        )
        strong = strong_transform(cfg.brightness, cfg.contrast, cutout_p=cfg.cutout_p) if cfg.augment else None
        self.train_unlabelled = UnlabelledViews(AngioFrames(unlabelled, cfg.size, cfg.others), weak, strong)
        self.split_summary = {
            **mosxav.split_summary(),
            "labelled_fraction": cfg.labelled_fraction,
            "labelled_by": cfg.labelled_by,
            "split_seed": cfg.split_seed,
            "labelled_frames": [f"{i.video}/{i.image_path.name}" for i in labelled],
            "n_labelled": len(labelled),
            "n_unlabelled": len(unlabelled),
            "n_val_frames": len(val),
        }
        return LabelledViews(AngioFrames(labelled, cfg.size, cfg.others), weak), AngioFrames(val, cfg.size, cfg.others)

    def train_dataloader(self) -> CombinedLoader:
        train, labelled, unlabelled = self.config.train, self.train_dataset, self.train_unlabelled
        loaders = {"labelled": train_loader(labelled, train, batch_size=min(train.batch_size, len(labelled)))}
        if len(unlabelled):
            bs_u = min(self.config.data.unlabelled_batch_size, len(unlabelled))
            loaders["unlabelled"] = train_loader(unlabelled, train, batch_size=bs_u)
        return CombinedLoader(loaders, mode="max_size_cycle")
