"""Weak and strong 2D views for semi-supervised training (albumentations).

The weak view is geometric (flip, affine) and is applied identically to the frame and its mask; the strong view is
the weak view plus photometric perturbations and cut-out only, so the teacher's weak-view pseudo-label stays
pixel-aligned with the student's strong view (the FixMatch / UniMatch convention DiffRect also follows).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from medml.data.mosxav import IGNORE_INDEX


def weak_transform(
    rotate_limit: float = 15.0, scale: tuple[float, float] = (0.85, 1.15), translate: float = 0.05, flip_p: float = 0.5
) -> A.Compose:
    """Geometric view; areas moved in from outside the frame are black in the image and ignored in the mask."""
    return A.Compose(
        [
            A.HorizontalFlip(p=flip_p),
            A.Affine(
                scale=scale,
                rotate=(-rotate_limit, rotate_limit),
                translate_percent=(-translate, translate),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE_INDEX,
                p=1.0 if rotate_limit else 0.0,
            ),
        ]
    )


def strong_transform(
    brightness: float = 0.3,
    contrast: float = 0.3,
    noise_std: tuple[float, float] = (0.02, 0.08),
    blur_p: float = 0.3,
    cutout_p: float = 0.5,
) -> A.Compose:
    """Photometric view on top of the weak one: intensity, gamma, blur, noise (quantum mottle) and cut-out."""
    return A.Compose(
        [
            A.RandomBrightnessContrast(brightness_limit=brightness, contrast_limit=contrast, p=0.8),
            A.RandomGamma(gamma_limit=(70, 150), p=0.5),
            A.GaussianBlur(sigma_limit=(0.3, 1.5), p=blur_p),
            A.GaussNoise(std_range=noise_std, p=0.5),
            A.CoarseDropout(
                num_holes_range=(1, 3), hole_height_range=(0.05, 0.2), hole_width_range=(0.05, 0.2), fill=0, p=cutout_p
            ),
        ]
    )


def _to_numpy(image: torch.Tensor) -> np.ndarray:
    return image[0].numpy().astype(np.float32)  # (1, H, W) -> (H, W): albumentations works on HxW(xC)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)).unsqueeze(0)


class LabelledViews(Dataset):
    """Weak view of labelled frames: ``{"image", "label", ...}`` with the same geometry on both."""

    def __init__(self, frames: Dataset, weak: A.Compose | None):
        self.frames = frames
        self.weak = weak

    def __len__(self) -> int:
        return len(self.frames)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.frames[index])
        if self.weak is not None:
            out = self.weak(image=_to_numpy(item["image"]), mask=item["label"].numpy().astype(np.uint8))
            item["image"] = _to_tensor(out["image"])
            item["label"] = torch.from_numpy(out["mask"].astype(np.int64))
        return item


class UnlabelledViews(Dataset):
    """Weak and strong views of unlabelled frames: ``{"image_weak", "image_strong", ...}`` (any mask is dropped)."""

    def __init__(self, frames: Dataset, weak: A.Compose | None, strong: A.Compose | None):
        self.frames = frames
        self.weak = weak
        self.strong = strong

    def __len__(self) -> int:
        return len(self.frames)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.frames[index])
        item.pop("label", None)  # unlabelled by definition, even if the frame happens to be annotated
        image = _to_numpy(item.pop("image"))
        if self.weak is not None:
            image = self.weak(image=image)["image"]
        strong = self.strong(image=image.copy())["image"] if self.strong is not None else image
        item["image_weak"] = _to_tensor(image)
        item["image_strong"] = _to_tensor(strong)
        return item
