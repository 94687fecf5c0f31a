"""ProtoECGNet speed at paper size: training and inference throughput, FLOPs per ECG, data loading vs step time.

Usage::

    python benchmarks/ecg.py                       # CPU (and CUDA bf16 if a GPU is present), synthetic loader data
    python benchmarks/ecg.py --data /data/ptb-xl   # loader timing on a real PTB-XL (prepared once, then cached)
    python benchmarks/ecg.py --prepare             # also: prepare_ptbxl vs a serial wfdb.rdsamp loop (ratio)

Every figure is measured in the same run on the same machine; the script prints what it measured and, with
``--json PATH``, writes it. ``gpu_benchmark(device)`` is the entry point for ``benchmarks/gpu.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import autocast, sync  # noqa: E402
from medml.pipelines.ecg.config import EcgConfig  # noqa: E402
from medml.pipelines.ecg.data import branch_label_indices  # noqa: E402
from medml.pipelines.ecg.module import EcgModule  # noqa: E402

PTBXL_TRAIN_RECORDS = 17_418  # folds 1-8 of PTB-XL v1.0.3 (21,799 records); one epoch at paper size


def paper_module(codes: list[str] | None = None) -> EcgModule:
    """The paper-size ProtoECGNet (all three branches + fusion) with random weights and PTB-XL's 71 labels."""
    if codes is None:
        from medml.data.ptbxl import SCP_CODES

        codes = list(SCP_CODES)
    config = EcgConfig()
    config.model.labels = list(codes)
    config.model.imagenet_weights = None  # timing only: random weights, no download
    rng = np.random.default_rng(0)
    fake_labels = (rng.random((512, len(codes))) < 0.1).astype(np.uint8)  # class weights / Jaccard for the loss
    return EcgModule(config, branch_label_indices(codes), fake_labels)


def time_training_step(
    module: EcgModule,
    stage_name: str,
    batch: int,
    steps: int,
    device: torch.device,
    bf16: bool = False,
    warmup: int = 2,
) -> dict[str, float]:
    """Samples/s of full optimisation steps (forward, loss, backward, Adam) in one stage."""
    stage = next(s for s in module.config.stages if s.name == stage_name)
    module.start_stage(stage)
    module.to(device).train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4, weight_decay=1.7e-4)
    x = torch.randn(batch, 12, 1000, device=device)
    y = (torch.rand(batch, 71, device=device) < 0.1).float()
    data = {"signal": x, "target": y}
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        with autocast(device, bf16):
            loss = module._losses(data)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {"step_s": seconds, "samples_per_s": batch / seconds}


@torch.no_grad()
def time_inference(
    module: EcgModule, batch: int, steps: int, device: torch.device, bf16: bool = False, warmup: int = 2
) -> dict[str, float]:
    module.to(device).eval()
    x = torch.randn(batch, 12, 1000, device=device)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        with autocast(device, bf16):
            module(x)
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {"batch_s": seconds, "ecgs_per_s": batch / seconds}


def flops_per_ecg(module: EcgModule) -> dict[str, float]:
    """FLOPs of one ECG through the fused model (inference), and of one joint-stage training step per branch."""
    module.cpu().eval()
    x = torch.randn(1, 12, 1000)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    out = {"inference_fused": float(counter.get_total_flops())}
    for name in module.model.branch_names:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module.model.branches[name](x)
        out[f"inference_{name}"] = float(counter.get_total_flops())
    return out


def loader_vs_step(data_dir: Path | None, step_s: float, batch: int, workers: int) -> dict[str, float]:
    """Seconds per batch of the real training DataLoader (memory-mapped cache) against the step time."""
    from medml.config import TrainConfig
    from medml.data.ptbxl import PTBXL, ECGDataset
    from medml.engine.data import train_loader

    tmp = None
    if data_dir is None:
        from medml.data.synthetic_ptbxl import write_synthetic_ptbxl

        tmp = tempfile.TemporaryDirectory()
        data_dir = write_synthetic_ptbxl(Path(tmp.name) / "ptb-xl", n_records=400, seed=0)
    ptbxl = PTBXL(data_dir, cache_dir=Path(tmp.name) / "cache" if tmp else None)
    dataset = ECGDataset(ptbxl, ptbxl.split_indices("train"), "all")
    loader = train_loader(dataset, TrainConfig(batch_size=batch, num_workers=workers))
    n, start = 0, None
    for i, _ in enumerate(loader):
        if i == 1:  # the first batch pays worker start-up
            start = time.perf_counter()
        elif i > 1:
            n += 1
        if n >= 50:
            break
    seconds = (time.perf_counter() - start) / max(n, 1) if start else float("nan")
    if tmp:
        tmp.cleanup()
    return {"loader_batch_s": seconds, "step_s": step_s, "loader_share_of_step": seconds / step_s, "workers": workers}


