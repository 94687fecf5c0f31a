r"""HierarchicalDet speed against torchvision Faster R-CNN in the same run: training iterations/s and inference
seconds per panoramic at 1 and 4 DDIM steps.

Usage::

    python benchmarks/dental.py                    # CPU, tiny recipe sizes (128 x 256 input, 100 proposals)
    python benchmarks/dental.py --size paper       # CPU, paper sizes (800 x 1536 input, 1000 proposals): slow
    python benchmarks/dental.py --device cuda      # = gpu_benchmark
    python benchmarks/dental.py --curve enumeration:200,diagnosis:800 --every 200   # learning curve (model card)
    python benchmarks/dental.py --curve diagnosis:200 --every 50 \
        --set model.arch=fasterrcnn stages.0.enabled=false stages.1.enabled=false     # the baseline, same budget
    python benchmarks/dental.py --roi              # medml.ops.roi_align against torchvision's, CPU

``--roi``: forward + feature-gradient and forward-only time of `medml.ops.roi_align` (one sparse matrix product)
against ``torchvision.ops.roi_align`` on the same inputs: the tiny recipe's per-stage pooling (4 images, 300
proposals, 5 x 5 on 64-channel P2 of a 128 x 256 input) and the paper's (2 images, 1000 proposals, 7 x 7 on
256-channel P2 of 800 x 1536).

``--curve``: the tiny recipe trained in a plain loop (AdamW, its lr, a 20-iteration warm-up, no prior injection)
on a synthetic DENTEX (seed 0) through the listed tiers, with the synthetic test split's AP50 per level every
``--every`` iterations and, at the end, on 16 training images of the disease tier (the over-fitting check).

``gpu_benchmark(device)`` is the entry point for ``benchmarks/gpu.py``: paper size (R50-FPN, 1000 proposals, 6 head
stages, 800 x 1536 input = a 2872 x 1504 panoramic at short side 800), bf16 autocast, batch 2 training with AdamW and
gradient clipping, inference batch 1; peak memory. The issue's goal: < 0.2 s per panoramic at 1 step.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import autocast, sync  # noqa: E402
from medml.config import load_config, resolve_recipe  # noqa: E402
from medml.ops import roi_align  # noqa: E402
from medml.pipelines.dental.config import LEVELS, DentalConfig, DentalStage  # noqa: E402
from medml.pipelines.dental.data import DATA_TIER, DentexData, DentexDetection, collate  # noqa: E402
from medml.pipelines.dental.evaluate import all_levels  # noqa: E402
from medml.pipelines.dental.losses import detection_loss  # noqa: E402
from medml.pipelines.dental.module import DentalModule, build_model  # noqa: E402

#: the two RoIAlign implementations `--roi` compares, with one signature
ROI_ALIGNS = {"torchvision": functools.partial(torchvision.ops.roi_align, aligned=True), "medml": roi_align}


def config(size: str, arch: str = "diffusiondet") -> DentalConfig:
    cfg = load_config(DentalConfig, resolve_recipe("dental", "tiny" if size == "tiny" else "paper"))
    update: dict[str, Any] = {"arch": arch}
    if arch != "diffusiondet":
        cfg = cfg.model_copy(update={"stages": [s for s in cfg.stages if s.tier == "diagnosis"]})
    cfg.model = cfg.model.model_copy(update=update)
    return cfg


def batch(cfg: DentalConfig, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    h = cfg.data.min_size
    w = min(cfg.data.max_size, int(h * 1.91)) // 32 * 32  # 2872 x 1504 panoramic at short side h
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, h, w, generator=g).to(device)
    targets = []
    for _ in range(n):
        x = torch.rand(30, generator=g) * (w - 40)
        y = torch.rand(30, generator=g) * (h - 120)
        boxes = torch.stack([x, y, x + 30, y + 110], 1)
        labels = torch.stack([torch.randint(0, k, (30,), generator=g) for k in (4, 8, 4)], 1)
        targets.append(
            {"boxes": boxes.to(device), "labels": labels.to(device), "levels": torch.ones(3, dtype=torch.bool)}
        )
    return images, torch.tensor([[h, w]] * n, device=device), targets


def measure(cfg: DentalConfig, device: torch.device, iters: int, bf16: bool, train_batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2.5e-5, weight_decay=1e-4)
    images, sizes, targets = batch(cfg, train_batch, device)

    def train_step():
        with autocast(device, bf16):
            if cfg.model.arch == "diffusiondet":
                proposals, t = model.noised_proposals([x["boxes"] for x in targets], sizes)
                levels, boxes = model(images, proposals, t)
                loss, _ = detection_loss(levels, boxes, targets, model.whwh(sizes), cfg.loss)
            else:
                loss, _ = model.loss(images, sizes, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    model.train()
    train_step()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        train_step()
    sync(device)
    out = {"train_it_per_s": iters / (time.perf_counter() - t0), "train_batch": train_batch}
    model.eval()
    one = (images[:1], sizes[:1])
    for steps in (1, 4) if cfg.model.arch == "diffusiondet" else (None,):
        with torch.no_grad(), autocast(device, bf16):
            model.detect(*one, level=2, steps=steps)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                model.detect(*one, level=2, steps=steps)
            sync(device)
        key = f"infer_s_per_image_{steps}step" if steps else "infer_s_per_image"
        out[key] = (time.perf_counter() - t0) / iters
    return out


def compare(size: str, device: torch.device, iters: int, bf16: bool, train_batch: int) -> dict[str, Any]:
    ours = measure(config(size), device, iters, bf16, train_batch)
    frcnn = measure(config(size, "fasterrcnn"), device, iters, bf16, train_batch)
    cfg = config(size)
    return {
        "size": size,
        "input": f"{cfg.data.min_size}x{min(cfg.data.max_size, int(cfg.data.min_size * 1.91)) // 32 * 32}",
        "proposals": cfg.model.num_proposals,
        "hierarchicaldet": ours,
        "fasterrcnn": frcnn,
        "train_speed_ratio_vs_fasterrcnn": ours["train_it_per_s"] / frcnn["train_it_per_s"],
        "infer_time_ratio_1step_vs_fasterrcnn": ours["infer_s_per_image_1step"] / frcnn["infer_s_per_image"],
    }


def gpu_benchmark(device: str | torch.device = "cuda", iters: int = 10) -> dict[str, Any]:
    """Paper size, bf16 autocast: training it/s (batch 2) and inference s/panoramic at 1 and 4 steps, against
    torchvision Faster R-CNN on the same backbone; peak memory."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16-mixed",
        **compare("paper", device, iters, bf16=True, train_batch=2),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def learning_curve(
    plan: str, every: int, overrides: list[str], data_dir: Path, warmup: int = 20, seed: int = 0
) -> dict[str, Any]:
    """Train the tiny recipe through ``plan`` (``tier:iterations,...``) and score AP50 per level as it goes."""
    from medml.data.synthetic_dentex import write_synthetic_dentex

    if not (data_dir / "validation_triple.json").exists():
        write_synthetic_dentex(data_dir, seed=0)
    torch.manual_seed(seed)
    steps = [(tier, int(n)) for tier, n in (part.split(":") for part in plan.split(","))]
    cfg = load_config(DentalConfig, resolve_recipe("dental", "tiny"), overrides)
    cfg = cfg.model_copy(update={"stages": [DentalStage(tier=t) for t in dict.fromkeys(t for t, _ in steps)]})
    dm = DentexData(data_dir, cfg)
    dm.setup()
    module = DentalModule(cfg)
    params = [p for p in module.parameters() if p.requires_grad]
    lr = cfg.train.optim.lr
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.train.optim.weight_decay)

    def ap50(images) -> dict[str, float]:
        """Test-split AP50 per level, ranked by the diagnosis score; the training stage is left as it was."""
        stage, module.stage = module.stage, DentalStage(tier="diagnosis")
        try:
            dets = dict(module.predict_dataset(DentexDetection(images, cfg, train=False), level=2))
        finally:
            module.stage = stage
        result = all_levels(images, dets)
        return {level: round(result[level]["AP50"], 3) for level in LEVELS}

    test, curve, done, cpu = dm.splits["disease"]["test"], [], 0, time.process_time()
    for tier, iters in steps:
        module.stage = DentalStage(tier=tier)
        loader = torch.utils.data.DataLoader(
            dm.datasets[DATA_TIER[tier]][0], batch_size=cfg.train.batch_size, shuffle=True, collate_fn=collate
        )
        left = iters
        while left > 0:
            for batch in loader:
                module.train()
                for group in opt.param_groups:
                    group["lr"] = lr * min(1.0, 0.01 + (done + 1) / warmup)
                loss, _ = module.training_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip or 1.0)
                opt.step()
                done, left = done + 1, left - 1
                if every and done % every == 0:
                    curve.append({"iteration": done, "tier": tier, "loss": round(loss.item(), 2), **ap50(test)})
                    print(json.dumps(curve[-1]), flush=True)
                if left == 0:
                    break
    train_cpu = time.process_time() - cpu
    return {
        "plan": plan,
        "seed": seed,
        "overrides": overrides,
        "curve": curve,
        "test_ap50": ap50(test),
        "train_ap50": ap50(dm.splits["disease"]["train"][:16]),
        "cpu_s": round(train_cpu, 1),
    }


