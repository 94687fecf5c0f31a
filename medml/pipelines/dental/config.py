"""HierarchicalDet configuration: the defaults are the published set-up (spec §1, §2.7); every "not found" is a key.

Stages say which DENTEX tier they train on (``tier: quadrant | enumeration | diagnosis``); each starts from the
weights the previous stage left (the engine keeps one module across stages), and ``hierarchy.inject`` says how the
previous stage's detections enter the noised proposal boxes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from medml.config import NonNegativeInt, OptimConfig, PipelineConfig, PositiveInt, StageConfig, Strict, TrainConfig

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Tier = Literal["quadrant", "enumeration", "diagnosis"]
#: Tier -> how many label levels it supervises (quadrant; + tooth; + diagnosis).
TIER_LEVELS: dict[str, int] = {"quadrant": 1, "enumeration": 2, "diagnosis": 3}
LEVELS = ("quadrant", "enumeration", "diagnosis")
NUM_CLASSES = (4, 8, 4)


class DentalStage(StageConfig):
    """One hierarchy stage: ``{tier: enumeration}`` trains on that tier's images with its label levels.

    ``name`` defaults to the tier (it names the stage folder and keys ``--resume``).
    """

    name: str = ""
    tier: Tier = "diagnosis"

    @model_validator(mode="before")
    @classmethod
    def _name_from_tier(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if not data.get("tier") and data.get("name") in TIER_LEVELS:
                data["tier"] = data["name"]
            if not data.get("name"):
                data["name"] = str(data.get("tier") or "diagnosis")
        return data

    @model_validator(mode="after")
    def _fit_only(self) -> DentalStage:
        if self.kind != "fit":
            raise ValueError(f"stage '{self.name}': dental stages are kind 'fit'")
        return self


class DentalData(Strict):
    """Input size and augmentation (spec §1.1; the flip remaps quadrants, fixing §2.8)."""

    # Short side of the network input; panoramics are ~2:1, the long side is capped at max_size. DiffusionDet
    # trains multi-scale 480..800 and tests at 800 (spec §1.1); medml uses one scale per recipe (not found for
    # HierarchicalDet beyond the inherited detectron2 defaults).
    min_size: Annotated[int, Field(ge=32, le=2048)] = 800
    max_size: Annotated[int, Field(ge=32, le=4096)] = 1333
    train_min_sizes: list[Annotated[int, Field(ge=32, le=2048)]] = [
        480,
        512,
        544,
        576,
        608,
        640,
        672,
        704,
        736,
        768,
        800,
    ]
    # detectron2's "absolute range" crop of the HierarchicalDet config (p 0.5, window 384..600 px after resizing the
    # short side to 400/500/600); null disables it
    crop: tuple[Annotated[int, Field(ge=16)], Annotated[int, Field(ge=16)]] | None = (384, 600)
    hflip_p: Probability = 0.5  # with quadrant remapping 1<->2, 3<->4
    val_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1  # held-out share of the quadrant/enumeration tiers
    split_seed: NonNegativeInt = 0
    exclude_overlap: bool = False  # drop images that also appear in another tier (spec §3.1 leakage note)


class DentalModel(Strict):
    """DiffusionDet with HierarchicalDet's three classifiers (spec §1.3, §2.2), or a torchvision baseline."""

    arch: Literal["diffusiondet", "fasterrcnn", "retinanet"] = "diffusiondet"
    # resnet50 = the released Base-DiffusionDet R50-FPN; swin_b = torchvision Swin-B (ImageNet-1k; the released
    # final config names Swin-L, which torchvision lacks); resnet18/resnet_small only for tiny recipes.
    backbone: Literal["resnet50", "resnet101", "swin_b", "resnet18", "resnet_small"] = "resnet50"
    # "imagenet": torchvision's weights API (downloads once); "none": random; or a local torchvision state dict.
    weights: str = "imagenet"
    trainable_layers: Annotated[int, Field(ge=0, le=5)] = 3  # FREEZE_AT 2: stem + res2 frozen (FrozenBN throughout)
    fpn_channels: Annotated[int, Field(ge=8, le=1024)] = 256
    small_width: Annotated[int, Field(ge=8, le=256)] = 16  # resnet_small: width of the first stage (tiny only)
    num_proposals: Annotated[int, Field(ge=1, le=5000)] = 1000  # HierarchicalDet config (DiffusionDet default 300)
    hidden_dim: Annotated[int, Field(ge=8, le=1024)] = 256  # must equal fpn_channels
    num_heads: Annotated[int, Field(ge=1, le=12)] = 6  # dynamic-head stages
    nheads: PositiveInt = 8  # self-attention heads
    dim_feedforward: PositiveInt = 2048
    dim_dynamic: PositiveInt = 64
    pooler_resolution: Annotated[int, Field(ge=2, le=14)] = 7
    num_cls_layers: Annotated[int, Field(ge=0, le=4)] = 1
    num_reg_layers: Annotated[int, Field(ge=0, le=6)] = 3
    prior_prob: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.01
    # box regressor init: "xavier" as released (random deltas of order 1 that move every box at the first forward and
    # compound over the stages); "zero" starts each stage as the identity on its proposals (short runs: tiny recipe)
    box_init: Literal["xavier", "zero"] = "xavier"
    timesteps: Annotated[int, Field(ge=10, le=10000)] = 1000
    snr_scale: Annotated[float, Field(gt=0.0, le=10.0)] = 2.0
    sample_steps: Annotated[int, Field(ge=1, le=50)] = 1  # DDIM steps at inference (the released code: 1)
    box_renewal: bool = True
    renewal_threshold: Probability = 0.5
    ddim_eta: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    nms_iou: Probability = 0.5
    max_detections: Annotated[int, Field(ge=1, le=10000)] = 100  # COCO maxDets

    @model_validator(mode="after")
    def _widths(self) -> DentalModel:
        if self.hidden_dim != self.fpn_channels:
            raise ValueError("model.hidden_dim must equal model.fpn_channels (the head reads FPN features directly)")
        if self.hidden_dim % self.nheads:
            raise ValueError("model.hidden_dim must be divisible by model.nheads")
        return self


