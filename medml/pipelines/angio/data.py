"""Training data of the ``angio`` pipeline: labelled and unlabelled MOSXAV frames, and the validation videos."""

from __future__ import annotations

from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import Dataset

from medml.data.mosxav import MOSXAV, AngioFrames, labelled_pools
from medml.engine.data import MedmlDataModule, train_loader
from medml.pipelines.angio.augment import LabelledViews, UnlabelledViews, strong_transform, weak_transform
from medml.pipelines.angio.config import AngioConfig


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
