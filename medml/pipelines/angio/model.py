"""RNPLL-style networks: a segmenter plus label-latent diffusion conditioned on the image.

Provenance: the RNPLL paper (Xi et al., DGM4MICCAI 2025, arXiv 2507.16429) publishes no architecture, so this
follows the medml design of spec §A5 [P], with DiffRect (Liu et al., MICCAI 2024, MIT; spec §A4) as the verified
code pattern: a label encoder maps (pseudo-)label maps to a latent at stride 8, a denoiser predicts the clean
latent (x0) from a noisy one conditioned on image features and on the latent of the segmenter's (noisy)
prediction, and a label decoder turns latents back into logits. Written from the spec, not from either code base.

Denoiser choice: MONAI's ``DiffusionModelUNet`` (sinusoidal time embedding, residual blocks, optional attention)
with the conditions concatenated on the channel axis. It is maintained and tested upstream, supports bf16, and at
stride 8 (64×64 latents for 512×512 frames) a two-level UNet is cheap enough for real-time refinement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import BasicUNet, DiffusionModelUNet, UNet
from monai.networks.schedulers import DDIMScheduler
from torch import nn


def build_segmenter(kind: str, in_channels: int, num_classes: int, features: Sequence[int]) -> nn.Module:
    """The per-frame segmentation network (MONAI ``BasicUNet`` or ``UNet``)."""
    if kind == "basic_unet":
        if len(features) != 6:
            raise ValueError("model.seg_features must have 6 entries for basic_unet (MONAI BasicUNet)")
        return BasicUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            features=tuple(features),
            norm=("instance", {"affine": True}),
            dropout=0.0,
        )
    # MONAI UNet: channels per level, every level but the last downsamples by 2.
    channels = tuple(features[:5])
    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=2,
        norm="instance",
    )


def _conv(in_ch: int, out_ch: int, stride: int = 1) -> Convolution:
    return Convolution(2, in_ch, out_ch, strides=stride, kernel_size=3, norm=("group", {"num_groups": 8}), act="SWISH")


def normalise_latent(h: torch.Tensor) -> torch.Tensor:
    """Per-pixel L2 normalisation scaled by sqrt(d): unit per-element variance (what the noise schedule assumes)
    and a natural fit for the cosine-similarity prototypes."""
    return F.normalize(h, dim=1) * math.sqrt(h.shape[1])


class LabelEncoder(nn.Module):
    """E_y: class probabilities or one-hot labels (B, C, H, W) -> latent (B, d, H/s, W/s), s = 2**len(widths)."""

    def __init__(self, num_classes: int, widths: Sequence[int], latent_channels: int):
        super().__init__()
        layers, ch = [], num_classes
        for width in widths:
            layers.append(_conv(ch, width, stride=2))
            ch = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(ch, latent_channels, kernel_size=1)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return normalise_latent(self.head(self.body(probs)))


class ImageEncoder(nn.Module):
    """E_x: the frame -> condition features at the latent stride, and skip features at strides 1, 2, 4, ...

    The skips let the label decoder place boundaries at full resolution, as DiffRect's decoder does.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], cond_channels: int):
        super().__init__()
        ch = max(8, widths[0] // 2)  # full-resolution features stay narrow: they only sharpen boundaries
        self.stem = _conv(in_channels, ch)
        self.skip_channels = [ch]
        downs = []
        for width in widths:
            downs.append(nn.Sequential(_conv(ch, width, stride=2), _conv(width, width)))
            ch = width
            self.skip_channels.append(ch)
        self.downs = nn.ModuleList(downs)
        self.skip_channels = self.skip_channels[:-1]  # the deepest level is the condition, not a skip
        self.cond = nn.Conv2d(ch, cond_channels, kernel_size=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = [self.stem(image)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return self.cond(feats[-1]), feats[:-1]


class LabelDecoder(nn.Module):
    """D_y: latent (B, d, H/s, W/s) [+ image skips] -> logits (B, C, H, W).

    Upsamples by 2 per level with a conv stage (widths of the encoder, mirrored) down to stride 2, then the logits
    bilinearly for the last factor 2: a full-resolution conv stage would cost as much as the whole segmenter, and
    the decoder runs several times per training step. With ``skip_channels`` each stage also sees the image
    encoder's features at its stride (DiffRect's decoder does); that lets the decoder segment from the image and
    bypass the label latent, so it is off by default (``model.decoder_skips``).
    """

    def __init__(
        self,
        latent_channels: int,
        widths: Sequence[int],
        num_classes: int,
        skip_channels: Sequence[int] | None = None,
    ):
        super().__init__()
        self.use_skips = skip_channels is not None
        # Stage k works at stride 2**(n-1-k): widths[n-2], ..., widths[0] (n = len(widths) levels of the encoder).
        stage_widths = list(reversed(list(widths)[:-1]))
        skips = list(reversed(list(skip_channels)[1:])) if skip_channels is not None else [0] * len(stage_widths)
        ups, ch = [], latent_channels
        for width, skip in zip(stage_widths, skips, strict=True):
            width = max(width, 16)
            ups.append(_conv(ch + skip, width))
            ch = width
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(ch, num_classes, kernel_size=1)

    def forward(self, latent: torch.Tensor, skips: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        h = latent
        stride_feats = list(reversed(list(skips)[1:])) if self.use_skips and skips is not None else None
        for k, up in enumerate(self.ups):
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            if stride_feats is not None:
                h = torch.cat([h, stride_feats[k]], dim=1)
            h = up(h)
        full = tuple(2 * n for n in h.shape[-2:])
        return F.interpolate(self.head(h), size=full, mode="bilinear", align_corners=False)


def ddim_timesteps(scheduler: DDIMScheduler, num_steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Set ``num_steps`` DDIM steps on ``scheduler`` and return timesteps consistent with its ``step()``.

    MONAI's ``set_timesteps`` spaces timesteps by ``linspace(T-1, 0, n)`` but ``step(t)`` moves the latent to
    ``t - T // n``; with T = 10 and 2 steps the model would be called at t = 9 then t = 0 while the latent is at
    t = 4. Here the timesteps are ``T - 1 - k * (T // n)`` for k = 0..n-1 (T = 10, n = 2 -> [9, 4]; T = 1000,
    n = 10 -> [999, 899, ..., 99]), so each call sees the noise level of the latent it is given. The scheduler's
    ``timesteps`` attribute is replaced too.
    """
    scheduler.set_timesteps(num_steps, device=device)
    ratio = scheduler.num_train_timesteps // num_steps
    offset = scheduler.num_train_timesteps - 1 - (num_steps - 1) * ratio
    timesteps = torch.arange(num_steps - 1, -1, -1, device=device, dtype=torch.long) * ratio + offset
    scheduler.timesteps = timesteps
    return timesteps


class AngioNet(nn.Module):
    """Segmenter + label-latent diffusion (E_y, E_x, denoiser, D_y) with a uniform interface.

    Args:
        num_classes: classes trained (MOSXAV: 5, background..balloon).
        in_channels: image channels (grey X-ray: 1).
        segmenter: ``basic_unet`` or ``unet``.
        seg_features: segmenter widths (BasicUNet's 6-tuple).
        latent_channels: d, the label latent's channels (spec: 64).
        encoder_widths: widths of E_y / E_x per stride-2 level; ``len`` sets the latent stride (3 -> 8).
        cond_channels: channels of the image condition at the latent stride.
        denoiser_channels, denoiser_res_blocks, denoiser_attention, denoiser_head_channels: ``DiffusionModelUNet``.
        with_diffusion: build the diffusion parts (False for the supervised / mean-teacher baselines).
        segmenter_prior: the denoiser also sees the label latent of the segmenter's softmax.
        decoder_skips: the label decoder also sees the image encoder's features (a bypass of the latent).
        prior_residual: the decoded latent is added to the log-softmax of the segmenter's logits, so the diffusion
            model rectifies the segmenter's prediction (DiffRect's rectification, in logit space) instead of drawing
            every thin structure again through the stride-s latent.
    """

    def __init__(
        self,
        num_classes: int = 5,
        in_channels: int = 1,
        segmenter: str = "basic_unet",
        seg_features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        latent_channels: int = 64,
        encoder_widths: Sequence[int] = (32, 64, 128),
        cond_channels: int = 64,
        denoiser_channels: Sequence[int] = (128, 256),
        denoiser_res_blocks: int = 1,
        denoiser_attention: Sequence[bool] = (False, True),
        denoiser_head_channels: int = 32,
        denoiser_groups: int = 32,
        with_diffusion: bool = True,
        segmenter_prior: bool = True,
        decoder_skips: bool = False,
        prior_residual: bool = False,
    ):
        super().__init__()
        self.prior_residual = prior_residual
        self.num_classes = num_classes
        self.latent_channels = latent_channels
        self.latent_stride = 2 ** len(encoder_widths)
        self.segmenter = build_segmenter(segmenter, in_channels, num_classes, seg_features)
        self.with_diffusion = with_diffusion
        self.segmenter_prior = segmenter_prior
        if not with_diffusion:
            return
        self.label_encoder = LabelEncoder(num_classes, encoder_widths, latent_channels)
        self.image_encoder = ImageEncoder(in_channels, encoder_widths, cond_channels)
        # Input: [noisy latent z_t, (latent of the segmenter's softmax, the prior), image condition].
        self.denoiser = DiffusionModelUNet(
            spatial_dims=2,
            in_channels=(2 if segmenter_prior else 1) * latent_channels + cond_channels,
            out_channels=latent_channels,
            num_res_blocks=denoiser_res_blocks,
            channels=tuple(denoiser_channels),
            attention_levels=tuple(denoiser_attention),
            norm_num_groups=denoiser_groups,
            num_head_channels=denoiser_head_channels,
        )
        # MONAI zero-initialises the output conv (for epsilon prediction); the x0 prediction here is normalised
        # like E_y's latents, and a zero output would pass no gradient to the denoiser's body or its conditions.
        nn.init.normal_(self.denoiser.out[2].conv.weight, std=0.02)
        self.label_decoder = LabelDecoder(
            latent_channels,
            encoder_widths,
            num_classes,
            self.image_encoder.skip_channels if decoder_skips else None,
        )

    # ----- pieces ---------------------------------------------------------------------------------------------------
    def segment(self, image: torch.Tensor) -> torch.Tensor:
        return self.segmenter(image)

    def encode_label(self, probs: torch.Tensor) -> torch.Tensor:
        return self.label_encoder(probs)

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.image_encoder(image)

    def prior_latent(self, seg_logits: torch.Tensor | None) -> torch.Tensor | None:
        """E_y of the segmenter's softmax (the prior the denoiser rectifies), or None without a prior."""
        if not self.segmenter_prior or seg_logits is None:
            return None
        return self.encode_label(torch.softmax(seg_logits.float(), dim=1))

    def denoise(
        self, z_t: torch.Tensor, timesteps: torch.Tensor, prior: torch.Tensor | None, cond: torch.Tensor
    ) -> torch.Tensor:
        """Predict the clean label latent x0 from z_t (x0 parameterisation, as DiffRect's START_X)."""
        parts = [z_t, prior, cond] if self.segmenter_prior else [z_t, cond]
        return normalise_latent(self.denoiser(torch.cat([p.to(z_t.dtype) for p in parts], dim=1), timesteps))

    def decode(self, latent: torch.Tensor, skips: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        return self.label_decoder(latent, skips)

    def predict_from_latent(
        self, latent: torch.Tensor, skips: Sequence[torch.Tensor] | None, seg_logits: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits of a denoised label latent: decoded, plus the segmenter's log-softmax with ``prior_residual``."""
        logits = self.decode(latent, skips).float()
        if self.prior_residual and seg_logits is not None:
            logits = logits + torch.log_softmax(seg_logits.float(), dim=1)
        return logits

    def one_hot(self, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
        """(B, H, W) ids -> (B, C, H, W) float one-hot; ignored pixels become all-zero."""
        valid = labels != ignore_index
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        onehot = F.one_hot(safe.long(), self.num_classes).permute(0, 3, 1, 2).float()
        return onehot * valid.unsqueeze(1)

    # ----- inference ------------------------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.segment(image)

    def sample(
        self,
        image: torch.Tensor,
        scheduler: DDIMScheduler,
        num_steps: int,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        seg_logits: torch.Tensor | None = None,
        return_trajectory: bool = False,
        encoded: tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None] | None = None,
    ) -> dict[str, Any]:
        """Segment by DDIM sampling of the label latent conditioned on the frame, then decoding it.

        ``noise`` (B or 1, d, h, w) is the starting latent (a single one broadcast to the batch, e.g. shared along a
        video); else it is drawn with ``generator``. ``seg_logits`` is the segmenter's output used as prior (computed
        here when the network has a prior and none is given); ``encoded`` = (cond, skips, prior) already computed
        skips them all. Returns ``{"logits", "latent" (the final x0),
        "trajectory" (decoded x0 of every step, if asked)}``. Gradients flow when called outside ``no_grad``.
        """
        if ((self.segmenter_prior and encoded is None) or self.prior_residual) and seg_logits is None:
            seg_logits = self.segment(image)
        if encoded is not None:
            cond, skips, prior = encoded
        else:
            cond, skips = self.encode_image(image)
            prior = self.prior_latent(seg_logits)
        shape = (image.shape[0], self.latent_channels, *cond.shape[-2:])
        if noise is None:
            noise = torch.randn(
                shape, generator=generator, device="cpu" if generator is None else generator.device, dtype=torch.float32
            )
        z = noise.to(device=cond.device, dtype=torch.float32).expand(shape)
        timesteps_list = ddim_timesteps(scheduler, num_steps, device=image.device)
        trajectory = []
        x0 = z
        for t in timesteps_list:
            timesteps = torch.full((image.shape[0],), int(t), device=image.device, dtype=torch.long)
            x0 = self.denoise(z.to(cond.dtype), timesteps, prior, cond)
            if return_trajectory:
                trajectory.append(self.predict_from_latent(x0, skips, seg_logits))
            z, _ = scheduler.step(x0.float(), int(t), z.float())
        # The last step's x0 prediction is the sample (with eta = 0 and T divisible by the step count the final DDIM
        # step lands on t = -1, alpha = 1, and returns exactly this; otherwise it would stop at a small t > 0).
        return {"logits": self.predict_from_latent(x0, skips, seg_logits), "latent": x0, "trajectory": trajectory}

    @torch.no_grad()
    def refine(
        self,
        image: torch.Tensor,
        seg_logits: torch.Tensor | None,
        scheduler: DDIMScheduler,
        num_steps: int,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits of `sample` (no gradients) from ``seg_logits`` as prior: the diffusion predictor's output.

        Starts from Gaussian noise (seeded by ``generator`` for reproducible predictions, or ``noise``); with
        ``return_trajectory`` also returns the decoded logits of the x0 prediction at each step.
        """
        out = self.sample(image, scheduler, num_steps, noise, generator, seg_logits, return_trajectory)
        return (out["logits"], out["trajectory"]) if return_trajectory else out["logits"]
