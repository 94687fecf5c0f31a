"""HierarchicalDet: DiffusionDet (Chen et al., ICCV 2023) with three sigmoid classifiers (Hamamci et al., MICCAI 2023).

Written for medml from the spec (``shared/specs/dental-hierarchicaldet.md`` §1-§2), with torchvision instead of
detectron2: ResNet/Swin + FPN (P2-P5), RoIAlign with ``aligned=True`` per FPN level, a 6-stage dynamic head with
time conditioning, one class-agnostic box regressor and three classifiers (4 quadrants, 8 tooth positions, 4
diagnoses). Training feeds noised GT boxes (cosine schedule, signal scale 2, concatenated random-box padding,
optionally the previous hierarchy stage's detections); inference runs DDIM from Gaussian boxes with box renewal and
an NMS ensemble over the steps, for any batch size and step count (the released code supports 1 step, batch 1).

Released-code quirks not copied (spec §2.8, §2.2): the prior-probability bias goes to the classifiers only (the
released rule also hits the box-delta bias and shrinks every first-forward box ~100x); the shared class tower runs
once (the release applies it to three copies of the same feature, which is the same computation).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d, batched_nms, box_convert
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from medml.errors import ConfigError
from medml.ops import roi_align
from medml.pipelines.dental.config import NUM_CLASSES, DentalModel

#: detectron2's pixel statistics on the 0-255 scale (spec §1.1), applied by the pipeline's transforms.
PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)
BBOX_WEIGHTS = (2.0, 2.0, 1.0, 1.0)
SCALE_CLAMP = math.log(100000.0 / 16)
IMAGENET = {
    "resnet50": "IMAGENET1K_V1",
    "resnet101": "IMAGENET1K_V1",
    "swin_b": "IMAGENET1K_V1",
    "resnet18": "IMAGENET1K_V1",
}


# ----- backbone -------------------------------------------------------------------------------------------------------
def _trunk_weights(name: str, weights: str, pretrained: bool) -> dict[str, torch.Tensor] | None:
    """ImageNet weights through torchvision's weights API, a local state dict, or None (random)."""
    if not pretrained or weights == "none":
        return None
    if weights == "imagenet":
        if name not in IMAGENET:
            raise ConfigError(f"model.weights: no ImageNet weights for model.backbone {name}; use 'none'")
        enum = models.get_model_weights(name)[IMAGENET[name]]
        try:
            return enum.get_state_dict(progress=False)
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            raise ConfigError(
                f"model.weights: cannot fetch torchvision's ImageNet {name} weights ({type(exc).__name__}); offline, "
                f"download {Path(enum.url).name} elsewhere and set model.weights=/path/to/{Path(enum.url).name}"
            ) from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights: '{weights}' is neither 'imagenet', 'none' nor an existing file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is the same user error
        raise ConfigError(f"model.weights: not a readable state dict ({type(exc).__name__})", path) from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


class SwinTrunk(nn.Module):
    """torchvision Swin-B features as four NCHW maps (strides 4, 8, 16, 32) for the FPN."""

    def __init__(self, swin: nn.Module):
        super().__init__()
        self.features = swin.features  # [patch, stage1, merge, stage2, merge, stage3, merge, stage4]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out = OrderedDict()
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (1, 3, 5, 7):
                out[str(len(out))] = x.permute(0, 3, 1, 2).contiguous()
        return out


