"""LightningModule of the angio pipeline: RNPLL-style training and its baselines in one loop.

``model.method``:

* ``supervised``: Dice + CE of the segmenter on the labelled frames only (the unlabelled stream is loaded so every
  method runs the same number of steps, but ignored);
* ``mean_teacher``: + confidence-masked pseudo-labels from an EMA teacher's weak view on the student's strong view;
* ``diffrect``: + label-latent diffusion that segments (DDIM over the label latent conditioned on the frame and on
  the segmenter's prior, decoded to logits): x0 MSE, decoded Dice + CE at a random noise level and along the DDIM
  sampling path itself, label auto-encoding; after ``model.refine_start_step`` steps the teacher's pseudo-labels
  come from its diffusion predictor (DiffRect's ``refine_start``). No prototypes.
* ``rnpll``: diffrect + prototype contrastive consistency on the denoised latents that produce the predictions:
  a prototype bank of the student's sampled latents on labelled frames (ground-truth anchors), InfoNCE of labelled
  and unlabelled latents against it, teacher-student consistency of prototype assignments, labelled/unlabelled
  prototype alignment, and prototype denoising of the pseudo-labels (``loss.proto_denoise``).

Every method keeps an EMA teacher (``torch.optim.swa_utils.AveragedModel`` + ``get_ema_multi_avg_fn``, buffers
averaged; for ``supervised`` it is never used in training) so all of them are validated and evaluated with the same
kind of weights (``model.infer_with_teacher``). It is part of the state dict, so checkpoints and ``--resume`` keep it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medml.config import StageConfig
from medml.data.mosxav import IGNORE_INDEX
from medml.pipelines.angio import losses as L_
from medml.pipelines.angio.model import AngioNet
from medml.pipelines.base import MedmlModule

DIFFUSION_METHODS = ("diffrect", "rnpll")
TRAINING_EMAS = ("label_prior", "pseudo_prior", "teacher_prior", "refine_scores")  # buffers only training updates


def build_net(cfg: Any) -> AngioNet:
    m = cfg.model
    return AngioNet(
        num_classes=m.num_classes,
        in_channels=m.in_channels,
        segmenter=m.segmenter,
        seg_features=m.seg_features,
        latent_channels=m.latent_channels,
        encoder_widths=m.encoder_widths,
        cond_channels=m.cond_channels,
        denoiser_channels=m.denoiser_channels,
        denoiser_res_blocks=m.denoiser_res_blocks,
        denoiser_attention=m.denoiser_attention,
        denoiser_head_channels=m.denoiser_head_channels,
        denoiser_groups=m.denoiser_groups,
        with_diffusion=m.method in DIFFUSION_METHODS,
        segmenter_prior=m.segmenter_prior,
        decoder_skips=m.decoder_skips,
        prior_residual=m.prior_residual,
    )


def build_schedulers(cfg: Any) -> tuple[DDPMScheduler, DDIMScheduler, int]:
    """Training (DDPM noise) and sampling (DDIM) schedulers with x0 prediction, and the DDIM step count."""
    steps_train, steps_sample = cfg.diffusion.resolved()
    kwargs = {
        "num_train_timesteps": steps_train,
        "schedule": cfg.diffusion.schedule,
        "prediction_type": "sample",
        "clip_sample": False,
    }  # latents are unit-variance, not in [-1, 1]
    return DDPMScheduler(**kwargs), DDIMScheduler(**kwargs), steps_sample


class AngioModule(MedmlModule):
    """Student ``net``, EMA ``teacher``, class ``prototypes`` (buffers) and the losses of ``model.method``."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.method = config.model.method
        self.net = build_net(config)
        self.teacher = AveragedModel(
            self.net, multi_avg_fn=get_ema_multi_avg_fn(config.model.ema_decay), use_buffers=True
        )
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.ddpm, self.ddim, self.sample_steps = build_schedulers(config)
        num_classes, d = config.model.num_classes, config.model.latent_channels
        self.register_buffer("prototypes", torch.zeros(num_classes, d))
        self.register_buffer("prototypes_initialised", torch.zeros(num_classes, dtype=torch.bool))
        lc = config.loss
        self.seg_loss = L_.MaskedDiceCE(
            dice_weight=lc.dice_weight, ce_weight=lc.ce_weight, class_weights=lc.class_weights
        )
        # Loss of the pseudo-labels: the class weights only with loss.unsup_class_weights.
        self.unsup_loss = L_.MaskedDiceCE(
            dice_weight=lc.dice_weight,
            ce_weight=lc.ce_weight,
            class_weights=lc.class_weights if lc.unsup_class_weights else None,
        )
        # Class frequencies of the labelled ground truth (pi) and of the confident pseudo-labels (q), EMAs for the
        # class-balanced pseudo-label weights. Saved like the prototypes, so that a resumed run continues them.
        self.register_buffer("label_prior", torch.zeros(num_classes))
        self.register_buffer("pseudo_prior", torch.zeros(num_classes))
        self.register_buffer("teacher_prior", torch.zeros(num_classes))  # the teacher's mean class probabilities
        # Refine gate: EMAs of the teacher's labelled-batch Dice (segmenter, diffusion predictor); -1 = not yet.
        self.register_buffer("refine_scores", torch.full((2,), -1.0))
        self._total_steps = 1
        self._ema_step = 0  # global_step at the last teacher update
        self._val_stats: torch.Tensor | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before these training EMAs were saved still load (for predict, evaluate or a resume):
        # the EMAs restart from their initial values, as they do in a new run.
        for name in TRAINING_EMAS:
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def uses_diffusion(self) -> bool:
        return self.method in DIFFUSION_METHODS

    @property
    def uses_prototypes(self) -> bool:
        return self.method == "rnpll"

    @property
    def diffusion_predicts(self) -> bool:
        """Whether predictions come from the diffusion model (else from the segmenter)."""
        return self.uses_diffusion and self.config.model.predictor == "diffusion"

    # ----- parameters and stages -----------------------------------------------------------------------------------
    def stage_parameters(self, stage: StageConfig):
        for name, param in super().stage_parameters(stage):
            if not name.startswith("teacher."):  # the teacher follows the student by EMA, never by gradients
                yield name, param

    def on_train_start(self) -> None:
        self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        self._ema_step = self.global_step

    def inference_net(self) -> AngioNet:
        """The network used for validation, evaluation and prediction (the EMA teacher, for every method)."""
        return self.teacher.module if self.config.model.infer_with_teacher else self.net

    def warmup_steps(self) -> int:
        """Optimiser steps of the supervised warm-up (``loss.warmup_fraction`` of the run)."""
        return int(self.config.loss.warmup_fraction * self._total_steps)

    def unsup_ramp(self) -> float:
        """0 during the warm-up, then the sigmoid ramp over ``loss.rampup_fraction`` of the run."""
        start = self.warmup_steps()
        if self.global_step < start:
            return 0.0
        return L_.sigmoid_rampup(self.global_step - start, self.config.loss.rampup_fraction * self._total_steps)

    def refine_start(self) -> int:
        """Optimiser step from which the teacher's pseudo-labels may come from its diffusion predictor."""
        mc = self.config.model
        if mc.refine_start_fraction is not None:
            return int(mc.refine_start_fraction * self._total_steps)
        return mc.refine_start_step

    def refine_active(self) -> bool:
        """Whether the diffusion predictor makes the pseudo-labels now (start reached and, with
        ``model.refine_gate``, its labelled-batch Dice EMA at least the segmenter's)."""
        mc = self.config.model
        if not (self.uses_diffusion and mc.refine_pseudo_labels and self.global_step >= self.refine_start()):
            return False
        return not mc.refine_gate or bool(self.refine_scores[1] >= self.refine_scores[0])

    @torch.no_grad()
    def _update_refine_gate(self, x_l: torch.Tensor, y_l: torch.Tensor) -> None:
        """EMA of the teacher's mean foreground Dice on the labelled batch: segmenter, diffusion predictor."""
        teacher, num_classes = self.teacher.module, self.config.model.num_classes
        seg = teacher.segment(x_l).float()
        diff = teacher.sample(x_l, self.ddim, self.sample_steps, seg_logits=seg)["logits"]
        scores = []
        for logits in (seg, diff):
            dice_sum, frames = frame_dice_sums(logits.argmax(dim=1), y_l, num_classes)[:, 1:]
            scores.append((dice_sum / frames.clamp_min(1))[frames > 0].mean() if bool((frames > 0).any()) else 0.0)
        new = torch.tensor([float(s) for s in scores], device=self.refine_scores.device)
        first = bool((self.refine_scores < 0).all())
        m = self.config.model.refine_gate_momentum
        self.refine_scores.copy_(new if first else m * self.refine_scores + (1 - m) * new)

    def _noise(self, shape: tuple[int, ...], device: torch.device, seed: int) -> torch.Tensor:
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)

    # ----- training ------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        lc = self.config.loss
        weights = {
            "loss_sup": 1.0,
            "loss_unsup": lc.unsup_weight * terms.pop("ramp_u", 0.0),
            "loss_diff": lc.diff_weight,
            "loss_proto": lc.proto_weight,
            "loss_proto_consistency": lc.proto_consistency_weight,
            "loss_proto_align": lc.proto_align_weight,
        }
        total = sum(weights[k] * v for k, v in terms.items() if k in weights)
        logs = {k: (v.detach() if torch.is_tensor(v) else torch.tensor(float(v))) for k, v in terms.items()}
        logs["loss"] = total.detach()
        self.log_dict(
            {f"train_{k}": v for k, v in logs.items()},
            on_step=True,
            on_epoch=True,
            batch_size=batch["labelled"]["image"].shape[0],
            prog_bar=False,
        )
        return total

    def loss_terms(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Every loss term of ``model.method`` (unweighted; ``ramp_u`` is the ramp of the unsupervised term), plus
        diagnostics. The ramp is already applied inside the unlabelled parts of the diffusion and prototype terms."""
        lab = batch["labelled"]
        x_l, y_l = lab["image"], lab["label"]
        net = self.net
        logits_l = net.segment(x_l)
        out: dict[str, Any] = {"loss_sup": self.seg_loss(logits_l, y_l)}
        diff_l = self.diffusion_terms(x_l, y_l, logits_l) if self.uses_diffusion else None
        if diff_l is not None:
            out["loss_diff"] = diff_l["loss"]
        unl = batch.get("unlabelled")
        if self.training:
            self._update_prior(self.label_prior, y_l)
        if self.method == "supervised" or unl is None or self.global_step < self.warmup_steps():
            # Labelled-only: the baseline, or the supervised warm-up of the others (no teacher pass needed).
            if self.uses_prototypes and diff_l is not None:
                out.update(self.prototype_terms(diff_l, y_l, None, None, 0.0))
            return out
        ramp = self.unsup_ramp()
        mc = self.config.model
        gate_due = self.uses_diffusion and mc.refine_pseudo_labels and mc.refine_gate
        if self.training and gate_due and self.global_step >= self.refine_start():
            self._update_refine_gate(x_l, y_l)
        x_w, x_s = unl["image_weak"], unl["image_strong"]
        teacher = self.teacher_view(x_w)
        pseudo, weight = teacher["labels"], teacher["weight"]
        if self.training:
            self._update_prior(self.pseudo_prior, pseudo)
        weight = weight * self.class_balance(pseudo)
        logits_s = net.segment(x_s)
        out["loss_unsup"] = self.unsup_loss(logits_s, pseudo, pixel_weight=weight)
        out["ramp_u"] = ramp
        out.update(
            ramp=ramp,
            confident_fraction=(pseudo != IGNORE_INDEX).float().mean(),
            pseudo_weight=weight[pseudo != IGNORE_INDEX].mean() if bool((pseudo != IGNORE_INDEX).any()) else 0.0,
            refined=float(teacher["refined"]),
            gate_dice_segmenter=float(self.refine_scores[0]),
            gate_dice_diffusion=float(self.refine_scores[1]),
        )
        if diff_l is not None:
            # Same noise as the teacher's sampling: the two views differ only by the strong perturbations.
            diff_u = self.diffusion_terms(x_s, pseudo, logits_s, weight, noise=teacher["noise"])
            out["loss_diff"] = out["loss_diff"] + ramp * diff_u["loss"]
            if self.uses_prototypes:
                out.update(self.prototype_terms(diff_l, y_l, diff_u, teacher, ramp))
        return out

    @torch.no_grad()
    def _update_prior(self, prior: torch.Tensor, labels: torch.Tensor) -> None:
        valid = labels[labels != IGNORE_INDEX]
        if not valid.numel():
            return
        freq = torch.bincount(valid.long(), minlength=len(prior)).float()[: len(prior)] / valid.numel()
        self._ema_frequencies(prior, freq)

    def _ema_frequencies(self, prior: torch.Tensor, value: torch.Tensor) -> None:
        """``prior`` <- EMA of per-class frequencies (``loss.pseudo_balance_momentum``); the first value as is."""
        m = self.config.loss.pseudo_balance_momentum
        prior.copy_(torch.where(prior.sum() > 0, m * prior + (1 - m) * value, value))

    @torch.no_grad()
    def class_balance(self, pseudo: torch.Tensor) -> torch.Tensor:
        """Per-pixel class-balanced weights ``min(1, pi_c / q_c)`` of pseudo-labels ``pseudo`` (ignored pixels: 1),
        or ones with ``loss.pseudo_balance: none``."""
        ones = torch.ones(pseudo.shape, device=pseudo.device)
        if self.config.loss.pseudo_balance == "none" or self.pseudo_prior.sum() <= 0 or self.label_prior.sum() <= 0:
            return ones
        per_class = (self.label_prior / self.pseudo_prior.clamp_min(1e-8)).clamp(max=1.0)
        valid = pseudo != IGNORE_INDEX
        safe = torch.where(valid, pseudo, torch.zeros_like(pseudo)).long()
        return torch.where(valid, per_class[safe], ones)

    @torch.no_grad()
    def aligned(self, probs: torch.Tensor) -> torch.Tensor:
        """Teacher probabilities (B, C, H, W) aligned to the labelled class frequencies, ``p * pi / p_bar``
        renormalised (``loss.distribution_alignment``); ``p_bar`` is updated from ``probs`` in training."""
        if not self.config.loss.distribution_alignment:
            return probs
        if self.training:
            self._ema_frequencies(self.teacher_prior, probs.float().mean(dim=(0, 2, 3)))
        if self.label_prior.sum() <= 0 or self.teacher_prior.sum() <= 0:
            return probs
        ratio = self.label_prior / self.teacher_prior.clamp_min(1e-8)
        ratio = ratio.clamp(max=10.0)  # a class the teacher never predicts is raised tenfold, not without bound
        scaled = probs * ratio.view(1, -1, 1, 1).to(probs.dtype)
        return scaled / scaled.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def diffusion_terms(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        seg_logits: torch.Tensor,
        pixel_weight: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Diffusion losses of one stream (GT or pseudo-labels ``y``, ignored pixels 255):

        * Dice + CE of the DDIM *sample* (from ``noise``, the inference path, with gradients through every step);
        * labelled stream (no ``pixel_weight``) only: x0 MSE and decoded Dice + CE of the denoiser at a random
          training noise level (DDPM ``add_noise``), and label auto-encoding, Dice + CE of ``D_y(E_y(onehot(y)))``
          (trains E_y, whose latents are the targets).

        Returns the summed ``loss`` and the latents the prototype terms need.
        """
        net = self.net
        cond, skips = net.encode_image(x)
        seg_logits = seg_logits.detach()  # the segmenter learns from its own losses only
        prior = net.prior_latent(seg_logits)
        sample = net.sample(
            x, self.ddim, self.sample_steps, noise=noise, encoded=(cond, skips, prior), seg_logits=seg_logits
        )
        loss_fn = self.seg_loss if pixel_weight is None else self.unsup_loss  # pseudo-labels: no class weights
        sampled = loss_fn(sample["logits"], y, pixel_weight=pixel_weight)
        out = {"sample": sample["latent"]}
        if pixel_weight is not None:
            # Unlabelled stream: the sampling path only (it already visits the noise levels DDIM uses).
            out["loss"] = sampled
            return out
        z0 = net.encode_label(net.one_hot(y))
        eps = torch.randn_like(z0)
        t = torch.randint(0, self.ddpm.num_train_timesteps, (x.shape[0],), device=x.device).long()
        z_t = self.ddpm.add_noise(z0.detach(), eps, t)
        x0_hat = net.denoise(z_t, t, prior, cond)
        valid = (y != IGNORE_INDEX).float().unsqueeze(1)
        mse = L_.latent_mse(x0_hat, z0.detach(), F.avg_pool2d(valid, net.latent_stride))
        decoded = self.seg_loss(net.predict_from_latent(x0_hat, skips, seg_logits), y)
        recon = self.seg_loss(net.decode(z0, skips), y)  # label auto-encoding: trains E_y, whose latents are targets
        out.update(loss=mse + decoded + recon + sampled, x0_hat=x0_hat)
        return out

    @torch.no_grad()
    def teacher_view(self, x_weak: torch.Tensor) -> dict[str, Any]:
        """The teacher's pseudo-labels of the weak view (confidence-masked, ignored = 255), their pixel weights, the
        teacher's denoised latent and DDIM noise (diffusion methods), and whether diffusion made them."""
        teacher = self.teacher.module
        mc = self.config.model
        logits = teacher.segment(x_weak).float()
        out: dict[str, Any] = {"latent": None, "noise": None, "refined": False}
        if self.uses_diffusion:
            noise = torch.randn(
                x_weak.shape[0], teacher.latent_channels, *self._latent_size(x_weak), device=x_weak.device
            )
            sample = teacher.sample(x_weak, self.ddim, self.sample_steps, noise=noise, seg_logits=logits)
            out.update(latent=sample["latent"], noise=noise)
            if self.refine_active():
                logits, out["refined"] = sample["logits"], True
        labels, confident, _ = L_.confident_pseudo_labels(self.aligned(torch.softmax(logits, dim=1)), mc.confidence)
        labels = torch.where(confident, labels, torch.full_like(labels, IGNORE_INDEX))
        if mc.pseudo_label_corruption > 0:  # stress test only
            generator = torch.Generator().manual_seed(int(self.global_step))
            labels = L_.corrupt_labels(labels.cpu(), mc.pseudo_label_corruption, generator).to(labels.device)
        weight = torch.ones(labels.shape, device=labels.device)
        if self.uses_prototypes and out["latent"] is not None:
            lc = self.config.loss
            probs = L_.prototype_probabilities(
                out["latent"], self.prototypes, self.prototypes_initialised, lc.proto_temperature
            )
            labels, weight = L_.prototype_denoise(labels, probs, self.prototypes_initialised, lc.proto_denoise)
        out.update(labels=labels, weight=weight)
        return out

    def _latent_size(self, x: torch.Tensor) -> tuple[int, int]:
        stride = self.net.latent_stride
        return x.shape[-2] // stride, x.shape[-1] // stride

    def prototype_terms(
        self,
        diff_l: dict[str, torch.Tensor],
        y_l: torch.Tensor,
        diff_u: dict[str, torch.Tensor] | None,
        teacher: dict[str, Any] | None,
        ramp: float,
    ) -> dict[str, torch.Tensor]:
        """Prototype contrastive consistency on the student's denoised latents (the sampled x0 that is decoded into
        the prediction, and the x0 prediction at a random noise level):

        * ``loss_proto``: InfoNCE against the bank, ground-truth cells of labelled frames + ramp x prototype-checked
          pseudo-label cells of unlabelled frames;
        * ``loss_proto_consistency``: teacher (weak view) -> student (strong view) prototype assignments, ramped;
        * ``loss_proto_align``: ``||p_c^U - p_c^L||^2`` of the unlabelled batch prototypes against the bank, ramped.

        The bank is then updated (EMA) from the student's sampled latents of the labelled frames with their ground
        truth: image-conditioned latents anchored by ground truth.
        """
        net, lc = self.net, self.config.loss
        stride, num_classes, tau = net.latent_stride, net.num_classes, lc.proto_temperature
        anchors = self.prototypes.clone()  # the in-place EMA update below must not touch the autograd graph
        ready = self.prototypes_initialised.clone()
        y_lat = L_.latent_labels(y_l, stride, num_classes, lc.proto_min_fraction)
        loss = (
            sum(L_.prototype_contrastive_loss(diff_l[k], y_lat, anchors, ready, tau) for k in ("sample", "x0_hat")) / 2
        )
        zero = diff_l["sample"].sum() * 0.0
        out = {"loss_proto": loss, "loss_proto_consistency": zero, "loss_proto_align": zero}
        if diff_u is not None and teacher is not None:
            y_lat_u = L_.latent_labels(teacher["labels"], stride, num_classes, lc.proto_min_fraction)
            loss_u = L_.prototype_contrastive_loss(diff_u["sample"], y_lat_u, anchors, ready, tau)
            out["loss_proto"] = loss + ramp * loss_u
            out["loss_proto_consistency"] = ramp * L_.prototype_consistency(
                diff_u["sample"], teacher["latent"], anchors, ready, tau
            )
            p_u, present_u = L_.batch_prototypes(diff_u["sample"], y_lat_u, num_classes)
            out["loss_proto_align"] = ramp * L_.prototype_alignment(p_u, present_u, anchors, ready)
        sums, counts = L_.class_feature_sums(diff_l["sample"].detach(), y_lat, num_classes)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        batch_protos, present = L_.prototypes_from_sums(sums, counts)
        L_.update_prototypes(self.prototypes, self.prototypes_initialised, batch_protos, present, lc.proto_momentum)
        return out

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # One EMA update per optimiser step: with accumulate_grad_batches = k the student only changes every k
        # batches, and global_step counts optimiser steps.
        if self.global_step != self._ema_step:
            self._ema_step = self.global_step
            self.teacher.update_parameters(self.net)

    # ----- inference -----------------------------------------------------------------------------------------------
    def inference_noise(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """The DDIM starting latent for ``images``: one draw broadcast to every frame (shared along a video, so the
        sampling adds no frame-to-frame flicker), or one per frame when ``eval.shared_video_noise`` is off."""
        n = 1 if self.config.eval.shared_video_noise else images.shape[0]
        return self._noise((n, self.net.latent_channels, *self._latent_size(images)), images.device, seed)

    @torch.no_grad()
    def predict_logits(
        self, images: torch.Tensor, seed: int = 0, noise: torch.Tensor | None = None, predictor: str | None = None
    ) -> torch.Tensor:
        """Logits (B, C, H, W) of the inference network: the diffusion predictor (DDIM from ``noise``, else from the
        seeded `inference_noise`) for diffrect/rnpll, the segmenter otherwise or with ``predictor="segmenter"``."""
        net = self.inference_net()
        predictor = predictor or ("diffusion" if self.diffusion_predicts else "segmenter")
        if predictor == "segmenter" or not net.with_diffusion:
            return net.segment(images).float()
        noise = self.inference_noise(images, seed) if noise is None else noise
        return net.sample(images, self.ddim, self.sample_steps, noise=noise)["logits"]

    @torch.no_grad()
    def segment_frames(
        self, images: np.ndarray, out_size: tuple[int, int], frame_batch: int, seed: int = 0
    ) -> np.ndarray:
        """Label ids (T, H, W) uint8 at ``out_size`` (H, W) for preprocessed frames (T, size, size) of one video
        (`medml.transforms.angio.frame_preprocessing`), ``frame_batch`` frames per forward pass. With
        ``eval.shared_video_noise`` every frame starts its DDIM sampling from the same seeded latent."""
        out = np.zeros((len(images), *out_size), dtype=np.uint8)
        shared = self.config.eval.shared_video_noise
        for start in range(0, len(images), frame_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + frame_batch])).to(self.device)
            logits = self.predict_logits(chunk.float()[:, None], seed=seed if shared else seed + start)
            # Resize the class probabilities (bilinear) to the source size, then take the argmax: smoother, and thin
            # structures survive better than nearest-resizing label ids.
            probs = torch.softmax(logits.float(), dim=1)
            if probs.shape[-2:] != tuple(out_size):
                probs = F.interpolate(probs, size=tuple(out_size), mode="bilinear", align_corners=False)
            out[start : start + len(chunk)] = probs.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return out

    # ----- validation ----------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        # Per class: sum of per-frame Dice, and frames where the class is in the target or the prediction.
        self._val_stats = torch.zeros(2, self.config.model.num_classes, device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self.predict_logits(batch["image"], seed=self.config.eval.seed).argmax(dim=1)
        self._val_stats += frame_dice_sums(pred, batch["label"], self.config.model.num_classes)

    def on_validation_epoch_end(self) -> None:
        stats = self._val_stats
        if self.trainer.world_size > 1:  # sum the counts of every process, then score once
            stats = self.all_gather(stats).sum(dim=0)
        dice_sum, frames = stats
        dice = torch.where(frames > 0, dice_sum / frames.clamp_min(1), torch.full_like(frames, float("nan")))
        fg = dice[1:]
        names = self.config.model.class_names
        for c in range(1, len(dice)):
            if not torch.isnan(dice[c]):
                self.log(f"val_dice_{names[c]}", dice[c].float(), on_epoch=True)
        mean = fg[~torch.isnan(fg)].mean() if bool((~torch.isnan(fg)).any()) else torch.tensor(0.0)
        self.log("val_dice", mean.float(), on_epoch=True, prog_bar=True)


def frame_dice_sums(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(2, C): per class, the sum over frames of the per-frame Dice and the number of frames where the class is in
    the target or the prediction; ignored pixels (255) are background in both. This is `evaluate`'s definition
    (`medml.metrics.segmentation_scores`: Dice 0 for a missed or hallucinated class, frames with the class in
    neither left out), so ``val_dice`` and the evaluated Dice agree up to the frame size (validation scores at
    ``data.size``, evaluation at the native size)."""
    valid = label != IGNORE_INDEX
    pred = torch.where(valid, pred, torch.zeros_like(pred))
    label = torch.where(valid, label, torch.zeros_like(label))
    out = torch.zeros(2, num_classes, device=pred.device, dtype=torch.float64)
    for c in range(num_classes):
        p, g = (pred == c).flatten(1), (label == c).flatten(1)
        inter, total = (p & g).sum(1).double(), (p.sum(1) + g.sum(1)).double()
        present = total > 0
        out[0, c] = torch.where(present, 2 * inter / total.clamp_min(1), torch.zeros_like(total)).sum()
        out[1, c] = present.sum()
    return out
