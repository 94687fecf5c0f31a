"""CT-SSG speed: ``prepare`` against a MONAI chain, CPU inference per study, and GPU training/inference at paper size.

Usage::

    python benchmarks/ct.py                 # prepare ratio on synthetic volumes + CPU inference (tiny and paper size)
    python benchmarks/ct.py --json out.json

``gpu_benchmark(device)`` is the entry point for ``benchmarks/gpu.py``: paper-size training volumes/s (bf16, batch 4,
gradient checkpointing) and inference latency with peak memory.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from medml.config import load_config, resolve_recipe
from medml.data.ctrate import LABELS
from medml.data.synthetic_ctrate import chest_hu, grid_points, random_chest
from medml.io.types import Volume
from medml.pipelines.ct.config import CtConfig
from medml.pipelines.ct.module import build_model
from medml.transforms.ct import ct_preprocess


def _volume(shape=(120, 256, 256), spacing=(1.4, 1.4, 2.5)) -> Volume:
    points, origin = grid_points(shape, spacing)
    rng = np.random.default_rng(0)
    hu = chest_hu(points, random_chest(rng, np.ones(len(LABELS), int)), rng).astype(np.float32)
    return Volume(hu, spacing, tuple(origin), np.eye(3))


def monai_chain(volume: Volume, spacing, size) -> np.ndarray:
    """The chain medml's one-pass resampling replaces: Orientation -> Spacing -> ScaleIntensityRange -> crop/pad."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation, ResizeWithPadOrCrop, ScaleIntensityRange, Spacing

    affine = np.diag([-volume.spacing[0], -volume.spacing[1], volume.spacing[2], 1.0])
    img = MetaTensor(torch.from_numpy(volume.array.transpose(2, 1, 0).copy())[None], affine=torch.tensor(affine))
    img = Orientation(axcodes="SLP")(img)
    img = Spacing(pixdim=spacing, mode="bilinear")(img)
    img = ScaleIntensityRange(-1000, 200, 0.0, 1.0, clip=True)(img)
    return np.asarray(ResizeWithPadOrCrop(size, value=0.0)(img)[0]) - 0.449


def prepare_benchmark(n: int = 3) -> dict[str, Any]:
    spacing, size = (1.5, 0.75, 0.75), (240, 480, 480)
    vol = _volume()
    ours = ct_preprocess(spacing=spacing, size=size)
    t0 = time.perf_counter()
    for _ in range(n):
        a = ours({"image": vol})["image"]
    t_ours = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        b = monai_chain(vol, spacing, size)
    t_monai = (time.perf_counter() - t0) / n
    inside = (a > -0.44) & (b > -0.44)
    return {
        "volume": list(vol.array.shape),
        "medml_s": t_ours,
        "monai_s": t_monai,
        "speedup": t_monai / t_ours,
        "mean_abs_diff_inside": float(np.abs(a - b)[inside].mean()) if inside.any() else None,
    }


def inference_benchmark(recipe: str, device: str = "cpu", repeats: int = 2) -> dict[str, Any]:
    device = str(device)
    config = load_config(CtConfig, resolve_recipe("ct", recipe)) if recipe != "paper" else CtConfig()
    model = build_model(config, pretrained=False).to(device).eval()
    x = torch.randn(1, *config.data.size, device=device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.startswith("cuda")
        else torch.autocast("cpu", enabled=False)
    )
    with torch.no_grad(), autocast:
        model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return {"recipe": recipe, "device": device, "seconds_per_study": (time.perf_counter() - t0) / repeats}


def gpu_benchmark(device: str = "cuda") -> dict[str, Any]:
    """Paper size on one GPU: training volumes/s (bf16, batch 4, checkpointing), inference latency, peak memory."""
    device = str(device)
    config = CtConfig()
    model = build_model(config, pretrained=False).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(4, *config.data.size, device=device)
    y = torch.randint(0, 2, (4, 18), device=device).float()
    torch.cuda.reset_peak_memory_stats(device)
    steps = 5
    for i in range(steps + 1):
        if i == 1:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    train = {
        "volumes_per_s": 4 * steps / (time.perf_counter() - t0),
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
    }
    torch.cuda.reset_peak_memory_stats(device)
    infer = inference_benchmark("paper", device, repeats=5)
    infer["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return {"train_batch4_bf16": train, "inference_bf16": infer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    out = {
        "prepare": prepare_benchmark(),
        "cpu_inference": [inference_benchmark("tiny"), inference_benchmark("paper", repeats=1)],
    }
    if torch.cuda.is_available():
        out["gpu"] = gpu_benchmark("cuda")
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