def roi_align_speed(iters: int = 10) -> list[dict[str, Any]]:
    """`medml.ops.roi_align` against torchvision's RoIAlign (aligned, sampling ratio 2) on CPU, same inputs."""
    rows = []
    for name, (n, c, h, w, per_image, size) in {
        "tiny": (4, 64, 32, 64, 300, 5),
        "paper": (2, 256, 200, 384, 1000, 7),
    }.items():
        g = torch.Generator().manual_seed(0)
        features = torch.randn(n, c, h, w, generator=g, requires_grad=True)
        k = n * per_image
        centre = torch.rand(k, 2, generator=g) * torch.tensor([w * 4.0, h * 4.0])
        half = torch.rand(k, 2, generator=g) * torch.tensor([w * 1.0, h * 1.0])  # up to half the image
        rois = torch.cat(
            [torch.arange(n).repeat_interleave(per_image)[:, None].float(), centre - half, centre + half], 1
        )
        row: dict[str, Any] = {"shape": name, "rois": k, "features": [n, c, h, w], "output": size}
        for label, op in ROI_ALIGNS.items():
            grad = torch.ones_like(op(features, rois, size, 0.25, 2))
            t0 = time.perf_counter()
            for _ in range(iters):
                op(features, rois, size, 0.25, 2).backward(grad)
            row[f"{label}_fwd_bwd_ms"] = round((time.perf_counter() - t0) / iters * 1000, 1)
            with torch.no_grad():
                t0 = time.perf_counter()
                for _ in range(iters):
                    op(features, rois, size, 0.25, 2)
            row[f"{label}_fwd_ms"] = round((time.perf_counter() - t0) / iters * 1000, 1)
        row["speedup_fwd_bwd"] = round(row["torchvision_fwd_bwd_ms"] / row["medml_fwd_bwd_ms"], 2)
        row["speedup_fwd"] = round(row["torchvision_fwd_ms"] / row["medml_fwd_ms"], 2)
        rows.append(row)
    rows.append(tiny_step_speed(iters))
    return rows