def prepare_vs_serial(n_records: int = 400) -> dict[str, float]:
    """`prepare_ptbxl` (parallel, writes the cache) against a serial ``wfdb.rdsamp`` loop over the same records."""
    import pandas as pd
    import wfdb

    from medml.data.ptbxl import prepare_ptbxl
    from medml.data.synthetic_ptbxl import write_synthetic_ptbxl

    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_ptbxl(Path(tmp) / "ptb-xl", n_records=n_records, seed=0)
        files = pd.read_csv(root / "ptbxl_database.csv")["filename_lr"].tolist()
        start = time.perf_counter()
        for name in files:
            wfdb.rdsamp(str(root / name))
        serial = time.perf_counter() - start
        start = time.perf_counter()
        prepare_ptbxl(root, cache_dir=Path(tmp) / "cache", progress=False)
        prepared = time.perf_counter() - start
    return {"records": n_records, "serial_rdsamp_s": serial, "prepare_s": prepared, "ratio": serial / prepared}


def gpu_benchmark(device: str | torch.device = "cuda", batch: int = 32, steps: int = 10) -> dict[str, Any]:
    """One paper-size training step per stage kind and inference in bf16 on ``device``: throughput, peak memory.

    Returns samples/s of the joint stage of each branch and of the fusion stage, inference ECGs/s, the derived
    time of one PTB-XL training epoch (17,418 records) per joint stage, and the peak allocated memory in GiB.
    """
    device = torch.device(device)
    module = paper_module()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": batch,
        "precision": "bf16-mixed",
    }
    for stage in ("joint_rhythm", "joint_morphology", "joint_global", "fusion"):
        timing = time_training_step(module, stage, batch, steps, device, bf16=True)
        result[f"train_{stage}_samples_per_s"] = timing["samples_per_s"]
        if stage.startswith("joint"):
            result[f"epoch_{stage}_s"] = PTBXL_TRAIN_RECORDS / timing["samples_per_s"]
    result["inference_ecgs_per_s"] = time_inference(module, max(batch, 128), steps, device, bf16=True)["ecgs_per_s"]
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    module.cpu()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="PTB-XL folder for the loader timing")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prepare", action="store_true", help="also time prepare_ptbxl against serial rdsamp")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    module = paper_module()
    report: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch,
        "parameters": sum(p.numel() for p in module.parameters()),
    }
    report["flops_per_ecg"] = flops_per_ecg(module)
    cpu = torch.device("cpu")
    for stage in ("joint_rhythm", "joint_morphology", "joint_global", "fusion"):
        report[f"cpu_train_{stage}"] = time_training_step(module, stage, args.batch, args.steps, cpu)
    report["cpu_inference"] = time_inference(module, args.batch, args.steps, cpu)
    fastest = min(report[f"cpu_train_{s}"]["step_s"] for s in ("joint_rhythm", "joint_morphology", "joint_global"))
    report["loader_vs_step"] = loader_vs_step(args.data, fastest, args.batch, args.workers)
    if args.prepare:
        report["prepare_vs_serial"] = prepare_vs_serial()
    if torch.cuda.is_available():
        report["cuda_bf16"] = gpu_benchmark("cuda", args.batch, steps=10)

    f = report["flops_per_ecg"]["inference_fused"]
    print(f"ProtoECGNet paper size: {report['parameters']:,} parameters, {f / 1e9:.2f} GFLOP per ECG (inference)")
    for stage in ("joint_rhythm", "joint_morphology", "joint_global", "fusion"):
        t = report[f"cpu_train_{stage}"]
        print(
            f"CPU train {stage:<17} {t['samples_per_s']:8.1f} samples/s  ({t['step_s']:.3f} s/step, batch {args.batch})"
        )
    inf = report["cpu_inference"]
    print(f"CPU inference (fused)      {inf['ecgs_per_s']:8.1f} ECGs/s   ({f * inf['ecgs_per_s'] / 1e9:.1f} GFLOP/s)")
    lv = report["loader_vs_step"]
    print(
        f"loader {lv['loader_batch_s'] * 1e3:.1f} ms/batch vs fastest step {lv['step_s'] * 1e3:.0f} ms: "
        f"{100 * lv['loader_share_of_step']:.1f}% of a step ({lv['workers']} workers)"
    )
    if "prepare_vs_serial" in report:
        pv = report["prepare_vs_serial"]
        print(
            f"prepare {pv['prepare_s']:.2f} s vs serial wfdb.rdsamp {pv['serial_rdsamp_s']:.2f} s for "
            f"{pv['records']} records: {pv['ratio']:.1f}x"
        )
    if "cuda_bf16" in report:
        print("CUDA bf16:", json.dumps(report["cuda_bf16"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
