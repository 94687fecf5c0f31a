"""PTB-XL prepare throughput: `prepare_ptbxl` against a serial `wfdb.rdsamp` loop over the same records.

Writes a synthetic PTB-XL (official layout, 100 Hz records) into a temporary folder, then times

* baseline: ``for record in records: wfdb.rdsamp(record)`` — reading only, one process;
* ``prepare_ptbxl(..., workers=1)``: layout check + read + 0.5 Hz high-pass + memory-mapped cache, one process;
* ``prepare_ptbxl(...)`` with its default workers (one per CPU);

and prints records/s for each and the ratios to the baseline. It also times one shuffled pass of a
``DataLoader(ECGDataset(...), batch_size=32, num_workers=0)`` over the cache (samples/s), the loading side of a
training step. Every timed step runs on files the generator has just
written (warm page cache) and each prepare builds a fresh cache. Usage::

    python benchmarks/ecg_prepare.py [--records 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import wfdb

from medml.data.ptbxl import PTBXL, ECGDataset, prepare_ptbxl
from medml.data.synthetic_ptbxl import write_synthetic_ptbxl


def _best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def run(n_records: int = 2000, repeats: int = 3, workdir: str | Path | None = None) -> dict[str, float]:
    """Time the three variants on ``n_records`` synthetic records; returns records/s and ratios."""
    tmp = Path(tempfile.mkdtemp(prefix="medml-ecg-prepare-", dir=workdir))
    try:
        started = time.perf_counter()
        root = write_synthetic_ptbxl(tmp / "ptb-xl", n_records=n_records, seed=0)
        generate_s = time.perf_counter() - started
        stems = [str(root / name) for name in pd.read_csv(root / "ptbxl_database.csv")["filename_lr"]]

        def serial_rdsamp() -> None:
            for stem in stems:
                wfdb.rdsamp(stem)

        def prepare(workers: int | None):
            def go() -> None:
                cache = tmp / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                prepare_ptbxl(root, cache_dir=cache, workers=workers, progress=False)

            return go

        serial_rdsamp()  # warm-up: imports and page cache
        baseline_s = _best_of(repeats, serial_rdsamp)
        one_s = _best_of(repeats, prepare(1))
        many_s = _best_of(repeats, prepare(None))
        dataset = ECGDataset(PTBXL(root, cache_dir=tmp / "cache"), range(n_records), label_set="all")
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, num_workers=0)

        def one_epoch() -> None:
            for _ in loader:
                pass

        loader_s = _best_of(repeats, one_epoch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "records": n_records,
        "cpus": os.cpu_count() or 1,
        "generate_s": generate_s,
        "rdsamp_serial_rec_per_s": n_records / baseline_s,
        "prepare_1_worker_rec_per_s": n_records / one_s,
        "prepare_default_rec_per_s": n_records / many_s,
        "ratio_1_worker": baseline_s / one_s,
        "ratio_default": baseline_s / many_s,
        "loader_samples_per_s": n_records / loader_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    r = run(args.records, args.repeats)
    print(
        f"synthetic PTB-XL: {r['records']} records at 100 Hz (generated in {r['generate_s']:.1f} s), "
        f"{r['cpus']} CPUs, best of {args.repeats}"
    )
    print(f"serial wfdb.rdsamp loop (read only)     {r['rdsamp_serial_rec_per_s']:8.0f} records/s   1.00x")
    print(
        f"prepare_ptbxl, 1 worker (read+filter)   {r['prepare_1_worker_rec_per_s']:8.0f} records/s   "
        f"{r['ratio_1_worker']:.2f}x"
    )
    print(
        f"prepare_ptbxl, default workers          {r['prepare_default_rec_per_s']:8.0f} records/s   "
        f"{r['ratio_default']:.2f}x"
    )
    print(f"DataLoader over the cache (batch 32, 0 workers, shuffled)  {r['loader_samples_per_s']:8.0f} samples/s")


if __name__ == "__main__":
    main()
