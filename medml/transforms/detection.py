"""Box-aware augmentation and batching for detectors, on torchvision ``transforms.v2`` with ``tv_tensors``.

A sample is a dict: ``"image"`` (C, H, W) float tensor, ``"boxes"`` (N, 4) xyxy pixels, ``"labels"`` (N, ...) int64,
and any other keys (passed through). Every key in ``box_keys`` (e.g. ``"prior_boxes"``, a previous stage's
detections) is moved with the pixels exactly like the ground truth; rows of ``row_keys`` (``labels``, and whatever
is per box) follow the boxes a crop removes.

The steps are DiffusionDet's detectron2 input pipeline (spec §1.1), rebuilt here: ResizeShortestEdge (short side
drawn from a list, long side capped), random horizontal flip, the optional "absolute range" random crop, pixel
normalisation, and zero padding of the batch to a multiple of 32. Unlike the released HierarchicalDet code, the flip
takes a label remap hook: mirroring a panoramic swaps quadrants 1<->2 and 3<->4 (`medml.data.dentex`
``flip_quadrant_labels``), and a detector that flips without it learns mirrored labels (spec §2.8).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

Sample = dict[str, Any]
LabelRemap = Callable[[torch.Tensor], torch.Tensor]

# detectron2's pixel statistics on the 0-255 scale (RGB order), used by DiffusionDet's R-50 configs.
PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)
TRAIN_SHORT_SIZES = tuple(range(480, 801, 32))
MAX_SIZE = 1333
SIZE_DIVISIBILITY = 32


def to_image_tensor(image: np.ndarray | torch.Tensor, channels: int = 3) -> torch.Tensor:
    """HxW or HxWxC array (uint8 0-255, or float in [0, 1]) -> (channels, H, W) float32 on the 0-255 scale; grey
    images are repeated to ``channels`` (ImageNet backbones take RGB)."""
    array = torch.as_tensor(np.asarray(image))
    scale = 1.0 if array.dtype == torch.uint8 else 255.0
    array = array.to(torch.float32) * scale
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = array.permute(2, 0, 1)
    else:
        raise ValueError(f"an image must be HxW or HxWxC, got shape {tuple(array.shape)}")
    if array.shape[0] == 1 and channels != 1:
        array = array.expand(channels, -1, -1)
    elif array.shape[0] >= 3 and channels == 1:
        array = array[:3].mean(0, keepdim=True)
    return array.contiguous()


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge output size: short side to ``short``, long side at most ``max_size``."""
    scale = short / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        factor = max_size / max(new_h, new_w)
        new_h, new_w = new_h * factor, new_w * factor
    return int(new_h + 0.5), int(new_w + 0.5)


