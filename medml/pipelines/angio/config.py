"""Config schema of the ``angio`` pipeline: the blocks of `AngioConfig` and their defaults (= ``paper.yaml``).

RNPLL publishes no architecture or hyper-parameters: values tagged [V] are verified (DiffRect, MOSXAV), [P] are
medml's proposal (see the model card ``pipelines/angio/README.md``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from medml.config import OptimConfig, PipelineConfig, StageConfig, Strict, TrainConfig
from medml.data.mosxav import CLASS_NAMES, TRAIN_CLASSES

Probability = Annotated[float, Field(ge=0.0, le=1.0)]  # probabilities and thresholds
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]  # shares that cannot be empty
Decay = Annotated[float, Field(ge=0.0, lt=1.0)]  # EMA decay / momentum: 1 would never move

DIFFUSION_PRESETS = {"default": (1000, 10), "diffrect": (10, 2)}  # (training timesteps, DDIM sampling steps)


class AngioData(Strict):
    """Frames, labelled fraction and augmentation."""

    size: PositiveInt = 512  # MOSXAV frames are 512x512 [V]; any input is resized to this and predictions resized back
    labelled_fraction: Fraction = 0.25  # 1/8, 1/4, 1/2, 1 of the annotated training frames [P protocol]
    labelled_by: Literal["frames", "videos"] = "frames"  # "videos" is stricter (no neighbouring-frame leakage)
    split_seed: NonNegativeInt = 0  # seed of the labelled draw (recorded in run.json)
    unlabelled_batch_size: PositiveInt = 4  # per device; train.batch_size is the labelled batch [P]
    others: Literal["ignore", "background"] = "ignore"  # class 5 (test only): excluded from scoring, or background
    augment: bool = True
    rotate_limit: float = Field(15.0, ge=0.0, le=180.0)  # degrees (XRAVOS uses +-15 [V])
    scale_min: PositiveFloat = 0.85
    scale_max: PositiveFloat = 1.15
    flip_p: Probability = 0.5
    brightness: Probability = 0.3
    contrast: Probability = 0.3
    cutout_p: Probability = 0.5


class AngioModel(Strict):
    """Networks, teacher and pseudo-labels. All [P] except where noted."""

    # supervised: segmenter on labelled frames; mean_teacher: + EMA-teacher pseudo-labels; diffrect: + label-latent
    # diffusion that segments and rectifies the pseudo-labels, without prototypes; rnpll: diffrect + prototypes.
    method: Literal["rnpll", "diffrect", "mean_teacher", "supervised"] = "rnpll"
    num_classes: int = Field(TRAIN_CLASSES, ge=2)  # background, vessel, contrast catheter, catheter, balloon [V]
    class_names: list[str] = list(CLASS_NAMES[:TRAIN_CLASSES])
    in_channels: PositiveInt = 1  # grey X-ray
    segmenter: Literal["basic_unet", "unet"] = "basic_unet"
    seg_features: list[PositiveInt] = [32, 32, 64, 128, 256, 32]  # MONAI BasicUNet defaults
    latent_channels: PositiveInt = 64  # d of the label latent (spec §A5.2)
    encoder_widths: list[PositiveInt] = [32, 64, 128]  # three stride-2 levels: latent at stride 8 (spec §A5.2)
    cond_channels: PositiveInt = 64
    denoiser_channels: list[PositiveInt] = [128, 256]
    denoiser_res_blocks: PositiveInt = 1
    denoiser_attention: list[bool] = [False, True]
    denoiser_head_channels: PositiveInt = 32
    denoiser_groups: PositiveInt = 32
    ema_decay: Decay = 0.99  # mean-teacher EMA (spec §A5.4)
    confidence: Probability = 0.8  # pseudo-label confidence threshold (DiffRect default [V])
    # diffrect/rnpll: teacher pseudo-labels from DDIM sampling of the label latent (else from the teacher segmenter).
    refine_pseudo_labels: bool = True
    # Steps before the diffusion pseudo-labels are used (DiffRect refine_start [V]); the segmenter's before.
    refine_start_step: NonNegativeInt = 1000
    # The same start as a share of the run's optimiser steps (overrides refine_start_step when set): a fixed step
    # count is early in a short run and late in a long one.
    refine_start_fraction: Probability | None = None
    # Diffusion pseudo-labels only while the teacher's diffusion predictor scores at least its segmenter on the
    # labelled batch (EMAs of the mean foreground Dice against the ground truth); else the segmenter's. A weaker
    # predictor taking over the pseudo-labels feeds its own errors back (measured: see the model card).
    refine_gate: bool = True
    refine_gate_momentum: Decay = 0.9  # EMA of the two labelled-batch Dice scores the gate compares
    # diffrect/rnpll: what predicts. "diffusion": DDIM over the label latent conditioned on the frame, decoded to
    # logits (the method); "segmenter": the plain segmenter (the supervised baseline's predictor).
    predictor: Literal["diffusion", "segmenter"] = "diffusion"
    # The denoiser is also conditioned on the label latent of the segmenter's softmax (a prior it may rectify).
    segmenter_prior: bool = True
    # The label decoder also sees image features at strides 1..s/2 (a bypass of the label latent; off: the decoded
    # logits carry only what the denoised latent holds).
    decoder_skips: bool = False
    # The diffusion predictor's logits = decoded latent + log-softmax of the segmenter's logits: the diffusion model
    # rectifies the segmenter's prediction (DiffRect's idea, in logit space) rather than redrawing 1-3 px devices
    # through the stride-8 latent. Off: the decoded latent alone (the former default: 0.33 vs 0.46 mean fg Dice on
    # the hard synthetic benchmark; see the model card).
    prior_residual: bool = True
    # Stress test only: share of 16-px tiles of the teacher's pseudo-labels corrupted (removed / flipped / shifted).
    pseudo_label_corruption: Probability = 0.0
    # Validate, evaluate and predict with the EMA teacher, for EVERY method (supervised included: its EMA is kept
    # but never used in training), so that all methods are scored with the same kind of weights.
    infer_with_teacher: bool = True

    @field_validator("seg_features")
    @classmethod
    def _features(cls, value: list[int]) -> list[int]:
        if len(value) not in (5, 6):
            raise ValueError("needs 6 widths (BasicUNet) or 5 (UNet)")
        return value


class AngioDiffusion(Strict):
    """Label-latent diffusion: x0 prediction, DDPM training noise, DDIM sampling."""

    preset: Literal["default", "diffrect"] = "default"  # default: T=1000, DDIM 10 [P]; diffrect: T=10, DDIM 2 [V]
    train_timesteps: PositiveInt | None = None  # overrides the preset
    inference_steps: PositiveInt | None = None  # overrides the preset
    schedule: Literal["cosine", "linear_beta", "scaled_linear_beta", "sigmoid_beta"] = "cosine"  # DiffRect [V]

    def resolved(self) -> tuple[int, int]:
        steps_train, steps_sample = DIFFUSION_PRESETS[self.preset]
        steps_train = self.train_timesteps or steps_train
        steps_sample = min(self.inference_steps or steps_sample, steps_train)
        return steps_train, steps_sample


class AngioLoss(Strict):
    """``L = L_sup + lambda_u(t) L_unsup + lambda_diff L_diff + lambda_p L_proto`` (spec §A5.6) [P]."""

    dice_weight: NonNegativeFloat = 1.0
    ce_weight: NonNegativeFloat = 1.0
    class_weights: list[NonNegativeFloat] | None = None  # cross-entropy weight per class (None: equal)
    unsup_weight: NonNegativeFloat = 1.0  # lambda_u, ramped
    rampup_fraction: Probability = 0.4  # sigmoid ramp of lambda_u over this share of the training steps
    # Supervised warm-up: no unlabelled term (and no teacher pass) during this share of the training steps; the ramp
    # starts after it. Pseudo-labels of an untrained teacher are confident background: confirmation bias.
    warmup_fraction: Probability = 0.2
    # Cross-entropy class weights on the pseudo-labels too. Off: class_weights compensate the rarity of a class in the
    # ground truth; a teacher trained with them already over-predicts the rare classes (balloons), and weighting its
    # pseudo-labels again amplifies the hallucinations.
    unsup_class_weights: bool = False
    # Class-balanced pseudo-label weights ("prior"): a pseudo-label of class c weighs min(1, pi_c / q_c), pi_c the
    # class frequency of the labelled ground truth and q_c that of the confident pseudo-labels (both EMAs), so a class
    # the teacher over-predicts (hallucinations) counts only as much as the labelled prior supports; "none": weight 1.
    pseudo_balance: Literal["prior", "none"] = "prior"
    pseudo_balance_momentum: Decay = 0.9  # EMA of pi and q (and of the teacher's mean probabilities)
    # Distribution alignment (ReMixMatch) of the teacher before thresholding: probabilities times pi_c / p_c, p_c the
    # EMA of the teacher's mean probability of class c on unlabelled pixels (ratio capped at 10), renormalised. A class
    # the teacher under-predicts (balloons) gains confident pixels instead of being taught as background; the
    # "prior" weights above can only lower the weight of an over-predicted class.
    distribution_alignment: bool = False
    diff_weight: NonNegativeFloat = 1.0  # lambda_diff: x0 latent MSE + decoded Dice/CE + label auto-encoding
    # lambda_p: InfoNCE of the student's denoised latents against the prototypes (labelled cells: ground truth;
    # unlabelled cells: the prototype-checked pseudo-labels).
    proto_weight: NonNegativeFloat = 0.1
    # Teacher (weak view) -> student (strong view) consistency of the prototype assignments of the denoised latents.
    proto_consistency_weight: NonNegativeFloat = 0.1
    proto_temperature: PositiveFloat = 0.1  # tau
    proto_momentum: Decay = 0.99  # EMA of the class prototypes
    proto_min_fraction: Fraction = 0.25  # share of a stride-8 cell a foreground class needs to label that cell
    # ||p_c^U - p_c^L||^2: unlabelled-batch prototypes (student's denoised latents) against the GT-anchored bank.
    proto_align_weight: NonNegativeFloat = 0.1
    # Prototype denoising of the pseudo-labels: each pixel's weight is the prototype probability of its pseudo-label
    # in the teacher's denoised latent cell ("weight"), or foreground pixels whose cell is assigned to another
    # foreground class are relabelled to it and those assigned to background are ignored ("relabel"), or "none"
    # (not "off": YAML reads that as false).
    proto_denoise: Literal["weight", "relabel", "none"] = "weight"


class AngioEval(Strict):
    figure_frames: NonNegativeInt = 4  # frames shown in the evaluation figure
    frame_batch: PositiveInt = 16  # frames per forward pass in evaluate / predict
    seed: NonNegativeInt = 0  # seed of the DDIM noise at inference (predictions are reproducible)
    # One DDIM starting noise for every frame of a video (no frame-to-frame flicker from sampling).
    shared_video_noise: bool = True
    # HD95 (pixels) of a class present in only one of prediction and ground truth (missed or hallucinated): the
    # frame diagonal when None (the largest distance in the frame), else this value.
    hd95_missing_penalty: PositiveFloat | None = None


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
