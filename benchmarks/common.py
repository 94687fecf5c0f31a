"""What every pipeline benchmark times with: bf16 autocast on CUDA only, and a device sync before reading a clock."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked (the paper-size GPU numbers); fp32 elsewhere."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