def _boxes(sample: Mapping[str, Any], key: str, canvas: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    return tv_tensors.BoundingBoxes(
        torch.as_tensor(np.asarray(sample[key]) if not torch.is_tensor(sample[key]) else sample[key])
        .to(torch.float32)
        .reshape(-1, 4),
        format="XYXY",
        canvas_size=canvas,
    )


def _plain(boxes: torch.Tensor) -> torch.Tensor:
    return boxes.as_subclass(torch.Tensor)


class ResizeShortestEdge:
    """Resize so the short side is one of ``short_sizes`` (drawn uniformly when ``random``, else the first) and the
    long side at most ``max_size``; boxes scale with the pixels. Records ``image_size`` (h, w) and the
    ``scale`` (sx, sy) from the input."""

    def __init__(
        self,
        short_sizes: int | Sequence[int],
        max_size: int = MAX_SIZE,
        *,
        random: bool = True,
        box_keys: Sequence[str] = ("boxes",),
    ):
        self.short_sizes = (short_sizes,) if isinstance(short_sizes, int) else tuple(short_sizes)
        if not self.short_sizes:
            raise ValueError("short_sizes is empty")
        self.max_size, self.random, self.box_keys = max_size, random, tuple(box_keys)

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        image = sample["image"]
        height, width = image.shape[-2:]
        index = int(torch.randint(len(self.short_sizes), ())) if self.random else 0
        new_h, new_w = shortest_edge_size(height, width, self.short_sizes[index], self.max_size)
        out["image"] = F.resize(image, [new_h, new_w], antialias=True)
        for key in self.box_keys:
            if key in sample:
                out[key] = _plain(F.resize(_boxes(sample, key, (height, width)), [new_h, new_w]))
        sx, sy = out.get("scale", (1.0, 1.0))
        out["scale"] = (sx * new_w / width, sy * new_h / height)
        out["image_size"] = (new_h, new_w)
        return out


class HorizontalFlip:
    """Mirror left-right with probability ``p``; boxes follow, and ``label_remap`` (if given) maps the labels of a
    flipped sample (e.g. swapping left and right classes). Records ``flipped``."""

    def __init__(
        self,
        p: float = 0.5,
        label_remap: LabelRemap | None = None,
        *,
        box_keys: Sequence[str] = ("boxes",),
        label_key: str = "labels",
    ):
        self.p, self.label_remap, self.box_keys, self.label_key = p, label_remap, tuple(box_keys), label_key

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        flip = self.p >= 1 or (self.p > 0 and float(torch.rand(())) < self.p)
        out["flipped"] = bool(sample.get("flipped", False)) ^ flip
        if not flip:
            return out
        image = sample["image"]
        canvas = tuple(image.shape[-2:])
        out["image"] = F.horizontal_flip(image)
        for key in self.box_keys:
            if key in sample:
                out[key] = _plain(F.horizontal_flip(_boxes(sample, key, canvas)))
        if self.label_remap is not None and self.label_key in sample:
            out[self.label_key] = self.label_remap(torch.as_tensor(sample[self.label_key]))
        return out


class RandomCropAbsolute:
    """detectron2's RandomCrop "absolute_range": with probability ``p`` crop a window of height and width drawn in
    [min_size, max_size] (at most the image), at a random place. Boxes are clipped to the window; boxes left with no
    area are removed with their rows in ``row_keys`` (extra box keys such as prior boxes are clipped and filtered on
    their own)."""

    def __init__(
        self,
        min_size: int,
        max_size: int,
        p: float = 0.5,
        *,
        box_keys: Sequence[str] = ("boxes",),
        row_keys: Sequence[str] = ("labels",),
    ):
        if not 0 < min_size <= max_size:
            raise ValueError("need 0 < min_size <= max_size")
        self.min_size, self.max_size, self.p = min_size, max_size, p
        self.box_keys, self.row_keys = tuple(box_keys), tuple(row_keys)

    def __call__(self, sample: Sample) -> Sample:
        if self.p <= 0 or (self.p < 1 and float(torch.rand(())) >= self.p):
            return dict(sample)
        image = sample["image"]
        height, width = image.shape[-2:]
        crop_h = int(torch.randint(min(self.min_size, height), min(self.max_size, height) + 1, ()))
        crop_w = int(torch.randint(min(self.min_size, width), min(self.max_size, width) + 1, ()))
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        out = dict(sample)
        out["image"] = F.crop(image, top, left, crop_h, crop_w)
        for n, key in enumerate(self.box_keys):
            if key not in sample:
                continue
            boxes = _plain(F.crop(_boxes(sample, key, (height, width)), top, left, crop_h, crop_w))
            boxes = torch.stack(
                [boxes[:, 0].clamp(0, crop_w), boxes[:, 1].clamp(0, crop_h), boxes[:, 2].clamp(0, crop_w),
                 boxes[:, 3].clamp(0, crop_h)], dim=1,
            )  # fmt: skip
            keep = ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)
            out[key] = boxes[keep]
            if n == 0:  # the ground truth's rows
                for row_key in self.row_keys:
                    if row_key in sample:
                        out[row_key] = torch.as_tensor(sample[row_key])[keep]
        out["crop"] = (top, left, crop_h, crop_w)
        return out


class Normalize:
    """(image - mean) / std per channel, on the 0-255 scale of `to_image_tensor`."""

    def __init__(self, mean: Sequence[float] = PIXEL_MEAN, std: Sequence[float] = PIXEL_STD):
        self.mean, self.std = list(mean), list(std)

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        image = sample["image"]
        channels = image.shape[0]
        out["image"] = F.normalize(image, self.mean[:channels], self.std[:channels])
        return out


