"""Box-aware detection transforms: boxes follow the pixels through resize, flip and crop; the flip hook remaps
quadrants; batches pad to a multiple of 32."""

import numpy as np
import pytest
import torch

from medml.data.dentex import flip_quadrant_labels
from medml.transforms.detection import (
    DetectionTransform,
    HorizontalFlip,
    RandomCropAbsolute,
    ResizeShortestEdge,
    boxes_to_original,
    detection_collate,
    remap_labels,
    shortest_edge_size,
    to_image_tensor,
)

# Non-overlapping rectangles of a 120x300 image, labelled (quadrant, tooth, diagnosis) by where they are on screen.
BOXES = np.array([[20, 10, 60, 50], [200, 15, 260, 55], [210, 70, 280, 110], [30, 65, 90, 100]], np.float32)
LABELS = np.array([[0, 1, 2], [1, 0, 0], [2, 4, 1], [3, 7, 3]])


def _sample():
    image = np.zeros((120, 300), np.uint8)
    for x1, y1, x2, y2 in BOXES.astype(int):
        image[y1:y2, x1:x2] = 255
    prior = BOXES[:2] + 2.0  # e.g. a previous stage's detections
    return {"image": to_image_tensor(image), "boxes": BOXES, "labels": LABELS, "prior_boxes": prior}


def _bright_extent(image: torch.Tensor, box: torch.Tensor, margin: int = 3) -> list[float]:
    """Extent (xyxy, pixel edges) of the bright pixels around a box."""
    grey = image[0]
    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = grey.shape
    ys, xs = max(0, y1 - margin), max(0, x1 - margin)
    window = grey[ys : min(h, y2 + margin), xs : min(w, x2 + margin)] > grey.min() + 0.5 * (grey.max() - grey.min())
    rows, cols = torch.nonzero(window, as_tuple=True)
    return [float(cols.min() + xs), float(rows.min() + ys), float(cols.max() + xs + 1), float(rows.max() + ys + 1)]


