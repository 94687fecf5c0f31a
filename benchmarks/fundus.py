"""Speed of the fundus pipeline at the paper size (paper.yaml networks: 512-px locator input, 512-px disc ROI,
EfficientNet-B6 on 512-px ROIs) on a Canon-sized photograph (1634x1634).

Times, in one run on the same machine:

* the whole analysis of one photograph (colour normalisation, disc + fovea locator, ROI segmentation pasted back at
  the original size with cup ⊆ disc, official vCDR, glaucoma classifier) in s/image;
* the segmentation network alone on one ROI (the baseline), and the ratio;
* on CUDA the same in bf16 autocast, and peak memory. Goal there: < 0.1 s per image.

Networks are randomly initialised (speed does not depend on the weights), so the ROI is given rather than located.

    python benchmarks/fundus.py                     # CPU, a few iterations
    python benchmarks/fundus.py --device cuda --iters 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import autocast, sync  # noqa: E402
from medml.config import load_config  # noqa: E402
from medml.data.synthetic_refuge import draw_fundus  # noqa: E402
from medml.pipelines.fundus.config import FundusConfig  # noqa: E402
from medml.pipelines.fundus.module import FundusModule  # noqa: E402

SIZE = 1634  # Canon CR-2 photographs of REFUGE-2018 [V]


def paper_module(overrides: list[str] | None = None) -> FundusModule:
    return FundusModule(load_config(FundusConfig, None, ["model.weights=none", *(overrides or [])]))


def photograph(size: int = SIZE) -> tuple[np.ndarray, tuple[float, float, float]]:
    rgb, labels, _ = draw_fundus(np.random.default_rng(0), 512, 512, cdr=0.6)
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(labels)
    scale = size / 512
    return rgb, (xs.mean() * scale, ys.mean() * scale, 2.5 * (ys.max() - ys.min() + 1) * scale)


def _time(fn, iters: int, device: torch.device) -> float:
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def inference_table(module: FundusModule, device: torch.device, iters: int, bf16: bool) -> dict[str, float]:
    rgb, box = photograph()
    roi = torch.rand(1, 3, module.config.data.roi_size, module.config.data.roi_size, device=device)
    with module.evaluating(device), autocast(device, bf16):
        whole = _time(lambda: module.analyse(rgb, box=box), iters, device)
        seg = _time(lambda: module.segmenter(roi), iters, device)
    return {"s_per_image": whole, "segmenter_s_per_roi": seg, "ratio_to_segmenter": whole / seg}


def gpu_benchmark(device: str | torch.device = "cuda", iters: int = 10) -> dict[str, Any]:
    """Whole-photograph inference and the segmenter alone, paper size, bf16; peak memory."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True
    module = paper_module()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "photograph": f"{SIZE}x{SIZE}",
        "precision": "bf16-mixed",
        **inference_table(module, device, iters, bf16=True),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(json.dumps(gpu_benchmark(device, args.iters), indent=2))
        return
    print(f"fundus, paper size, {SIZE}x{SIZE} photograph, CPU ({torch.get_num_threads()} threads), {args.iters} iters")
    for key, value in inference_table(paper_module(), device, args.iters, bf16=False).items():
        print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    main()