class DetectionTransform:
    """The whole input pipeline of a training or test sample (spec §1.1), one call per sample.

    Train: [with ``crop_p``: ResizeShortestEdge(``crop_pre_sizes``) -> RandomCropAbsolute(``crop``)] ->
    ResizeShortestEdge(random of ``short_sizes``, ``max_size``) -> HorizontalFlip(``flip_p``, ``label_remap``) ->
    Normalize. Test: ResizeShortestEdge(``test_size``, ``max_size``) -> Normalize. The sample keeps ``orig_size``
    (h, w) of its input, ``image_size`` after resizing (before batch padding) and, without a crop, ``scale``
    (sx, sy) to map boxes back to the input (`boxes_to_original`).
    """

    def __init__(
        self,
        *,
        train: bool,
        short_sizes: Sequence[int] = TRAIN_SHORT_SIZES,
        max_size: int = MAX_SIZE,
        test_size: int = 800,
        flip_p: float = 0.5,
        label_remap: LabelRemap | None = None,
        crop: tuple[int, int] | None = None,
        crop_p: float = 0.5,
        crop_pre_sizes: Sequence[int] = (400, 500, 600),
        mean: Sequence[float] = PIXEL_MEAN,
        std: Sequence[float] = PIXEL_STD,
        box_keys: Sequence[str] = ("boxes",),
        row_keys: Sequence[str] = ("labels",),
    ):
        self.train = train
        self.resize = ResizeShortestEdge(short_sizes if train else test_size, max_size, random=train, box_keys=box_keys)
        self.flip = HorizontalFlip(flip_p, label_remap, box_keys=box_keys) if train and flip_p > 0 else None
        self.crop = None
        if train and crop is not None and crop_p > 0:
            self.crop = (
                ResizeShortestEdge(crop_pre_sizes, 10**9, box_keys=box_keys),
                RandomCropAbsolute(crop[0], crop[1], 1.0, box_keys=box_keys, row_keys=row_keys),
            )
            self.crop_p = crop_p
        self.normalize = Normalize(mean, std)

    def __call__(self, sample: Sample) -> Sample:
        out = {k: v for k, v in sample.items() if k not in ("scale", "crop", "flipped")}
        out["orig_size"] = tuple(int(v) for v in sample["image"].shape[-2:])
        cropped = self.crop is not None and float(torch.rand(())) < self.crop_p
        if cropped:
            out = self.crop[1](self.crop[0](out))  # type: ignore[index]
        out = self.resize(out)
        if cropped:
            out.pop("scale")  # a crop offset is not a scale: such samples cannot be mapped back
        if self.flip is not None:
            out = self.flip(out)
        return self.normalize(out)


def boxes_to_original(boxes: torch.Tensor | np.ndarray, sample: Mapping[str, Any]) -> torch.Tensor:
    """Boxes predicted on a test-transformed sample, in the pixels of its input (undoes the resize, then clips)."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).clone()
    sx, sy = sample.get("scale", (1.0, 1.0))
    boxes[:, 0::2] /= sx
    boxes[:, 1::2] /= sy
    if "orig_size" in sample:
        height, width = sample["orig_size"]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def remap_labels(mapping: Sequence[int], column: int | None = 0) -> LabelRemap:
    """A label remap hook: class ``i`` becomes ``mapping[i]`` in ``column`` of (N, K) labels (or in (N,) labels when
    ``column`` is None); negative labels (not annotated) stay."""
    table = torch.as_tensor(list(mapping), dtype=torch.int64)

    def remap(labels: torch.Tensor) -> torch.Tensor:
        labels = torch.as_tensor(labels).clone()
        values = labels if column is None else labels[..., column]
        mapped = torch.where(values >= 0, table[values.clamp(min=0)], values)
        if column is None:
            return mapped
        labels[..., column] = mapped
        return labels

    return remap


def pad_images(
    images: Sequence[torch.Tensor], size_divisibility: int = SIZE_DIVISIBILITY, pad_value: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) batch padded at the bottom and right to the largest size rounded up to ``size_divisibility``, and
    the (B, 2) long tensor of each image's (h, w) before padding."""
    if not images:
        raise ValueError("no images to batch")
    sizes = torch.tensor([tuple(im.shape[-2:]) for im in images], dtype=torch.long)
    height, width = (int(v) for v in sizes.max(0).values)
    if size_divisibility > 1:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    batch = images[0].new_full((len(images), images[0].shape[0], height, width), pad_value)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[-2], : image.shape[-1]].copy_(image)
    return batch, sizes


def detection_collate(
    batch: Sequence[Sample], size_divisibility: int = SIZE_DIVISIBILITY, pad_value: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """DataLoader ``collate_fn``: (padded images (B, C, H, W), image sizes (B, 2) as (h, w), one target dict per
    sample holding every key but ``image`` (boxes as float32 tensors, labels as int64 tensors))."""
    images, sizes = pad_images([s["image"] for s in batch], size_divisibility, pad_value)
    targets = []
    for sample in batch:
        target = {k: v for k, v in sample.items() if k != "image"}
        if "boxes" in target:
            target["boxes"] = torch.as_tensor(np.asarray(target["boxes"]) if not torch.is_tensor(target["boxes"])
                                              else target["boxes"], dtype=torch.float32).reshape(-1, 4)  # fmt: skip
        if "labels" in target:
            target["labels"] = torch.as_tensor(target["labels"], dtype=torch.int64)
        targets.append(target)
    return images, sizes, targets
