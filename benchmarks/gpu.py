"""One short run on a lent GPU that measures every registered pipeline: paper-size training step and inference
in bf16, throughput and peak memory. Each pipeline's own benchmark module (``benchmarks/<name>.py``) provides
``gpu_benchmark(device) -> dict``; this script runs them all and writes ``benchmarks/gpu_results.json``.

    python benchmarks/gpu.py                 # every pipeline on cuda:0
    python benchmarks/gpu.py ecg --device cuda:1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from medml.engine.record import package_versions  # noqa: E402
from medml.registry import list_pipelines  # noqa: E402


def load_benchmark(name: str):
    path = HERE / f"{name}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "gpu_benchmark", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="pipelines (default: all registered)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--out", type=Path, default=HERE / "gpu_results.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this script measures GPUs (use each benchmarks/<name>.py for CPU numbers)")
        return 1
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "versions": package_versions(),
        "pipelines": {},
    }
    for name in args.names or list_pipelines():
        bench = load_benchmark(name)
        if bench is None:
            results["pipelines"][name] = {"error": f"benchmarks/{name}.py has no gpu_benchmark(device)"}
            continue
        start = time.perf_counter()
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            results["pipelines"][name] = bench(device)
        except Exception:  # noqa: BLE001 - measure the others even if one fails
            results["pipelines"][name] = {"error": traceback.format_exc(limit=3)}
        results["pipelines"][name]["wall_s"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(results["pipelines"][name], indent=2))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
