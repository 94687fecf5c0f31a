"""The paper's baselines (spec §3.6) in the same engine, split and evaluation: torchvision Faster R-CNN and RetinaNet.

The paper does not say how its baselines handle three label levels (spec §7, not found). medml gives each box one
joint class, (quadrant, tooth, diagnosis) -> 1 + 32 q + 4 t + d (128 classes), trains on the fully labelled tier,
and splits a detection's class back into the three levels, each with the detection's score. They share the
HierarchicalDet backbone builder (R50-FPN, FrozenBN, P2-P5 + P6).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from medml.pipelines.dental.config import NUM_CLASSES, DentalConfig
from medml.pipelines.dental.model import build_backbone

N_JOINT = NUM_CLASSES[0] * NUM_CLASSES[1] * NUM_CLASSES[2]


def joint_label(labels: torch.Tensor) -> torch.Tensor:
    """(G, 3) level indices -> joint class in 1..128."""
    q, t, d = labels.unbind(1)
    return 1 + q * (NUM_CLASSES[1] * NUM_CLASSES[2]) + t * NUM_CLASSES[2] + d


def split_label(joint: torch.Tensor) -> torch.Tensor:
    j = joint - 1
    q = j // (NUM_CLASSES[1] * NUM_CLASSES[2])
    t = (j // NUM_CLASSES[2]) % NUM_CLASSES[1]
    return torch.stack([q, t, j % NUM_CLASSES[2]], dim=1)


class TorchvisionBaseline(nn.Module):
    """Faster R-CNN or RetinaNet over the joint label, with the detector interface of `HierarchicalDiffusionDet`."""

    def __init__(self, config: DentalConfig, pretrained: bool = False):
        super().__init__()
        cfg, data = config.model, config.data
        backbone = build_backbone(cfg, pretrained)
        common = {
            "min_size": data.min_size,
            "max_size": data.max_size,
            "image_mean": [0.0, 0.0, 0.0],  # the pipeline already normalised the pixels
            "image_std": [1.0, 1.0, 1.0],
        }
        if cfg.arch == "fasterrcnn":
            self.net = FasterRCNN(
                backbone, num_classes=N_JOINT + 1, box_detections_per_img=cfg.max_detections, **common
            )
        else:
            sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
            anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
            self.net = RetinaNet(
                backbone,
                num_classes=N_JOINT + 1,
                anchor_generator=anchors,
                detections_per_img=cfg.max_detections,
                **common,
            )

    @staticmethod
    def _unpad(images: torch.Tensor, sizes: torch.Tensor) -> list[torch.Tensor]:
        return [images[i, :, : int(h), : int(w)] for i, (h, w) in enumerate(sizes.tolist())]

    def loss(self, images, sizes, targets) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tv = []
        for t in targets:
            keep = (t["labels"] >= 0).all(1)
            tv.append({"boxes": t["boxes"][keep].float(), "labels": joint_label(t["labels"][keep])})
        parts = self.net(self._unpad(images, sizes), tv)
        return sum(parts.values()), parts

    @torch.no_grad()
    def detect(self, images, image_sizes, level: int = 2, steps: int | None = None, **_) -> list[dict]:
        out = []
        for det in self.net(self._unpad(images, image_sizes)):
            scores = det["scores"]
            out.append(
                {
                    "boxes": det["boxes"],
                    "scores": scores,
                    "labels": split_label(det["labels"]),
                    "probs": scores[:, None].expand(-1, 3).clone(),
                }
            )
        return out
