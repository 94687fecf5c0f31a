"""Config schema of the ``fundus`` pipeline: the blocks of `FundusConfig` and their defaults (= ``paper.yaml``).

Values tagged [V] are verified in public REFUGE2 participant code or baselines (spec part B6/B7), [P] are medml's
proposal; the model card (``pipelines/fundus/README.md``) lists them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from medml.config import (
    NonNegativeFloat,
    NonNegativeInt,
    OptimConfig,
    PipelineConfig,
    PositiveFloat,
    PositiveInt,
    StageConfig,
    Strict,
    TrainConfig,
)

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Size = Annotated[int, Field(ge=32, le=2048)]
EFFICIENTNETS = tuple(f"efficientnet_b{i}" for i in range(8))
Mode = Literal["locate", "segment", "classify", "all"]
# Parameter prefixes each stage mode trains.
MODE_PREFIXES: dict[str, list[str]] = {
    "locate": ["locator."],
    "segment": ["segmenter."],
    "classify": ["classifier."],
    "all": [],
}


class FundusStage(StageConfig):
    """A stage that says which task it trains: ``locate`` (disc + fovea on the downscaled image), ``segment``
    (rim/cup on the disc ROI), ``classify`` (glaucoma from ROI, masks and vCDR) or ``all``."""

    mode: Mode = "all"


class FundusData(Strict):
    """Input sizes, the disc ROI and augmentation."""

    locate_size: Size = 512  # downscaled full image for disc and fovea (JunMa 512 [V]; M-Net 640 [V])
    roi_size: Size = 512  # disc ROI resampled to this for segmentation [V JunMa stage 2 / pOSAL]
    cls_size: Size = 512  # ROI resampled to this for the classifier [P] (JunMa: 512 full image [V])
    roi_scale: Annotated[float, Field(ge=1.2, le=6.0)] = 2.5  # ROI side / disc diameter (spec B7: 2-3x) [P]
    roi_shift: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1  # training jitter of the ROI centre, share of its side
    roi_zoom: Annotated[float, Field(ge=0.0, le=0.5)] = 0.15  # training jitter of the ROI side (+- share)
    fovea_sigma: Annotated[float, Field(gt=0.0, le=0.2)] = 0.015  # Gaussian heatmap sigma, share of locate_size [P]
    augment: bool = True
    hflip_p: Probability = 0.5  # left/right eye
    brightness: Probability = 0.25
    contrast: Probability = 0.25
    hue_shift: NonNegativeInt = 10  # HueSaturationValue limits (camera colour casts) [P]
    colour_shift: NonNegativeInt = 20  # RGBShift limit per channel
    gamma_p: Probability = 0.3
    blur_p: Probability = 0.2
    cache_images: bool = False  # keep decoded photographs in memory (small datasets only)


class FundusModel(Strict):
    """The three networks and the inference thresholds."""

    locator_channels: list[PositiveInt] = [16, 32, 64, 128, 256]  # MONAI UNet, outputs disc + fovea heatmap [P]
    segmenter_channels: list[PositiveInt] = [32, 64, 128, 256, 512]  # MONAI UNet, 3 classes bg/rim/cup [P]
    res_units: NonNegativeInt = 2
    classifier: Literal[EFFICIENTNETS] = "efficientnet_b6"  # JunMa REFUGE2: EfficientNet-B6 [V]
    # "imagenet": torchvision's ImageNet weights (downloaded once into the torch hub cache); "none": random
    # initialisation; or the path of a local torchvision state dict (.pth) for offline machines.
    weights: str = "imagenet"
    vcdr_feature: bool = True  # the predicted vCDR enters the classifier head next to the image features
    classifier_masks: Literal["predicted", "reference"] = "predicted"  # masks the classifier trains on
    disc_threshold: Probability = 0.5  # locator disc probability (M-Net 0.5 [V])
    min_disc_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.0005  # of the downscaled image: less = no disc
    disc_probability: Probability = 0.5  # p(rim) + p(cup) on the ROI
    cup_probability: Probability = 0.5  # p(cup) / (p(rim) + p(cup)) inside the disc


class FundusLoss(Strict):
    dice_weight: NonNegativeFloat = 1.0  # DiceCE on the ROI (spec B7) and on the locator's disc
    ce_weight: NonNegativeFloat = 1.0
    fovea_weight: NonNegativeFloat = 1.0  # spatial cross-entropy of the fovea heatmap
    pos_weight: PositiveFloat = 1.0  # glaucoma BCE weight (JunMa used 9 for ~10 % prevalence [V])


class FundusEval(Strict):
    write_masks: bool = True  # challenge BMPs of the evaluated split under submission/segmentation/
    figure_examples: NonNegativeInt = 4


class FundusConfig(PipelineConfig):
    """Defaults = the paper-size configuration (``pipelines/fundus/paper.yaml``)."""

    train: TrainConfig = TrainConfig(
        batch_size=8,
        max_epochs=100,
        monitor="val_loss",
        monitor_mode="min",
        optim=OptimConfig(name="adam", lr=1e-4, schedule="cosine", warmup_epochs=1.0),  # JunMa: Adam 1e-4 [V]
    )
    stages: list[FundusStage] = [
        FundusStage(name="locate", mode="locate", epochs=100),
        FundusStage(name="segment", mode="segment", epochs=100),
        FundusStage(name="classify", mode="classify", epochs=50),
    ]
    data: FundusData = FundusData()
    model: FundusModel = FundusModel()
    loss: FundusLoss = FundusLoss()
    eval: FundusEval = FundusEval()
