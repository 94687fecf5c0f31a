"""CT-SSG configuration: the defaults are the published set-up (spec part 2); every "not found" choice is a key.

Stages: ``train`` (fit, every parameter) then ``thresholds`` (run: per-label decision thresholds from the validation
fold, or the fixed threshold, stored in the model so prediction and evaluation decide alike).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from medml.config import NonNegativeInt, OptimConfig, PipelineConfig, StageConfig, Strict, TrainConfig
from medml.data.ctrate import LABELS
from medml.transforms.ct import axcodes_directions


def _spacing_in_range(v: tuple[float, float, float]) -> tuple[float, float, float]:
    if not all(0.05 <= s <= 50 for s in v):
        raise ValueError("spacing values must lie in [0.05, 50] mm")
    return v


SpacingMM = Annotated[tuple[float, float, float], AfterValidator(_spacing_in_range)]


class CtRadChest(Strict):
    """How RAD-ChestCT archives map to patient space (no header exists). Defaults: the public release as the authors'
    preprocessing wrote it (``rachellea/ct-volume-preprocessing``); the spec (§2.7) has no geometry for it."""

    spacing: SpacingMM = (0.8, 0.8, 0.8)  # mm along the array axes (slices, rows, columns)
    axcodes: str = Field("IPL", pattern=r"^[LRAPSIlrapsi]{3}$")  # slices superior->inferior, rows A->P, columns R->L
    key: str = Field("ct", min_length=1, max_length=64)  # array name inside each .npz

    @field_validator("axcodes")
    @classmethod
    def _axcodes(cls, v):
        axcodes_directions(v)  # one letter per axis, no axis twice
        return v.upper()


class CtData(Strict):
    """Preprocessing (spec §2.2) and the patient-level split (spec §2.4)."""

    spacing: SpacingMM = (1.5, 0.75, 0.75)  # mm along the output axes (CT-CLIP's convention)
    size: tuple[int, int, int] = (240, 480, 480)  # D, H, W; D = 3 x nodes
    axcodes: str = Field("SLP", pattern=r"^[LRAPSIlrapsi]{3}$")
    hu_window: tuple[float, float] = (-1000.0, 200.0)
    offset: float = Field(0.449, ge=-1.0, le=1.0)  # subtracted after scaling to [0, 1]: mean of ImageNet RGB means
    folds: int = Field(5, ge=2, le=20)  # patient-level K-fold CV on CT-RATE train (the paper: 5)
    fold: int = Field(0, ge=0)  # which fold validates
    split_seed: NonNegativeInt = 0  # seed of the patient-level fold assignment
    # Not found: where the release's header directions are blank, assume the voxel axes point this way.
    fallback_axcodes: str = Field("LPS", pattern=r"^[LRAPSIlrapsi]{3}$")
    # Which layout ``--data`` holds: "auto" tells a RAD-ChestCT release (its labels CSVs) from CT-RATE. RAD-ChestCT
    # is for external evaluation only (``medml evaluate ct``), on the 16 labels it shares with CT-RATE.
    dataset: Literal["auto", "ct-rate", "rad-chestct"] = "auto"
    radchest: CtRadChest = CtRadChest()

    @field_validator("size")
    @classmethod
    def _size(cls, v):
        if v[0] % 3 or not all(3 <= s <= 2048 for s in v):
            raise ValueError("size must be 3..2048 per axis with depth a multiple of 3 (slice triplets)")
        return v

    @model_validator(mode="after")
    def _fold_in_range(self):
        if self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} must be < folds {self.folds}")
        if self.hu_window[1] <= self.hu_window[0]:
            raise ValueError("hu_window must be (low, high) with high > low")
        return self

    def preprocessing(self) -> dict:
        """What the cache key and the checkpoint record: everything that changes the cached voxels."""
        return {
            "spacing": list(self.spacing),
            "size": list(self.size),
            "axcodes": self.axcodes.upper(),
            "hu_window": list(self.hu_window),
            "offset": self.offset,
            "fallback_axcodes": self.fallback_axcodes.upper(),
        }


class CtModel(Strict):
    """CT-SSG (spec §2.3) with the paper's ablation axes as switches."""

    labels: list[str] = list(LABELS)
    # "none": random init; "imagenet": torchvision ResNet18_Weights.IMAGENET1K_V1 (downloads once); or a local
    # path to that state_dict (resnet18-f37072fd.pth) for offline machines.
    weights: str = "imagenet"
    trunk_blocks: tuple[int, int, int, int] = (2, 2, 2, 2)  # ResNet-18; smaller only in tiny recipes
    embed_dim: int = Field(512, ge=8, le=4096)  # must equal the trunk's output width (512 for BasicBlock ResNets)
    depth: int = Field(1, ge=0, le=12)  # graph blocks (0 = no graph: the "node features only" ablation)
    operator: Literal["cheb", "gcn", "gat"] = "cheb"
    K: int = Field(3, ge=1, le=10)  # Chebyshev order (T_0 .. T_{K-1})
    window: int = Field(16, ge=1, le=256)  # each node links to nodes i +- 1..window
    edge_weight: Literal["inverse_distance", "uniform", "inverse_distance_legacy"] = "inverse_distance"
    norm: Literal["graph", "batch", "node"] = "graph"  # "batch" is PyG's batch-global LayerNorm (the original)
    readout: Literal["mean", "max", "attention"] = "mean"
    position_embedding: bool = True
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    head_hidden: int = Field(256, ge=1, le=8192)
    head_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    grad_checkpointing: bool = True  # recompute the trunk in backward (paper size needs it on most GPUs)
    trunk_chunk: int = Field(0, ge=0)  # triplets per trunk call (0: all at once)

    @field_validator("trunk_blocks")
    @classmethod
    def _blocks(cls, v):
        if not all(1 <= b <= 8 for b in v):
            raise ValueError("trunk_blocks must be 1..8 blocks per stage")
        return v