def tiny_step_speed(iters: int) -> dict[str, Any]:
    """A tiny-recipe training step (batch 4, its proposals) pooling with each RoIAlign, alternated in one run."""
    from medml.pipelines.dental import model as dental_model

    cfg = config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images, sizes, targets = batch(cfg, 4, torch.device("cpu"))
    times: dict[str, list[float]] = {name: [] for name in ROI_ALIGNS}
    try:
        for _ in range(3):
            for name, op in ROI_ALIGNS.items():
                dental_model.roi_align = op
                for i in range(iters + 1):  # the first is a warm-up
                    t0 = time.perf_counter()
                    proposals, t = model.noised_proposals([x["boxes"] for x in targets], sizes)
                    levels, boxes = model(images, proposals, t)
                    loss, _ = detection_loss(levels, boxes, targets, model.whwh(sizes), cfg.loss)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if i:
                        times[name].append(time.perf_counter() - t0)
    finally:
        dental_model.roi_align = roi_align
    best = {name: min(v) for name, v in times.items()}
    return {
        "shape": f"tiny training step ({cfg.model.num_proposals} proposals, batch 4)",
        "torchvision_step_s": round(best["torchvision"], 3),
        "medml_step_s": round(best["medml"], 3),
        "speedup_step": round(best["torchvision"] / best["medml"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=("tiny", "paper"), default="tiny")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--curve", help="tier:iterations,... : learning curve of the tiny recipe on synthetic DENTEX")
    parser.add_argument("--every", type=int, default=0, help="score the test split every N iterations (--curve)")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides (--curve)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the training (--curve)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/medml-dental-curve"), help="synthetic DENTEX (--curve)")
    parser.add_argument("--roi", action="store_true", help="medml.ops.roi_align against torchvision's, CPU")
    args = parser.parse_args()
    if args.roi:
        print(f"RoIAlign, CPU ({torch.get_num_threads()} threads)")
        print(json.dumps(roi_align_speed(args.iters), indent=2))
        return
    if args.curve:
        print(json.dumps(learning_curve(args.curve, args.every, args.set, args.data, seed=args.seed)))
        return
    device = torch.device(args.device)
    if device.type == "cuda":
        print(json.dumps(gpu_benchmark(device, args.iters), indent=2))
        return
    result = compare(args.size, device, args.iters, bf16=False, train_batch=4 if args.size == "tiny" else 2)
    print(f"dental, {args.size} size, CPU ({torch.get_num_threads()} threads)")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
