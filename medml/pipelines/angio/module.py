"""LightningModule of the angio pipeline: RNPLL-style training and its two baselines in one loop.

``model.method``:

* ``supervised``: Dice + CE on the labelled frames only (the unlabelled stream is loaded so every method runs the
  same number of steps, but ignored);
* ``mean_teacher``: + confidence-masked pseudo-labels from an EMA teacher's weak view on the student's strong view;
* ``rnpll``: + label-latent diffusion (x0 MSE, decoded Dice + CE), prototype contrastive consistency in the latent,
  and, after ``model.refine_start_step`` steps, teacher pseudo-labels rectified by DDIM sampling (DiffRect's
  ``refine_start``).

The teacher is ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` (buffers averaged too); it is
part of the state dict, so checkpoints and ``--resume`` keep it.
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
        with_diffusion=m.method == "rnpll",
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
        self.teacher = None
        if self.method != "supervised":
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
        self._total_steps = 1
        self._ema_step = 0  # global_step at the last teacher update
        self._val_stats: torch.Tensor | None = None

    # ----- parameters and stages -----------------------------------------------------------------------------------
    def stage_parameters(self, stage: StageConfig):
        for name, param in super().stage_parameters(stage):
            if not name.startswith("teacher."):  # the teacher follows the student by EMA, never by gradients
                yield name, param

    def on_train_start(self) -> None:
        self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        self._ema_step = self.global_step

    def inference_net(self) -> AngioNet:
        """The network used for validation, evaluation and prediction (the EMA teacher where there is one)."""
        if self.teacher is not None and self.config.model.infer_with_teacher:
            return self.teacher.module
        return self.net

    def unsup_ramp(self) -> float:
        return L_.sigmoid_rampup(self.global_step, self.config.loss.rampup_fraction * self._total_steps)

    # ----- training ------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        lab = batch["labelled"]
        x_l, y_l = lab["image"], lab["label"]
        logits_l = self.net.segment(x_l)
        loss_sup = self.seg_loss(logits_l, y_l)
        logs = {"loss_sup": loss_sup.detach()}
        total = loss_sup
        unl = batch.get("unlabelled")
        if self.method != "supervised" and unl is not None:
            ramp = self.unsup_ramp()
            x_w, x_s = unl["image_weak"], unl["image_strong"]
            pseudo, confident, refined = self.teacher_pseudo_labels(x_w)
            logits_s = self.net.segment(x_s)
            loss_unsup = self.seg_loss(logits_s, pseudo, mask=confident)
            total = total + self.config.loss.unsup_weight * ramp * loss_unsup
            logs.update(
                loss_unsup=loss_unsup.detach(),
                ramp=torch.tensor(ramp),
                confident_fraction=confident.float().mean(),
                refined=torch.tensor(float(refined)),
            )
            if self.method == "rnpll":
                pseudo_masked = torch.where(confident, pseudo, torch.full_like(pseudo, IGNORE_INDEX))
                diff_terms = self.diffusion_losses(x_l, y_l, logits_l, x_w, pseudo_masked, logits_s, ramp)
                lc = self.config.loss
                total = (
                    total
                    + lc.diff_weight * diff_terms["loss_diff"]
                    + lc.proto_weight * diff_terms["loss_proto"]
                    + lc.proto_align_weight * diff_terms["loss_proto_align"]
                )
                logs.update({k: v.detach() for k, v in diff_terms.items()})
        logs["loss"] = total.detach()
        batch_size = x_l.shape[0]
        self.log_dict(
            {f"train_{k}": v for k, v in logs.items()},
            on_step=True,
            on_epoch=True,
            batch_size=batch_size,
            prog_bar=False,
        )
        return total

    @torch.no_grad()
    def teacher_pseudo_labels(self, x_weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Teacher's weak-view labels, their confidence mask, and whether diffusion rectified them."""
        teacher = self.teacher.module
        logits = teacher.segment(x_weak)
        refined = (
            self.method == "rnpll"
            and self.config.model.refine_pseudo_labels
            and self.global_step >= self.config.model.refine_start_step
        )
        if refined:
            generator = torch.Generator(device=x_weak.device).manual_seed(int(self.global_step))
            logits = teacher.refine(x_weak, logits, self.ddim, self.sample_steps, generator=generator)
        labels, confident, _ = L_.confident_pseudo_labels(
            torch.softmax(logits.float(), dim=1), self.config.model.confidence
        )
        return labels, confident, refined

    def diffusion_losses(
        self,
        x_l: torch.Tensor,
        y_l: torch.Tensor,
        logits_l: torch.Tensor,
        x_u: torch.Tensor,
        pseudo_u: torch.Tensor,
        logits_u: torch.Tensor,
        ramp: float,
    ) -> dict[str, torch.Tensor]:
        """Latent x0 MSE + decoded Dice/CE for labelled (GT) and unlabelled (confident pseudo-label) frames, and the
        prototype contrastive consistency on clean and denoised latents."""
        net, lc = self.net, self.config.loss
        stride = net.latent_stride
        out: dict[str, torch.Tensor] = {}
        latents, latent_targets = [], []
        terms = []
        for x, y, logits, weight in ((x_l, y_l, logits_l, 1.0), (x_u, pseudo_u, logits_u, ramp)):
            cond, skips = net.encode_image(x)
            z0 = net.encode_label(net.one_hot(y))
            prior = net.encode_label(torch.softmax(logits.detach().float(), dim=1))
            noise = torch.randn_like(z0)
            t = torch.randint(0, self.ddpm.num_train_timesteps, (x.shape[0],), device=x.device).long()
            z_t = self.ddpm.add_noise(z0.detach(), noise, t)
            x0_hat = net.denoise(z_t, t, prior, cond)
            valid = (y != IGNORE_INDEX).float().unsqueeze(1)
            latent_weight = F.avg_pool2d(valid, stride)  # share of trusted pixels per latent cell
            mse = L_.latent_mse(x0_hat, z0.detach(), latent_weight)
            # Decoding the denoised latent trains D_y (and, through the x0 path, the denoiser) for segmentation;
            # decoding the clean label latent trains E_y and D_y as an auto-encoder of label maps.
            decoded = self.seg_loss(net.decode(x0_hat, skips), y)
            recon = self.seg_loss(net.decode(z0, skips), y)
            terms.append(weight * (mse + decoded + recon))
            y_lat = L_.latent_labels(y, stride, net.num_classes, lc.proto_min_fraction)
            latents.append((z0, x0_hat))
            latent_targets.append(y_lat)
        out["loss_diff"] = terms[0] + terms[1]

        # Prototype contrastive consistency: anchors are the EMA prototypes before this batch's update.
        anchors = self.prototypes.clone()  # the in-place EMA update below must not touch the autograd graph
        anchors_ready = self.prototypes_initialised.clone()
        proto_terms = []
        for (z0, x0_hat), y_lat, weight in zip(latents, latent_targets, (1.0, ramp), strict=True):
            for feats in (z0, x0_hat):
                proto_terms.append(
                    weight * L_.prototype_contrastive_loss(feats, y_lat, anchors, anchors_ready, lc.proto_temperature)
                )
        out["loss_proto"] = torch.stack(proto_terms).sum() / 2.0
        (z_l, xh_l), (z_u, xh_u) = latents
        p_l, present_l = L_.batch_prototypes(xh_l, latent_targets[0], net.num_classes)
        p_u, present_u = L_.batch_prototypes(xh_u, latent_targets[1], net.num_classes)
        out["loss_proto_align"] = L_.prototype_alignment(p_l, present_l, p_u, present_u)
        # EMA update from the clean label latents of both streams (GT and confident pseudo-labels). Under DDP the
        # class sums and counts of every process are added first, so all processes keep identical prototypes.
        feats = torch.cat([z_l.detach(), z_u.detach()])
        labels = torch.cat(latent_targets)
        sums, counts = L_.class_feature_sums(feats, labels, net.num_classes)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        batch_protos, present = L_.prototypes_from_sums(sums, counts)
        L_.update_prototypes(self.prototypes, self.prototypes_initialised, batch_protos, present, lc.proto_momentum)
        return out

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # One EMA update per optimiser step: with accumulate_grad_batches = k the student only changes every k
        # batches, and global_step counts optimiser steps.
        if self.teacher is not None and self.global_step != self._ema_step:
            self._ema_step = self.global_step
            self.teacher.update_parameters(self.net)

    # ----- inference -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor, refine: bool | None = None, seed: int = 0) -> torch.Tensor:
        """Logits (B, C, H, W) of the inference network, rectified by DDIM when ``refine`` (default: config)."""
        net = self.inference_net()
        logits = net.segment(images).float()
        refine = self.config.model.refine_at_inference if refine is None else refine
        if refine and net.with_diffusion:
            generator = torch.Generator(device=images.device).manual_seed(seed)
            logits = net.refine(images, logits, self.ddim, self.sample_steps, generator=generator)
        return logits

    @torch.no_grad()
    def segment_frames(
        self, images: np.ndarray, out_size: tuple[int, int], frame_batch: int, seed: int = 0, refine: bool | None = None
    ) -> np.ndarray:
        """Label ids (T, H, W) uint8 at ``out_size`` (H, W) for preprocessed frames (T, size, size)
        (`medml.transforms.angio.frame_preprocessing`), ``frame_batch`` frames per forward pass."""
        out = np.zeros((len(images), *out_size), dtype=np.uint8)
        for start in range(0, len(images), frame_batch):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + frame_batch])).to(self.device)
            logits = self.predict_logits(chunk.float()[:, None], refine=refine, seed=seed + start)
            # Resize the class probabilities (bilinear) to the source size, then take the argmax: smoother, and thin
            # structures survive better than nearest-resizing label ids.
            probs = torch.softmax(logits.float(), dim=1)
            if probs.shape[-2:] != tuple(out_size):
                probs = F.interpolate(probs, size=tuple(out_size), mode="bilinear", align_corners=False)
            out[start : start + len(chunk)] = probs.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return out

    # ----- validation ----------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_stats = torch.zeros(3, self.config.model.num_classes, device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self.predict_logits(batch["image"]).argmax(dim=1)
        label = batch["label"]
        valid = label != IGNORE_INDEX
        for c in range(self.config.model.num_classes):
            p, g = (pred == c) & valid, (label == c) & valid
            self._val_stats[0, c] += (p & g).sum()
            self._val_stats[1, c] += p.sum()
            self._val_stats[2, c] += g.sum()

    def on_validation_epoch_end(self) -> None:
        stats = self._val_stats
        if self.trainer.world_size > 1:  # sum the counts of every process, then score once
            stats = self.all_gather(stats).sum(dim=0)
        inter, pred_sum, gt_sum = stats
        denom = pred_sum + gt_sum
        dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.full_like(denom, float("nan")))
        fg = dice[1:]
        names = self.config.model.class_names
        for c in range(1, len(dice)):
            if not torch.isnan(dice[c]):
                self.log(f"val_dice_{names[c]}", dice[c].float(), on_epoch=True)
        mean = fg[~torch.isnan(fg)].mean() if bool((~torch.isnan(fg)).any()) else torch.tensor(0.0)
        self.log("val_dice", mean.float(), on_epoch=True, prog_bar=True)
