"""Speed of the angio pipeline at the paper size (512x512 frames, paper.yaml networks).

Times, in one run on the same machine:

* training iterations/s of each ``model.method`` (supervised, mean_teacher, diffrect, rnpll; batch =
  train.batch_size labelled + data.unlabelled_batch_size unlabelled frames), diffusion pseudo-labels on;
* inference frames/s of the plain segmenter (the supervised baseline's predictor) and of the default predictor
  (DDIM over the label latent, decoded) at the paper's 10 DDIM steps, at 2 (the DiffRect preset) and at 1, with
  the ratio of each to the segmenter, all in the same run;
* on CUDA the same in bf16 autocast, and peak memory. The goal there is >= 30 frames/s (fluoroscopy frame rate)
  with the diffusion predictor, using few DDIM steps.

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


METHODS = ("supervised", "mean_teacher", "diffrect", "rnpll")


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
    predictor: str,
    steps: int | None = None,
) -> float:
    """Frames/s of ``module.predict_logits`` with ``predictor`` ("segmenter" or "diffusion" at ``steps`` DDIM steps)."""
    module = module.to(device).eval()
    size = module.config.data.size
    x = torch.rand(frames, 1, size, size, device=device)
    old = module.sample_steps
    module.sample_steps = steps or old
    try:
        with autocast(device, bf16):
            module.predict_logits(x, predictor=predictor)
            sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                module.predict_logits(x, predictor=predictor)
            sync(device)
    finally:
        module.sample_steps = old
    return frames * iters / (time.perf_counter() - start)


def inference_table(
    device: torch.device, frames: int, iters: int, bf16: bool, steps: tuple[int, ...] = (10, 2, 1)
) -> dict[str, float]:
    """Segmenter vs the default (diffusion) predictor at each DDIM step count, one module, one run."""
    module = paper_module("rnpll")
    seg = time_inference(module, frames, iters, device, bf16, predictor="segmenter")
    table = {"segmenter_fps": seg}
    for n in steps:
        fps = time_inference(module, frames, iters, device, bf16, predictor="diffusion", steps=n)
        table[f"diffusion_ddim{n}_fps"] = fps
        table[f"diffusion_ddim{n}_vs_segmenter"] = fps / seg
    return table


def gpu_benchmark(device: str | torch.device = "cuda", iters: int = 10, frames: int = 16) -> dict[str, Any]:
    """Paper-size training it/s per method and inference frames/s of the segmenter and of the diffusion predictor at
    10, 2 and 1 DDIM steps, bf16 (the >= 30 frames/s goal is read off the few-step rows)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": 512,
        "precision": "bf16-mixed",
    }
    for method in METHODS:
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
    parser.add_argument("--inference-only", action="store_true", help="skip the training timings")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(json.dumps(gpu_benchmark(device, args.iters, max(args.frames, 16)), indent=2))
        return
    print(f"angio, paper size 512x512, CPU ({torch.get_num_threads()} threads), {args.iters} iterations each")
    base = None
    for method in () if args.inference_only else METHODS:
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
