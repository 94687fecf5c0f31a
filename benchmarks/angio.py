"""Speed of the angio pipeline at the paper size (512x512 frames, paper.yaml networks).

Times, in one run on the same machine:

* training iterations/s of each ``model.method`` (supervised, mean_teacher, rnpll; batch = train.batch_size labelled
  + data.unlabelled_batch_size unlabelled frames), with the DDIM-rectified pseudo-labels switched on for rnpll;
* inference frames/s of the segmenter alone and with diffusion rectification at the default DDIM steps (10) and at
  the DiffRect preset (2), and the ratios to the segmenter alone (the baseline);
* on CUDA the same in bf16 autocast, and peak memory. The goal there is >= 30 frames/s (fluoroscopy frame rate)
  with rectification on.

    python benchmarks/angio.py                     # CPU, a few iterations
    python benchmarks/angio.py --device cuda --iters 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import autocast, sync  # noqa: E402
from medml.config import load_config  # noqa: E402
from medml.pipelines.angio.config import AngioConfig  # noqa: E402
from medml.pipelines.angio.module import AngioModule  # noqa: E402

warnings.filterwarnings("ignore", message=".*self.trainer.*")  # training_step logs without a Trainer here


def paper_module(method: str = "rnpll", overrides: list[str] | None = None) -> AngioModule:
    cfg = load_config(AngioConfig, None, [f"model.method={method}", "model.refine_start_step=0", *(overrides or [])])
    module = AngioModule(cfg)
    module._total_steps = 1000
    return module


def random_batch(cfg: AngioConfig, device: torch.device) -> dict[str, Any]:
    size, b_l, b_u = cfg.data.size, cfg.train.batch_size, cfg.data.unlabelled_batch_size
    labels = torch.zeros(b_l, size, size, dtype=torch.long, device=device)
    labels[:, size // 3 : size // 3 + 8] = 1
    labels[:, :, size // 2 : size // 2 + 4] = 2
    return {
        "labelled": {"image": torch.rand(b_l, 1, size, size, device=device), "label": labels},
        "unlabelled": {
            "image_weak": torch.rand(b_u, 1, size, size, device=device),
            "image_strong": torch.rand(b_u, 1, size, size, device=device),
        },
    }


def time_training(method: str, iters: int, device: torch.device, bf16: bool) -> dict[str, float]:
    module = paper_module(method).to(device).train()
    params = [p for _, p in module.stage_parameters(module.stage)]
    cfg = module.config.train.optim
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    batch = random_batch(module.config, device)

    def step() -> None:
        with autocast(device, bf16):
            loss = module.training_step(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if module.teacher is not None:
            module.teacher.update_parameters(module.net)

    step()  # warm-up (allocations, cuDNN autotune)
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / iters
    return {"iters_per_s": 1.0 / seconds, "s_per_iter": seconds}


@torch.no_grad()
def time_inference(
    module: AngioModule,
    frames: int,
    iters: int,
    device: torch.device,
    bf16: bool,
    refine: bool,
    steps: int | None = None,
) -> float:
    module = module.to(device).eval()
    size = module.config.data.size
    x = torch.rand(frames, 1, size, size, device=device)
    old = module.sample_steps
    module.sample_steps = steps or old
    try:
        with autocast(device, bf16):
            module.predict_logits(x, refine=refine)
            sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                module.predict_logits(x, refine=refine)
            sync(device)
    finally:
        module.sample_steps = old
    return frames * iters / (time.perf_counter() - start)


def inference_table(device: torch.device, frames: int, iters: int, bf16: bool) -> dict[str, float]:
    module = paper_module("rnpll")
    seg = time_inference(module, frames, iters, device, bf16, refine=False)
    default_steps = module.config.diffusion.resolved()[1]
    ref10 = time_inference(module, frames, iters, device, bf16, refine=True, steps=default_steps)
    ref2 = time_inference(module, frames, iters, device, bf16, refine=True, steps=2)
    return {
        "segmenter_fps": seg,
        f"refined_ddim{default_steps}_fps": ref10,
        "refined_ddim2_fps": ref2,
        f"refined_ddim{default_steps}_vs_segmenter": ref10 / seg,
        "refined_ddim2_vs_segmenter": ref2 / seg,
    }


def gpu_benchmark(device: str | torch.device = "cuda", iters: int = 10, frames: int = 16) -> dict[str, Any]:
    """Paper-size training it/s per method and inference frames/s with and without rectification, bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": 512,
        "precision": "bf16-mixed",
    }
    for method in ("supervised", "mean_teacher", "rnpll"):
        result[f"train_{method}_iters_per_s"] = time_training(method, iters, device, bf16=True)["iters_per_s"]
    result.update(inference_table(device, frames, iters, bf16=True))
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--frames", type=int, default=2, help="frames per inference batch")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(json.dumps(gpu_benchmark(device, args.iters, max(args.frames, 16)), indent=2))
        return
    print(f"angio, paper size 512x512, CPU ({torch.get_num_threads()} threads), {args.iters} iterations each")
    base = None
    for method in ("supervised", "mean_teacher", "rnpll"):
        timing = time_training(method, args.iters, device, bf16=False)
        base = base or timing["iters_per_s"]
        print(
            f"train {method:>12}: {timing['iters_per_s']:.3f} it/s ({timing['s_per_iter']:.1f} s/it), "
            f"{timing['iters_per_s'] / base:.2f}x the supervised baseline"
        )
    table = inference_table(device, args.frames, args.iters, bf16=False)
    for key, value in table.items():
        print(f"inference {key}: {value:.3f}")


if __name__ == "__main__":
    main()
