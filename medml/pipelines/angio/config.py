"""Config schema of the ``angio`` pipeline: the blocks of `AngioConfig` and their defaults (= ``paper.yaml``).

RNPLL publishes no architecture or hyper-parameters: values tagged [V] are verified (DiffRect, MOSXAV), [P] are
medml's proposal (see the model card ``pipelines/angio/README.md``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from medml.config import OptimConfig, PipelineConfig, StageConfig, Strict, TrainConfig
from medml.data.mosxav import CLASS_NAMES, TRAIN_CLASSES

DIFFUSION_PRESETS = {"default": (1000, 10), "diffrect": (10, 2)}  # (training timesteps, DDIM sampling steps)


class AngioData(Strict):
    """Frames, labelled fraction and augmentation."""

    size: int = 512  # MOSXAV frames are 512x512 [V]; any input is resized to this and predictions resized back
    labelled_fraction: float = 0.25  # 1/8, 1/4, 1/2, 1 of the annotated training frames [P protocol]
    labelled_by: Literal["frames", "videos"] = "frames"  # "videos" is stricter (no neighbouring-frame leakage)
    split_seed: int = 0  # seed of the labelled draw (recorded in run.json)
    unlabelled_batch_size: int = 4  # per device; train.batch_size is the labelled batch [P]
    others: Literal["ignore", "background"] = "ignore"  # class 5 (test only): excluded from scoring, or background
    augment: bool = True
    rotate_limit: float = 15.0  # degrees (XRAVOS uses +-15 [V])
    scale_min: float = 0.85
    scale_max: float = 1.15
    flip_p: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    cutout_p: float = 0.5

    @field_validator("labelled_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError("must be in (0, 1]")
        return value


class AngioModel(Strict):
    """Networks, teacher and pseudo-labels. All [P] except where noted."""

    method: Literal["rnpll", "mean_teacher", "supervised"] = "rnpll"
    num_classes: int = TRAIN_CLASSES  # background, vessel, contrast catheter, catheter, balloon [V]
    class_names: list[str] = list(CLASS_NAMES[:TRAIN_CLASSES])
    in_channels: int = 1  # grey X-ray
    segmenter: Literal["basic_unet", "unet"] = "basic_unet"
    seg_features: list[int] = [32, 32, 64, 128, 256, 32]  # MONAI BasicUNet defaults
    latent_channels: int = 64  # d of the label latent (spec §A5.2)
    encoder_widths: list[int] = [32, 64, 128]  # three stride-2 levels: latent at stride 8 (spec §A5.2)
    cond_channels: int = 64
    denoiser_channels: list[int] = [128, 256]
    denoiser_res_blocks: int = 1
    denoiser_attention: list[bool] = [False, True]
    denoiser_head_channels: int = 32
    denoiser_groups: int = 32
    ema_decay: float = 0.99  # mean-teacher EMA (spec §A5.4)
    confidence: float = 0.8  # pseudo-label confidence threshold (DiffRect default [V])
    refine_pseudo_labels: bool = True  # rnpll: teacher pseudo-labels rectified by DDIM sampling
    refine_start_step: int = 1000  # steps before the rectified pseudo-labels are used (DiffRect refine_start [V])
    refine_at_inference: bool = False  # predict/evaluate with DDIM rectification of the segmenter's output
    infer_with_teacher: bool = True  # validate, evaluate and predict with the EMA teacher

    @field_validator("seg_features")
    @classmethod
    def _features(cls, value: list[int]) -> list[int]:
        if len(value) not in (5, 6):
            raise ValueError("needs 6 widths (BasicUNet) or 5 (UNet)")
        return value


class AngioDiffusion(Strict):
    """Label-latent diffusion: x0 prediction, DDPM training noise, DDIM sampling."""

    preset: Literal["default", "diffrect"] = "default"  # default: T=1000, DDIM 10 [P]; diffrect: T=10, DDIM 2 [V]
    train_timesteps: int | None = None  # overrides the preset
    inference_steps: int | None = None  # overrides the preset
    schedule: Literal["cosine", "linear_beta", "scaled_linear_beta", "sigmoid_beta"] = "cosine"  # DiffRect [V]

    def resolved(self) -> tuple[int, int]:
        steps_train, steps_sample = DIFFUSION_PRESETS[self.preset]
        steps_train = self.train_timesteps or steps_train
        steps_sample = min(self.inference_steps or steps_sample, steps_train)
        return steps_train, steps_sample


class AngioLoss(Strict):
    """``L = L_sup + lambda_u(t) L_unsup + lambda_diff L_diff + lambda_p L_proto`` (spec §A5.6) [P]."""

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    class_weights: list[float] | None = None  # cross-entropy weight per class (None: equal)
    unsup_weight: float = 1.0  # lambda_u, ramped
    rampup_fraction: float = 0.4  # sigmoid ramp of lambda_u over this share of the training steps
    diff_weight: float = 1.0  # lambda_diff: x0 latent MSE + decoded Dice/CE + label auto-encoding
    proto_weight: float = 0.1  # lambda_p
    proto_temperature: float = 0.1  # tau
    proto_momentum: float = 0.99  # EMA of the class prototypes
    proto_min_fraction: float = 0.25  # share of a stride-8 cell a foreground class needs to label that cell
    proto_align_weight: float = 0.0  # optional ||p_L - p_U||^2 between labelled and unlabelled batch prototypes


class AngioEval(Strict):
    figure_frames: int = 4  # frames shown in the evaluation figure
    frame_batch: int = 16  # frames per forward pass in evaluate / predict
    seed: int = 0  # seed of the DDIM noise at inference (predictions are reproducible)


class AngioConfig(PipelineConfig):
    """Defaults = the paper-size configuration (``pipelines/angio/paper.yaml``)."""

    train: TrainConfig = TrainConfig(
        batch_size=4,
        max_epochs=100,
        monitor="val_dice",
        monitor_mode="max",
        # DiffRect's segmentation optimiser [V]: SGD 0.01, momentum 0.9, wd 1e-4, poly 0.9.
        optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, schedule="poly", poly_power=0.9),
    )
    stages: list[StageConfig] = [StageConfig(name="train")]
    data: AngioData = AngioData()
    model: AngioModel = AngioModel()
    diffusion: AngioDiffusion = AngioDiffusion()
    loss: AngioLoss = AngioLoss()
    eval: AngioEval = AngioEval()