class SwinFPN(nn.Module):
    def __init__(self, swin: nn.Module, out_channels: int):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.body = SwinTrunk(swin)
        self.fpn = FeaturePyramidNetwork([128, 256, 512, 1024], out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def build_backbone(cfg: DentalModel, pretrained: bool) -> nn.Module:
    """FPN backbone returning ``OrderedDict('0'..'3' = P2..P5, 'pool' = P6)``, each ``cfg.fpn_channels`` wide.

    ResNets use FrozenBatchNorm and freeze the stem and res2 (detectron2's FREEZE_AT 2, ``trainable_layers`` 3).
    """
    state = _trunk_weights(cfg.backbone, cfg.weights, pretrained)
    if cfg.backbone == "swin_b":
        swin = models.swin_b(weights=None)
        if state is not None:
            swin.load_state_dict(state)
        return SwinFPN(swin, cfg.fpn_channels)
    if cfg.backbone == "resnet_small":  # tiny recipes only: BasicBlock ResNet-10 with narrow stages
        if state is not None:
            raise ConfigError("model.weights: resnet_small has no pretrained weights; use 'none'")
        trunk = _narrow_resnet(cfg.small_width)
        widths = [cfg.small_width * 2**i for i in range(4)]
    else:
        # FrozenBN over ImageNet statistics (detectron2's R50); from random weights frozen BN would be an identity
        # (decided by the config, not by whether weights load now, so a checkpoint's keys always fit)
        norm = FrozenBatchNorm2d if cfg.weights != "none" else nn.BatchNorm2d
        trunk = getattr(models, cfg.backbone)(weights=None, norm_layer=norm)
        if state is not None:
            trunk.load_state_dict(state)
        c = 64 if cfg.backbone == "resnet18" else 256
        widths = [c, c * 2, c * 4, c * 8]
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][: cfg.trainable_layers]
    if cfg.trainable_layers == 5:
        layers.append("bn1")
    for name, param in trunk.named_parameters():
        if all(not name.startswith(layer) for layer in layers):
            param.requires_grad_(False)
    return BackboneWithFPN(
        trunk,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=widths,
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _narrow_resnet(width: int) -> nn.Module:
    """A ResNet-10 (one BasicBlock per stage) whose stages are ``width, 2w, 4w, 8w`` wide (tiny recipes)."""

    # GroupNorm: tiny batches of 2-4 images give BatchNorm running statistics that lag the weights for hundreds of
    # iterations, so evaluation early in a short run would see another network than training did.
    def norm(c: int) -> nn.Module:
        return nn.GroupNorm(min(8, c // 2), c)

    net = models.resnet.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1], norm_layer=norm)
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    net.bn1 = norm(width)
    net.layer1 = net._make_layer(models.resnet.BasicBlock, width, 1)
    net.layer2 = net._make_layer(models.resnet.BasicBlock, width * 2, 1, stride=2)
    net.layer3 = net._make_layer(models.resnet.BasicBlock, width * 4, 1, stride=2)
    net.layer4 = net._make_layer(models.resnet.BasicBlock, width * 8, 1, stride=2)
    net.fc = nn.Identity()
    return net


# ----- RoI pooling --------------------------------------------------------------------------------------------------
def roi_pool(features: list[torch.Tensor], boxes: torch.Tensor, resolution: int) -> torch.Tensor:
    """Multi-level RoIAlign (``aligned=True``, sampling ratio 2) of ``boxes`` (B, N, 4) on P2..P5 -> (B*N, C, r, r).

    Level per box: ``floor(4 + log2(sqrt(area) / 224))`` clamped to P2..P5 (detectron2's ROIAlignV2 pooler;
    torchvision's MultiScaleRoIAlign uses the same mapping but ``aligned=False``); `medml.ops.roi_align` is
    torchvision's RoIAlign, faster on CPU.
    """
    b, n = boxes.shape[:2]
    flat = boxes.reshape(-1, 4)
    batch_idx = torch.arange(b, device=boxes.device).repeat_interleave(n).to(flat.dtype)
    rois = torch.cat([batch_idx[:, None], flat], dim=1)
    area = ((flat[:, 2] - flat[:, 0]).clamp(min=0) * (flat[:, 3] - flat[:, 1]).clamp(min=0)).sqrt()
    level = torch.floor(4 + torch.log2(area / 224 + 1e-8)).clamp(2, 5).long() - 2
    out = features[0].new_zeros(b * n, features[0].shape[1], resolution, resolution)
    for k, feat in enumerate(features):
        idx = torch.nonzero(level == k).squeeze(1)
        if idx.numel():
            scale = feat.shape[-1] / features[0].shape[-1] / 4.0  # P2 is stride 4
            pooled = roi_align(feat, rois[idx].to(feat.dtype), resolution, scale, 2)
            out[idx] = pooled.to(out.dtype)
    return out


# ----- dynamic head ------------------------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    arg = t.float()[:, None] * freq[None]
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class DynamicConv(nn.Module):
    """Instance interaction: per-proposal 1x1 "convolution" parameters generated from the proposal feature."""

    def __init__(self, d: int, dim_dynamic: int, resolution: int):
        super().__init__()
        self.d, self.dd = d, dim_dynamic
        self.dynamic_layer = nn.Linear(d, 2 * d * dim_dynamic)
        self.norm1, self.norm2 = nn.LayerNorm(dim_dynamic), nn.LayerNorm(d)
        self.out_layer = nn.Linear(d * resolution * resolution, d)
        self.norm3 = nn.LayerNorm(d)

    def forward(self, pro: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        """pro (M, d), roi (M, r*r, d) -> (M, d)."""
        params = self.dynamic_layer(pro)
        p1 = params[:, : self.d * self.dd].view(-1, self.d, self.dd)
        p2 = params[:, self.d * self.dd :].view(-1, self.dd, self.d)
        f = F.relu(self.norm1(torch.bmm(roi, p1)))
        f = F.relu(self.norm2(torch.bmm(f, p2)))
        return F.relu(self.norm3(self.out_layer(f.flatten(1))))


def _tower(d: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Linear(d, d, bias=False), nn.LayerNorm(d), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def apply_deltas(deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Decode (dx, dy, dw, dh) with weights (2, 2, 1, 1) on xyxy ``boxes``."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    wx, wy, ww, wh = BBOX_WEIGHTS
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw, dh = (deltas[:, 2] / ww).clamp(max=SCALE_CLAMP), (deltas[:, 3] / wh).clamp(max=SCALE_CLAMP)
    pcx, pcy, pw, ph = dx * w + cx, dy * h + cy, dw.exp() * w, dh.exp() * h
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=1)


class HeadStage(nn.Module):
    """One of the six refinement stages: self-attention, dynamic conv, FFN, time scale/shift, towers, outputs."""

    def __init__(self, cfg: DentalModel):
        super().__init__()
        d, r = cfg.hidden_dim, cfg.pooler_resolution
        self.self_attn = nn.MultiheadAttention(d, cfg.nheads, dropout=0.0, batch_first=True)
        self.inst_interact = DynamicConv(d, cfg.dim_dynamic, r)
        self.linear1, self.linear2 = nn.Linear(d, cfg.dim_feedforward), nn.Linear(cfg.dim_feedforward, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(4 * d, 2 * d))
        self.cls_tower, self.reg_tower = _tower(d, cfg.num_cls_layers), _tower(d, cfg.num_reg_layers)
        self.classifiers = nn.ModuleList([nn.Linear(d, c) for c in NUM_CLASSES])
        self.box_delta = nn.Linear(d, 4)
        self.resolution = r

    def forward(self, features, boxes, pro, time_emb):
        b, n = boxes.shape[:2]
        roi = roi_pool(features, boxes, self.resolution)  # (B*N, d, r, r)
        d = roi.shape[1]
        if pro is None:
            pro = roi.mean((2, 3)).view(b, n, d)
        roi = roi.flatten(2).transpose(1, 2)  # (B*N, r*r, d)
        pro = self.norm1(pro + self.self_attn(pro, pro, pro, need_weights=False)[0])
        flat = pro.reshape(b * n, d)
        obj = self.norm2(flat + self.inst_interact(flat, roi))
        obj = self.norm3(obj + self.linear2(F.relu(self.linear1(obj))))
        scale, shift = self.time_mlp(time_emb).repeat_interleave(n, dim=0).chunk(2, dim=1)
        fc = obj * (scale + 1) + shift
        cls_feat, reg_feat = self.cls_tower(fc), self.reg_tower(fc)
        logits = [head(cls_feat).view(b, n, -1) for head in self.classifiers]
        pred = apply_deltas(self.box_delta(reg_feat), boxes.reshape(-1, 4).detach()).view(b, n, 4)
        return logits, pred, obj.view(b, n, d)


class DynamicHead(nn.Module):
    """Time embedding + ``num_heads`` stages; returns per-stage logits (3 levels) and boxes for deep supervision."""

    def __init__(self, cfg: DentalModel):
        super().__init__()
        d = cfg.hidden_dim
        self.time_dim = d
        self.time_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, 4 * d))
        self.stages = nn.ModuleList([HeadStage(cfg) for _ in range(cfg.num_heads)])
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        bias = -math.log((1 - cfg.prior_prob) / cfg.prior_prob)
        for stage in self.stages:
            for head in stage.classifiers:
                nn.init.constant_(head.bias, bias)
            if cfg.box_init == "zero":
                nn.init.zeros_(stage.box_delta.weight)
                nn.init.zeros_(stage.box_delta.bias)

    def forward(self, features, boxes, t):
        time_emb = self.time_mlp(timestep_embedding(t, self.time_dim))
        logits_all: list[list[torch.Tensor]] = []
        boxes_all: list[torch.Tensor] = []
        pro = None
        for stage in self.stages:
            logits, boxes, pro = stage(features, boxes, pro, time_emb)
            logits_all.append(logits)
            boxes_all.append(boxes)
            boxes = boxes.detach()
        levels = [torch.stack([lg[k] for lg in logits_all]) for k in range(len(NUM_CLASSES))]
        return levels, torch.stack(boxes_all)  # 3 x (S, B, N, C_k), (S, B, N, 4)


# ----- diffusion ----------------------------------------------------------------------------------------------------
def cosine_alphas_cumprod(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule in float64, with betas clipped to [0, 0.999]."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    ac = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    ac = ac / ac[0]
    betas = (1 - ac[1:] / ac[:-1]).clamp(0, 0.999)
    return torch.cumprod(1 - betas, dim=0)


class HierarchicalDiffusionDet(nn.Module):
    """Backbone + dynamic head + the box diffusion around it. Boxes in and out are absolute xyxy on the padded
    network input; ``image_sizes`` (B, 2) = (h, w) of each un-padded image."""

    def __init__(self, cfg: DentalModel, pretrained: bool = False):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg, pretrained)
        self.head = DynamicHead(cfg)
        self.num_proposals, self.scale = cfg.num_proposals, cfg.snr_scale
        ac = cosine_alphas_cumprod(cfg.timesteps)
        self.register_buffer("alphas_cumprod", ac.float(), persistent=False)
        self.timesteps = cfg.timesteps

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(images)
        return [feats[k] for k in ("0", "1", "2", "3")]

    @staticmethod
    def whwh(image_sizes: torch.Tensor) -> torch.Tensor:
        h, w = image_sizes[:, 0].float(), image_sizes[:, 1].float()
        return torch.stack([w, h, w, h], dim=1)

    def to_boxes(self, x: torch.Tensor, whwh: torch.Tensor) -> torch.Tensor:
        """Diffusion space (B, N, 4 scaled cxcywh) -> absolute xyxy."""
        x = (x.clamp(-self.scale, self.scale) / self.scale + 1) / 2
        return box_convert(x, "cxcywh", "xyxy") * whwh[:, None, :]

    def to_signal(self, boxes: torch.Tensor, whwh: torch.Tensor) -> torch.Tensor:
        """Absolute xyxy (B, N, 4) -> diffusion space, clamped to +-scale."""
        x = box_convert(boxes / whwh[:, None, :], "xyxy", "cxcywh")
        return ((x * 2 - 1) * self.scale).clamp(-self.scale, self.scale)

    # ----- training ---------------------------------------------------------------------------------------------
    def noised_proposals(
        self,
        gt_boxes: list[torch.Tensor],
        image_sizes: torch.Tensor,
        priors: list[torch.Tensor] | None = None,
        inject: str = "none",
        t: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Proposal boxes (B, N, 4 absolute xyxy) from noised GT (+ prior) boxes and each image's timestep (B,).

        x_start = [GT ; prior boxes ; N(0.5, 1/6^2) placeholders] (a random subset of N rows when there are more);
        ``inject='released'`` also replaces the first rows of the noise by the prior boxes (normalized cxcywh),
        as the released code does; ``'clean'`` keeps the noise Gaussian; ``'none'`` ignores ``priors``.
        """
        device = image_sizes.device
        whwh = self.whwh(image_sizes)
        n = self.num_proposals
        b = len(gt_boxes)
        if t is None:
            t = torch.randint(0, self.timesteps, (b,), device=device)
        rows, noises = [], []
        for i in range(b):
            gt = box_convert(gt_boxes[i].float() / whwh[i], "xyxy", "cxcywh")
            if gt.numel() == 0:
                gt = torch.tensor([[0.5, 0.5, 1.0, 1.0]], device=device)
            prior = torch.zeros(0, 4, device=device)
            if priors is not None and inject != "none" and len(priors[i]):
                prior = box_convert(priors[i].float() / whwh[i], "xyxy", "cxcywh").clamp(0, 1)
            start = torch.cat([gt, prior])
            if len(start) < n:
                pad = torch.randn(n - len(start), 4, device=device) / 6.0 + 0.5
                pad[:, 2:] = pad[:, 2:].clamp(min=1e-4)
                start = torch.cat([start, pad])
            elif len(start) > n:  # the GT rows stay (they are what the loss supervises); priors fill the rest
                extra = prior[torch.randperm(len(prior), device=device)[: max(0, n - len(gt))]]
                start = torch.cat([gt[torch.randperm(len(gt), device=device)[:n]], extra])
            noise = torch.randn(n, 4, device=device)
            if inject == "released" and len(prior):
                k = min(len(prior), n)
                noise[:k] = prior[:k]
            rows.append(start)
            noises.append(noise)
        x0 = (torch.stack(rows) * 2 - 1) * self.scale
        ac = self.alphas_cumprod[t][:, None, None]
        xt = ac.sqrt() * x0 + (1 - ac).sqrt() * torch.stack(noises)
        return self.to_boxes(xt, whwh), t

    def forward(self, images, proposals, t):
        """Training forward: per-stage logits (3 levels) and boxes for the given proposals and timesteps."""
        return self.head(self.features(images), proposals, t)

    # ----- inference --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def detect(
        self,
        images: torch.Tensor,
        image_sizes: torch.Tensor,
        level: int = 2,
        steps: int | None = None,
        trace: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """DDIM sampling (eta from the config) with box renewal and an NMS ensemble over the steps.

        ``level``: which classifier ranks the detections (0 quadrant, 1 tooth, 2 diagnosis; spec §2.6): a box's
        score is that level's probability, its other labels the argmax of their classifiers. Returns per image
        ``boxes`` (M, 4), ``scores`` (M,), ``labels`` (M, 3) and ``probs`` (M, 3: each level's chosen-class
        probability); with ``trace`` also ``steps``: the proposals and the boxes the head made of them per step.
        """
        cfg = self.cfg
        steps = steps or cfg.sample_steps
        b, n, device = images.shape[0], self.num_proposals, images.device
        whwh = self.whwh(image_sizes)
        feats = self.features(images)
        times = torch.linspace(-1, self.timesteps - 1, steps + 1).long().flip(0).tolist()
        x = torch.randn(b, n, 4, device=device, generator=generator)
        found: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in range(b)]
        traces: list[list[dict[str, torch.Tensor]]] = [[] for _ in range(b)]
        for t, t_next in zip(times[:-1], times[1:]):
            boxes = self.to_boxes(x, whwh)
            tt = torch.full((b,), t, device=device, dtype=torch.long)
            levels, pred = self.head(feats, boxes, tt)
            probs = [torch.sigmoid(lv[-1].float()) for lv in levels]  # last stage, (B, N, C_k)
            final = pred[-1].float()
            x0 = self.to_signal(final, whwh)
            ac = self.alphas_cumprod[t]
            eps = (x / ac.sqrt() - x0) / (1 / ac - 1).sqrt()
            nxt = []
            for i in range(b):
                keep = torch.ones(n, dtype=torch.bool, device=device)
                if cfg.box_renewal and t_next >= 0:  # the last step has nothing to renew: all its boxes count
                    keep = probs[level][i].max(dim=1).values > cfg.renewal_threshold
                found[i].append(self._step_detections(final[i], [p[i] for p in probs], level, keep))
                if trace:
                    traces[i].append({"t": torch.tensor(t), "proposals": boxes[i].cpu(), "boxes": final[i].cpu()})
                if t_next < 0:
                    continue
                ac_next = self.alphas_cumprod[t_next]
                sigma = cfg.ddim_eta * ((1 - ac / ac_next) * (1 - ac_next) / (1 - ac)).sqrt()
                c = (1 - ac_next - sigma**2).clamp(min=0).sqrt()
                x0_i, eps_i = x0[i][keep], eps[i][keep]
                z = torch.randn(x0_i.shape, device=device, generator=generator)
                xi = x0_i * ac_next.sqrt() + c * eps_i + sigma * z
                fill = torch.randn(n - len(xi), 4, device=device, generator=generator)  # renewal: fresh boxes
                nxt.append(torch.cat([xi, fill]))
            if t_next < 0:
                break
            x = torch.stack(nxt)
        out = []
        for i in range(b):
            boxes, scores, labels, lprobs = (torch.cat(parts) for parts in zip(*found[i]))
            if len(found[i]) > 1:  # ensemble: every step's detections together, class-aware NMS again
                keep = batched_nms(boxes, scores, labels[:, level], cfg.nms_iou)
                boxes, scores, labels, lprobs = boxes[keep], scores[keep], labels[keep], lprobs[keep]
            order = scores.argsort(descending=True)[: cfg.max_detections]
            h, w = image_sizes[i].tolist()
            boxes = boxes[order].clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            det = {"boxes": boxes, "scores": scores[order], "labels": labels[order], "probs": lprobs[order]}
            if trace:
                det["steps"] = traces[i]
            out.append(det)
        return out

    def _step_detections(self, boxes, probs, level, keep):
        """One step's detections of one image: top-K over (proposal, class) of the ranking level, NMS 0.5."""
        boxes, probs = boxes[keep], [p[keep] for p in probs]
        ranking = probs[level]
        k = min(ranking.numel(), max(1, len(boxes)))
        scores, flat = ranking.flatten().topk(k)
        idx, cls = flat // ranking.shape[1], flat % ranking.shape[1]
        labels, lprobs = [], []
        for lv, p in enumerate(probs):
            lab = cls if lv == level else p[idx].argmax(dim=1)
            labels.append(lab)
            lprobs.append(p[idx].gather(1, lab[:, None]).squeeze(1))
        labels_t, lprobs_t = torch.stack(labels, 1), torch.stack(lprobs, 1)
        sel = boxes[idx]
        keep_nms = batched_nms(sel, scores, cls, self.cfg.nms_iou)
        return sel[keep_nms], scores[keep_nms], labels_t[keep_nms], lprobs_t[keep_nms]
