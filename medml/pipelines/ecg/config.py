"""The ``ecg`` pipeline's configuration: signal, model, loss blocks and the stage sequence.

The defaults are the paper's configuration (spec ``specs/ecg-protoecgnet-and-ct-ssg.md`` part 1);
``pipelines/ecg/paper.yaml`` writes them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from medml.config import OptimConfig, PipelineConfig, StageConfig, Strict, TrainConfig
from medml.pipelines.ecg.model import BRANCHES


class EcgDataConfig(Strict):
    """Input signal: rate, length and the preprocessing shared by training, evaluation and prediction."""

    sampling_rate: int = 100  # the paper trains on records100
    # None: records100 at 100 Hz, else records500 resampled to sampling_rate (the adapter's rule)
    source: Literal["records100", "records500"] | None = None
    seconds: float = 10.0  # PTB-XL records are exactly 10 s
    highpass: bool = True  # order-1 0.5 Hz Butterworth, zero-phase (spec 1.2)
    standardize: bool = False  # paper default: no amplitude normalisation; True fits per-lead mean/std on folds 1-8
    # Clinical ECGs of another length: "crop_or_pad" takes a 10-s window (see crop) or zero-pads a shorter record
    # (zero = the high-passed baseline) if it lasts at least min_seconds; "strict" refuses anything but 10 s.
    length_policy: Literal["crop_or_pad", "strict"] = "crop_or_pad"
    crop: Literal["start", "center"] = "start"
    min_seconds: float = 8.0
    flat_lead_mv: float = 0.02  # peak-to-peak below this (before or after preprocessing): a flat lead


class BranchConfig(Strict):
    """One prototype branch; depth and widths of its ResNet, prototype count and shape."""

    depth: Literal[18, 34] = 18
    widths: list[int] = [64, 128, 256, 512]
    prototypes_per_class: int
    prototype_length: int = 1  # latent time steps of a 2D prototype (ignored by the 1D branch)
    prototype_dim: int = 512


class EcgModelConfig(Strict):
    """ProtoECGNet at paper size; ``labels`` is filled from ``scp_statements.csv`` when training starts."""

    # the 71 SCP codes in scp_statements.csv row order, filled from the dataset at training and stored with the
    # model; None means PTB-XL's own 71 statements
    labels: list[str] | None = None
    branch_rhythm: BranchConfig = BranchConfig(prototypes_per_class=5)
    branch_morphology: BranchConfig = BranchConfig(prototypes_per_class=18, prototype_length=3)
    branch_global: BranchConfig = BranchConfig(prototypes_per_class=7, prototype_length=32)
    dropout: float = 0.35  # before layer4 of the 2D backbones (unused by the 1D net, as in the official code)
    imagenet_weights: Path | None = None  # local torchvision resnet18 state dict for the 2D backbones; never fetched
    threshold: Literal["per_label_f1", "fmax"] = "per_label_f1"  # decision threshold chosen on the val fold
    explain_top_k: int = 3  # prototypes listed per positive label
    explain_max_labels: int = 8  # positive labels explained per ECG (highest probability first)


class EcgLossConfig(Strict):
    """Loss weights (spec 1.7; the src/main.py values that tune.py also fixes)."""

    class_weights: bool = True  # BCE pos_weight w_c = (sum_k n_k - n_c) / n_c, training folds, per branch
    clst: float = 0.004
    sep: float = 0.0004
    spars: float = 0.0
    div: float = 250.0
    cnrst: float = 300.0
    l1: float = 1e-4  # classifier and fusion stages: L1 on off-class (fusion: all) last-layer weights


def _branch_stages(branch: str) -> list[StageConfig]:
    prefix = f"model.branches.{branch}."
    monitor = f"val_auroc_{branch}"
    return [
        StageConfig(
            name=f"warmup_{branch}",
            enabled=False,
            trainable=[prefix + "backbone", prefix + "warmup_head"],
            monitor=monitor,
            monitor_mode="max",
        ),
        StageConfig(
            name=f"joint_{branch}",
            trainable=[prefix + "backbone", prefix + "add_on", prefix + "prototype_vectors"],
            monitor=monitor,
            monitor_mode="max",
        ),
        StageConfig(name=f"project_{branch}", kind="run"),
        StageConfig(
            name=f"classifier_{branch}",
            enabled=False,
            trainable=[prefix + "last_layer"],
            monitor=monitor,
            monitor_mode="max",
        ),
    ]


def paper_stages() -> list[StageConfig]:
    """Per branch: (warm-up) -> joint -> projection -> (classifier); then fusion and threshold selection."""
    stages = [s for branch in BRANCHES for s in _branch_stages(branch)]
    stages.append(StageConfig(name="fusion", trainable=["model.fusion"], monitor="val_auroc", monitor_mode="max"))
    stages.append(StageConfig(name="thresholds", kind="run"))
    return stages


class EcgConfig(PipelineConfig):
    """ProtoECGNet paper configuration: Adam lr 1e-4, weight decay 1.7e-4, cosine over 200 epochs, batch 32,
    early stopping on validation macro-AUROC (patience 10), top-3 checkpoints, seed 42."""

    train: TrainConfig = TrainConfig(
        batch_size=32,
        max_epochs=200,
        monitor="val_auroc",
        monitor_mode="max",
        patience=10,
        save_top_k=3,
        seed=42,
        optim=OptimConfig(name="adam", lr=1e-4, weight_decay=1.7e-4, schedule="cosine"),
    )
    stages: list[StageConfig] = paper_stages()
    data: EcgDataConfig = EcgDataConfig()
    model: EcgModelConfig = EcgModelConfig()
    loss: EcgLossConfig = EcgLossConfig()
