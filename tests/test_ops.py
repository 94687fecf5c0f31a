"""`medml.ops.roi_align` is torchvision's RoIAlign (aligned=True), value and feature gradient."""

from __future__ import annotations

import pytest
import torch
import torchvision

from medml.ops import roi_align


def _rois(n_images: int, per_image: int, height: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    cx = torch.rand(n_images * per_image, generator=g) * (width * 1.4) - 0.2 * width  # some centres off the image
    cy = torch.rand(n_images * per_image, generator=g) * (height * 1.4) - 0.2 * height
    w = torch.rand(n_images * per_image, generator=g) * width
    h = torch.rand(n_images * per_image, generator=g) * height
    w[:3] = 0.0  # degenerate boxes, as clamped diffusion boxes can be
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    index = torch.arange(n_images).repeat_interleave(per_image).float()
    return torch.cat([index[:, None], boxes], dim=1)


@pytest.mark.parametrize(("size", "scale", "ratio"), [(5, 0.25, 2), (7, 0.125, 2), (3, 0.5, 1), (2, 0.25, 3)])
def test_roi_align_equals_torchvision_in_value_and_feature_gradient(size, scale, ratio):
    torch.manual_seed(0)
    features = torch.randn(3, 8, 13, 21, dtype=torch.float64, requires_grad=True)
    rois = _rois(3, 40, int(13 / scale), int(21 / scale)).double()
    ours = roi_align(features, rois, size, scale, ratio)
    ref = torchvision.ops.roi_align(features, rois, size, scale, ratio, aligned=True)
    assert ours.shape == ref.shape == (120, 8, size, size)
    torch.testing.assert_close(ours, ref)
    grad = torch.randn_like(ref)
    (g_ours,) = torch.autograd.grad(ours, features, grad)
    (g_ref,) = torch.autograd.grad(ref, features, grad)
    torch.testing.assert_close(g_ours, g_ref)


def test_roi_align_float32_and_no_rois():
    features = torch.randn(2, 4, 9, 9)
    rois = _rois(2, 5, 36, 36)
    torch.testing.assert_close(
        roi_align(features, rois, 4, 0.25, 2),
        torchvision.ops.roi_align(features, rois, 4, 0.25, 2, aligned=True),
        atol=1e-5,
        rtol=1e-5,
    )
    assert roi_align(features, rois[:0], 4, 0.25, 2).shape == (0, 4, 4, 4)


def test_roi_align_rejects_an_image_index_out_of_range():
    rois = torch.tensor([[2.0, 0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(IndexError):
        roi_align(torch.randn(2, 4, 9, 9), rois, 4, 0.25, 2)