class DentalLoss(Strict):
    """Set loss and SimOTA matcher (spec §1.4, §2.4)."""

    class_weight: float = Field(2.0, ge=0.0)  # per level
    l1_weight: float = Field(5.0, ge=0.0)
    giou_weight: float = Field(2.0, ge=0.0)
    focal_alpha: Probability = 0.25
    focal_gamma: float = Field(2.0, ge=0.0)
    ota_k: PositiveInt = 5
    center_radius: float = Field(2.5, gt=0.0)
    deep_supervision: bool = True


class DentalHierarchy(Strict):
    """How a stage uses the previous one's detections (spec §2.5)."""

    # released: the code's way: prior boxes follow the GT rows of x_start AND replace the first rows of the noise.
    # clean: prior boxes take placeholder rows of x_start and are noised like GT boxes; the noise stays Gaussian.
    # none: no injection (the "w/o noisy-box manipulation" ablation).
    inject: Literal["released", "clean", "none"] = "released"
    prior_score: Probability = 0.5
    prior_steps: Annotated[int, Field(ge=1, le=50)] = 1  # sampling steps used to compute the prior detections


class DentalEvaluate(Strict):
    score_threshold: Probability = 0.0  # the challenge container: 0.0


class DentalPredict(Strict):
    score_threshold: Probability = 0.3  # boxes below it are left out of the overlay figure only
    max_pixels: PositiveInt = 40_000_000  # refuse larger images


class DentalConfig(PipelineConfig):
    data: DentalData = DentalData()
    model: DentalModel = DentalModel()
    loss: DentalLoss = DentalLoss()
    hierarchy: DentalHierarchy = DentalHierarchy()
    evaluate: DentalEvaluate = DentalEvaluate()
    predict: DentalPredict = DentalPredict()
    # HierarchicalDet config (spec §2.7): AdamW 2.5e-5, wd 1e-4, clip 1.0, batch 2, 40k iterations, warmup 1000 it
    # from x0.01, LR steps at 210k/250k never reached (= constant). 40k it at batch 2 = ~115 epochs of ~700 images;
    # the 1000-iteration warm-up = ~2.9 epochs.
    train: TrainConfig = TrainConfig(
        batch_size=2,
        num_workers=2,
        max_epochs=115,
        grad_clip=1.0,
        seed=40244023,
        monitor="val_ap",
        monitor_mode="max",
        optim=OptimConfig(name="adamw", lr=2.5e-5, weight_decay=1e-4, schedule="none", warmup_epochs=2.9),
    )
    stages: list[DentalStage] = [
        DentalStage(tier="quadrant"),
        DentalStage(tier="enumeration"),
        DentalStage(tier="diagnosis"),
    ]

    @field_validator("stages")
    @classmethod
    def _unique(cls, stages: list[DentalStage]) -> list[DentalStage]:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique (got {names})")
        return stages

    @model_validator(mode="after")
    def _baselines_train_on_full_labels(self) -> DentalConfig:
        if self.model.arch != "diffusiondet":
            bad = [s.name for s in self.stages if s.enabled and s.tier != "diagnosis"]
            if bad:
                raise ValueError(
                    f"model.arch {self.model.arch} trains on the fully labelled tier only; disable stages {bad} "
                    "(the baselines have no hierarchy)"
                )
        return self
