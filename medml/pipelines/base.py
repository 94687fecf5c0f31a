"""What a pipeline is: the contract between the shared engine and one published method.

A pipeline is a `Pipeline` subclass (registered with ``@register_pipeline``) plus a `MedmlModule`
(a LightningModule). The engine (``medml.engine``) owns the training loop, stages, checkpoints, run records,
folder prediction and the demo; the pipeline only says how to read its dataset and clinical files, which
model to build, and how to write and score its outputs.

Lifecycle of the engine calls, in order:

* ``medml prepare``:   ``check_layout(data)`` then ``prepare(data)``
* ``medml train``:     ``check_layout`` -> ``datamodule(data)`` -> ``build_module(datamodule)`` -> for each
  enabled stage: ``module.start_stage(stage)`` then Trainer.fit (kind "fit") or ``module.run_stage(stage, dm)``
  (kind "run") -> ``module.end_stage(stage)``
* ``medml predict``:   ``discover(input)`` -> per case ``load_case`` -> batches of ``predict_batch`` ->
  per case ``write_case`` (into that case's own output folder)
* ``medml evaluate``:  ``evaluate(module, data, split, out)``
* ``medml demo``:      ``synthesize(data)`` -> train with the ``tiny`` recipe -> ``synthesize_clinical(input)``
  -> predict -> evaluate -> ``report_figures``
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch

from medml import io
from medml.config import OptimConfig, PipelineConfig, StageConfig
from medml.engine.checkpoint import checkpoint_meta
from medml.utils.files import folder_fingerprint


class Pipeline(abc.ABC):
    """One published method on one modality.

    Class attributes:
        name: registry name and CLI argument (``ecg``, ``angio``, ...).
        summary: one line for ``medml list``.
        Config: the pydantic config class; its defaults are the published configuration.
        input_kinds: ``medml.io`` case kinds that ``predict`` accepts (e.g. ``("wfdb", "dicom_ecg")``).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type[PipelineConfig]]
    input_kinds: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PipelineConfig | None = None):
        self.config = config if config is not None else self.Config()

    # ----- dataset (official layout) -----------------------------------------------------------------------------
    @abc.abstractmethod
    def check_layout(self, data_dir: Path) -> None:
        """Raise `DataLayoutError` naming the first missing file or wrong column; return quietly if usable."""

    def prepare(self, data_dir: Path) -> dict[str, Any]:
        """Check the layout and build caches; return a summary (counts per split, label counts, ...)."""
        self.check_layout(data_dir)
        return {}

    @abc.abstractmethod
    def datamodule(self, data_dir: Path) -> L.LightningDataModule:
        """The DataModule for training and validation: a `medml.engine.data.MedmlDataModule` subclass."""

    def data_fingerprint(self, data_dir: Path) -> str:
        return folder_fingerprint(data_dir)

    def split_summary(self, datamodule: L.LightningDataModule) -> dict[str, Any]:
        """What goes under ``split`` in ``run.json`` (e.g. folds or video ids per split, sizes)."""
        return getattr(datamodule, "split_summary", {})

    @abc.abstractmethod
    def synthesize(self, out_dir: Path, seed: int = 0) -> Path:
        """Write a small synthetic dataset in the official layout with learnable, label-dependent signal."""

    @abc.abstractmethod
    def synthesize_clinical(self, out_dir: Path, seed: int = 0) -> Path:
        """Write a small folder of clinical-format inputs (DICOM, WFDB, video, ...) for ``predict``."""

    # ----- model ---------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_module(self, datamodule: L.LightningDataModule | None) -> MedmlModule:
        """The LightningModule. ``datamodule`` is given (set up for "fit") when training, ``None`` at prediction."""

    # ----- prediction on clinical files ----------------------------------------------------------------------------
    def discover(self, input_dir: Path) -> tuple[list[Any], list[tuple[str, ...]]]:
        """Cases under ``input_dir`` this pipeline can read, and (path, reason) for files it cannot; a case of
        another kind is (path, reason, case id), so its row keeps the id discovery made (patient names removed)."""
        cases, failures = io.discover(input_dir)
        accepted = [c for c in cases if c.kind in self.input_kinds]
        skipped = [
            (str(c.paths[0]), f"not an input of the {self.name} pipeline (a case of kind {c.kind})", c.case_id)
            for c in cases
            if c.kind not in self.input_kinds
        ]
        return accepted, failures + skipped

    @abc.abstractmethod
    def load_case(self, case: Any) -> dict[str, Any]:
        """Read and preprocess one case; raise a `MedmlError` (file + reason) if it cannot be used."""

    @abc.abstractmethod
    def predict_batch(self, module: MedmlModule, samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run the model (already in eval mode, on its device) on a list of loaded samples."""

    @abc.abstractmethod
    def write_case(self, case: Any, sample: dict[str, Any], output: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        """Write one case's outputs into ``out_dir`` (its own folder, made empty by the runner), atomically;
        return its predictions.csv row."""

    predict_batch_size: ClassVar[int] = 8

    # ----- evaluation and reports ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def evaluate(self, module: MedmlModule, data_dir: Path, split: str, out_dir: Path) -> dict[str, float]:
        """Score ``split``; write ``metrics.json`` and figures into ``out_dir``; return the headline numbers."""

    def report_figures(self, run_dir: Path, eval_dir: Path, pred_dir: Path) -> list[Path]:
        """PNG figures for the demo report (training curves are added by the engine)."""
        return sorted(eval_dir.glob("*.png")) + sorted(pred_dir.glob("*/*.png"))[:4]


class MedmlModule(L.LightningModule):
    """LightningModule base with stage handling and optimiser/schedule construction from the config.

    Subclasses implement ``training_step`` / ``validation_step`` as usual (or set
    ``self.automatic_optimization = False`` for teacher-student methods and step ``self.optimizers()`` themselves,
    calling ``self.clip_gradients`` where ``train.grad_clip`` is set). The engine calls ``start_stage`` before each
    stage, which freezes every parameter outside `stage_parameters` (by default the names starting with a
    `trainable_prefixes` prefix, which is ``stage.trainable`` unless the pipeline derives it from the stage).
    """

    def __init__(self, config: PipelineConfig):
        super().__init__()
        self.config = config
        self.stage: StageConfig = next((s for s in config.stages if s.enabled), config.stages[0])

    pipeline_name: str = ""  # set by the engine; recorded in every checkpoint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["medml"] = checkpoint_meta(self.pipeline_name, self.config, stage=self.stage.name)

    def run_device(self) -> torch.device:
        """Where ``run`` stages compute (projection, thresholds): the local GPU when training may use one, else the
        CPU. Lightning moves the module back to the CPU after each fit, so a run stage asks here."""
        if torch.cuda.is_available() and self.config.train.accelerator in ("auto", "gpu", "cuda"):
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    @contextlib.contextmanager
    def evaluating(self, device: str | torch.device | None = None) -> Iterator[MedmlModule]:
        """Eval mode and no gradients on ``device`` (default: where the module is) for the block, then the
        module's own mode and device back: evaluation inside training (projection, thresholds) and after it share
        this."""
        was_training, old_device = self.training, self.device
        self.eval().to(device or old_device)
        try:
            with torch.no_grad():
                yield self
        finally:
            self.to(old_device).train(was_training)

    # ----- stages --------------------------------------------------------------------------------------------------
    def trainable_prefixes(self, stage: StageConfig) -> list[str]:
        """Parameter-name prefixes trained in ``stage``; empty means every parameter.

        The default is the recipe's ``stage.trainable``. A pipeline whose stages say what they do (e.g. a
        ``StageConfig`` subclass with ``mode: joint, branch: rhythm``) overrides this to derive the prefixes from
        that, so recipes need not repeat parameter names.
        """
        return list(stage.trainable)

    def stage_parameters(self, stage: StageConfig) -> Iterable[tuple[str, torch.nn.Parameter]]:
        """Named parameters trained in ``stage``: those whose names start with one of `trainable_prefixes`."""
        prefixes = tuple(self.trainable_prefixes(stage))
        for name, param in self.named_parameters():
            if not prefixes or name.startswith(prefixes):
                yield name, param

    def start_stage(self, stage: StageConfig) -> None:
        self.stage = stage
        trainable = {name for name, _ in self.stage_parameters(stage)}
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)

    def end_stage(self, stage: StageConfig) -> None:
        """Hook after a stage (weights already restored to its best checkpoint for "fit" stages)."""

    def run_stage(self, stage: StageConfig, datamodule: L.LightningDataModule) -> dict[str, Any]:
        """Work of a ``kind: run`` stage (no optimiser); returns a record stored in the stage folder."""
        raise NotImplementedError(f"{type(self).__name__} has no run stage '{stage.name}'")

    # ----- optimisation --------------------------------------------------------------------------------------------
    @property
    def optim_config(self) -> OptimConfig:
        return self.stage.optim or self.config.train.optim

    def configure_optimizers(self):
        cfg = self.optim_config
        params = [p for _, p in self.stage_parameters(self.stage) if p.requires_grad]
        if not params:
            raise RuntimeError(f"stage '{self.stage.name}' has no trainable parameters")
        if cfg.name == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        elif cfg.name == "adamw":
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.schedule == "none" and cfg.warmup_epochs == 0:
            return opt
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        scheduler = lr_scheduler(opt, cfg, total_steps=total_steps, steps_per_epoch=max(1, total_steps // epochs))
        if scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_scheduler(
    opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The stage's schedule, stepped every batch (so it is smooth): a linear warm-up from lr/100 over
    ``warmup_epochs``, then cosine to 0, polynomial decay to 0 (``(1 - t/T)^poly_power``, nnU-Net's) or a
    ``gamma`` decay every ``step_size`` epochs over the remaining steps; ``None`` when the lr is constant."""
    sched = torch.optim.lr_scheduler
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    rest = max(1, total_steps - warmup)
    if cfg.schedule == "cosine":
        main = sched.CosineAnnealingLR(opt, T_max=rest)
    elif cfg.schedule == "poly":
        main = sched.PolynomialLR(opt, total_iters=rest, power=cfg.poly_power)
    elif cfg.schedule == "step":
        main = sched.StepLR(opt, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
    else:
        main = None
    if not warmup:
        return main
    warm = sched.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return warm if main is None else sched.SequentialLR(opt, [warm, main], milestones=[warmup])