class CtEvaluate(Strict):
    """How probabilities become decisions (spec §2.8: the threshold rule is not found, so it is a key)."""

    threshold_rule: Literal["fixed", "val_f1"] = "fixed"
    threshold: float = Field(0.5, gt=0.0, lt=1.0)  # "fixed": every label; "val_f1": fallback for labels w/o positives
    n_bootstrap: int = Field(1000, ge=0, le=100000)


class CtPredict(Strict):
    """What counts as a chest CT at prediction time."""

    min_slices: int = Field(16, ge=2)
    min_extent_mm: float = Field(120.0, ge=0.0)  # z coverage; a chest CT covers ~300 mm
    profile_labels: int = Field(4, ge=0, le=18)  # z-profile curves drawn for at most this many positive findings


class CtConfig(PipelineConfig):
    data: CtData = CtData()
    model: CtModel = CtModel()
    evaluate: CtEvaluate = CtEvaluate()
    predict: CtPredict = CtPredict()
    # Not found (spec §2.4): optimiser, lr, epochs, schedule. Sibling CT-AGRG config: batch 4, lr 1e-4, 40 epochs.
    train: TrainConfig = TrainConfig(
        batch_size=4,
        num_workers=4,
        max_epochs=40,
        monitor="val_auroc",
        monitor_mode="max",
        optim=OptimConfig(name="adamw", lr=1e-4, weight_decay=0.01, schedule="cosine", warmup_epochs=1.0),
    )
    stages: list[StageConfig] = [StageConfig(name="train"), StageConfig(name="thresholds", kind="run")]

    @model_validator(mode="after")
    def _stage_names(self):
        for stage in self.stages:
            expected = "run" if stage.name == "thresholds" else "fit"
            if stage.name not in ("train", "thresholds") or stage.kind != expected:
                raise ValueError(f"stage '{stage.name}' ({stage.kind}): ct has 'train' (fit) and 'thresholds' (run)")
        return self