def _assert_boxes_follow(out, tol=1.5):
    image, boxes = out["image"], torch.as_tensor(out["boxes"])
    for box in boxes:
        np.testing.assert_allclose(_bright_extent(image, box), box.tolist(), atol=tol)
    # nothing bright outside the boxes
    mask = torch.zeros(image.shape[-2:], dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.round().int().tolist():
        mask[max(0, y1 - 2) : y2 + 2, max(0, x1 - 2) : x2 + 2] = True
    bright = image[0] > image[0].min() + 0.5 * (image[0].max() - image[0].min())
    assert not (bright & ~mask).any()


def test_resize_flip_normalize_keep_boxes_on_pixels():
    torch.manual_seed(0)
    transform = DetectionTransform(
        train=True, short_sizes=(96, 180), max_size=400, flip_p=1.0, label_remap=flip_quadrant_labels,
        box_keys=("boxes", "prior_boxes"),
    )  # fmt: skip
    for _ in range(3):
        out = transform(_sample())
        assert out["image"].shape[-2] in (96, 160)  # 180 * (300/120) > 400 caps the long side: 160 x 400
        assert out["image_size"] == tuple(out["image"].shape[-2:]) and out["orig_size"] == (120, 300)
        assert out["flipped"]
        _assert_boxes_follow(out)
        np.testing.assert_allclose(out["prior_boxes"], out["boxes"][:2] + torch.tensor([-2.0, 2.0, -2.0, 2.0]) *
                                   torch.tensor(out["scale"]).repeat(2), atol=1e-4)  # fmt: skip
        assert abs(float(out["image"].mean())) < 2.5  # normalised


def test_flip_remaps_quadrants_and_keeps_positions():
    out = HorizontalFlip(1.0, flip_quadrant_labels)(_sample())
    assert out["labels"].tolist() == [[1, 1, 2], [0, 0, 0], [3, 4, 1], [2, 7, 3]]
    # the box labelled quadrant 1 (index 0, upper left on screen) is now on the right, labelled quadrant 2
    box = torch.as_tensor(out["boxes"])[0]
    assert box[0] > 150 and out["labels"][0, 0] == 1
    _assert_boxes_follow(out, tol=0.01)
    plain = HorizontalFlip(1.0)(_sample())  # without the hook the labels stay (the released code's bug)
    assert np.asarray(plain["labels"]).tolist() == LABELS.tolist()
    assert remap_labels([1, 0], column=None)(torch.tensor([0, 1, -1])).tolist() == [1, 0, -1]


def test_crop_clips_and_drops_boxes_with_their_labels():
    torch.manual_seed(3)
    seen_drop = False
    for _ in range(12):
        out = RandomCropAbsolute(60, 150, p=1.0, box_keys=("boxes", "prior_boxes"))(_sample())
        top, left, h, w = out["crop"]
        assert out["image"].shape[-2:] == (h, w)
        assert len(out["boxes"]) == len(out["labels"])
        if len(out["boxes"]):
            _assert_boxes_follow(out, tol=0.01)
        seen_drop |= len(out["boxes"]) < len(BOXES)
        kept = {tuple(r) for r in np.asarray(out["labels"]).tolist()}
        assert kept <= {tuple(r) for r in LABELS.tolist()}
    assert seen_drop


def test_test_transform_and_mapping_back():
    transform = DetectionTransform(train=False, test_size=240, max_size=1333)
    out = transform(_sample())
    assert tuple(out["image"].shape[-2:]) == (240, 600) and out["scale"] == (2.0, 2.0)
    np.testing.assert_allclose(boxes_to_original(out["boxes"], out), BOXES, atol=1e-4)
    assert shortest_edge_size(256, 512, 800, 1333) == (667, 1333)
    assert ResizeShortestEdge(50, random=False)(_sample())["image"].shape[-2:] == (50, 125)


def test_collate_pads_to_multiple_of_32():
    a = DetectionTransform(train=False, test_size=100)(_sample())
    small = _sample()
    small["image"] = small["image"][:, :70, :90]
    small["boxes"], small["labels"] = BOXES[:1], LABELS[:1]
    images, sizes, targets = detection_collate([a, small])
    assert images.shape == (2, 3, 128, 256)
    assert sizes.tolist() == [[100, 250], [70, 90]]
    assert images[1, :, 70:, :].abs().sum() == 0 and images[1, :, :, 90:].abs().sum() == 0
    assert targets[1]["boxes"].dtype == torch.float32 and targets[1]["labels"].dtype == torch.int64
    assert "image" not in targets[0] and targets[0]["boxes"].shape == (4, 4)
    with pytest.raises(ValueError):
        to_image_tensor(np.zeros((2, 2, 2, 2)))


def test_flipped_panoramic_keeps_quadrants_where_fdi_puts_them():
    """On a synthetic panoramic (quadrant 1 on the viewer's left), the flipped image with remapped labels again has
    quadrant 1 left of 2 and 4 left of 3, which is what the model must learn."""
    from medml.data.synthetic_dentex import draw_panoramic

    pano = draw_panoramic(np.random.default_rng(2), 128, 256)
    sample = {
        "image": to_image_tensor(pano.image),
        "boxes": np.array([t.box for t in pano.teeth], np.float32),
        "labels": np.array([[t.quadrant, t.position, -1] for t in pano.teeth]),
    }
    out = HorizontalFlip(1.0, flip_quadrant_labels)(sample)
    cx = (out["boxes"][:, 0] + out["boxes"][:, 2]) / 2
    q = torch.as_tensor(out["labels"])[:, 0]
    assert cx[q == 0].max() < cx[q == 1].min() and cx[q == 3].max() < cx[q == 2].min()
    assert torch.equal(torch.as_tensor(out["labels"])[:, 1], torch.as_tensor(sample["labels"])[:, 1])
