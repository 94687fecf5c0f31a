"""Tensor ops that the project needs faster than torchvision's CPU kernels give them."""

from __future__ import annotations

import warnings

import torch
import torchvision


def _taps(coords: torch.Tensor, size: int, bins: int, ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps of sample coordinates (K, bins * ratio) along an axis of ``size`` pixels, as torchvision's
    RoIAlign takes them: samples beyond one pixel outside weigh 0, the rest are clamped to the edge pixels.
    Returns indices and weights (K, bins, 2 * ratio): each bin's samples, two taps each."""
    valid = (coords >= -1) & (coords <= size)
    coords = coords.clamp(0, size - 1)
    low = coords.floor()
    frac = coords - low
    index = torch.stack([low, (low + 1).clamp(max=size - 1)], dim=-1).long()
    weight = torch.stack([1 - frac, frac], dim=-1) * valid[..., None]
    k = coords.shape[0]
    return index.view(k, bins, 2 * ratio), weight.view(k, bins, 2 * ratio)


def roi_align(
    features: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float, sampling_ratio: int
) -> torch.Tensor:
    """``torchvision.ops.roi_align(..., aligned=True)`` with a fixed ``sampling_ratio``; on CPU as one sparse matrix
    product.

    torchvision's CPU backward scatters every bilinear sample into the feature gradient one element at a time
    (about half of a dental training step). Here the weights of all samples form one CSR matrix (rows: output
    bins, columns: feature pixels), so forward and backward are sparse-dense products, ~3x faster for the same
    result (tested against torchvision). ``features`` (N, C, H, W), ``rois`` (K, 5) = (image index, x1, y1, x2, y2)
    -> (K, C, output_size, output_size). No gradient for ``rois`` (detectors pool detached boxes).
    """
    if features.device.type != "cpu" or features.dtype not in (torch.float32, torch.float64) or sampling_ratio < 1:
        return torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=True)
    n, c, h, w = features.shape
    k, r, s = rois.shape[0], output_size, sampling_ratio
    if k and not 0 <= int(rois[:, 0].min()) <= int(rois[:, 0].max()) < n:
        raise IndexError(f"roi_align: image index out of range for {n} images")
    box = rois[:, 1:].detach().to(features.dtype) * spatial_scale - 0.5  # aligned: pixel centres at +0.5
    offsets = (torch.arange(r * s, dtype=features.dtype) + 0.5) / s  # sample positions, in bins
    xs = box[:, 0:1] + offsets * ((box[:, 2:3] - box[:, 0:1]) / r)
    ys = box[:, 1:2] + offsets * ((box[:, 3:4] - box[:, 1:2]) / r)
    xi, xw = _taps(xs, w, r, s)
    yi, yw = _taps(ys, h, r, s)
    image = rois[:, 0].long() * (h * w)
    # row (roi, bin y, bin x); its (2s)^2 entries: every y tap with every x tap, averaged over the s^2 samples
    cols = image[:, None, None, None, None] + yi[:, :, None, :, None] * w + xi[:, None, :, None, :]
    vals = yw[:, :, None, :, None] * xw[:, None, :, None, :] / (s * s)
    taps = (2 * s) ** 2
    crow = torch.arange(0, k * r * r * taps + 1, taps)
    with warnings.catch_warnings():  # torch still calls the CSR layout "beta"; CSR x dense is all this needs
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        matrix = torch.sparse_csr_tensor(
            crow, cols.reshape(-1), vals.reshape(-1), (k * r * r, n * h * w), check_invariants=False
        )  # indices in range by construction: clamped taps, image index checked above
    flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c)
    return (matrix @ flat).view(k, r, r, c).permute(0, 3, 1, 2)
