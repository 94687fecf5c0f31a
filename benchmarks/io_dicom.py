"""Time loading a 300-slice 512x512 CT series: medml vs SimpleITK ImageSeriesReader vs MONAI PydicomReader.

Usage::

    python benchmarks/io_dicom.py [--slices 300] [--size 512] [--repeats 3] [--folder DIR]

The series is generated once (uncompressed, 12-bit CT with rescale intercept -1024, extension-less file names)
and each reader runs in its own fresh process, so peak memory is that reader's alone: the peak resident set size
during the load minus the resident size just before it. Times are the best of ``--repeats`` loads with a warm
file cache. The script checks that all three give identical voxel values and geometry (MONAI's array is
transposed to (z, y, x) and its RAS affine compared with medml's), then prints times, ratios, memory and the
1-minute load average before and after (the times are only comparable at similar load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.memory import peak_mb, reset_peak, rss_mb  # noqa: E402


def load(method: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array in (z, y, x), RAS affine) read by one method."""
    if method == "medml":
        from medml.io import read_volume

        volume = read_volume(folder)
        return volume.array, volume.affine
    if method == "simpleitk":
        import SimpleITK as sitk

        from medml.io.types import Volume

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image)
        geometry = Volume(array, image.GetSpacing(), image.GetOrigin(), np.reshape(image.GetDirection(), (3, 3)))
        return array, geometry.affine
    if method == "monai":
        from monai.data import PydicomReader
        from monai.transforms import LoadImage

        image = LoadImage(reader=PydicomReader(), image_only=True)(str(folder))
        return np.asarray(image).transpose(2, 1, 0), np.asarray(image.affine, float)
    raise ValueError(method)


def worker(method: str, folder: Path, repeats: int, out: Path) -> None:
    # import everything the method needs before measuring memory
    if method == "medml":
        import medml.io  # noqa: F401
    elif method == "simpleitk":
        import SimpleITK  # noqa: F401
    else:
        import monai.data  # noqa: F401
        import monai.transforms  # noqa: F401
    reset_peak()
    before = rss_mb()
    peak_before = before
    times = []
    array = affine = None
    for _ in range(repeats):
        del array
        start = time.perf_counter()
        array, affine = load(method, folder)
        times.append(time.perf_counter() - start)
        if len(times) == 1:
            peak_first = peak_mb()
    np.save(out.with_suffix(".npy"), array)
    result = {
        "method": method,
        "best_s": min(times),
        "times_s": times,
        "peak_extra_mb": max(peak_first, peak_before) - before,
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "affine": affine.tolist(),
    }
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None, help="reuse (or create) the series here")
    parser.add_argument("--worker", choices=["medml", "simpleitk", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.folder, args.repeats, args.out)
        return

    from medml.io.synthetic import write_ct_series

    folder = args.folder or Path(tempfile.gettempdir()) / f"medml_bench_ct_{args.slices}x{args.size}"
    if not folder.is_dir() or len(list(folder.iterdir())) != args.slices:
        print(f"writing {args.slices} slices of {args.size}x{args.size} to {folder} ...", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        write_ct_series(folder, shape=(args.slices, args.size, args.size), spacing=(0.7, 0.7, 1.0), seed=0)
    load_before = os.getloadavg()[0]  # other jobs on the machine inflate and scatter the times
    results = {}
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("medml", "simpleitk", "monai"):
            out = Path(tmp) / f"{method}.json"
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    method,
                    "--folder",
                    str(folder),
                    "--repeats",
                    str(args.repeats),
                    "--out",
                    str(out),
                ],
                check=True,
            )
            results[method] = json.loads(out.read_text())
            arrays[method] = np.load(out.with_suffix(".npy"))
    volume_mb = arrays["medml"].nbytes / 2**20
    print(
        f"\nseries: {args.slices} x {args.size} x {args.size}, medml volume {volume_mb:.0f} MiB "
        f"({arrays['medml'].dtype}); best of {args.repeats}, warm cache, {os.cpu_count()} CPUs, "
        f"load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after"
    )
    print(f"{'reader':<10} {'time s':>8} {'vs medml':>9} {'peak extra MiB':>15} {'x volume':>9}  same values/geometry")
    for method, result in results.items():
        same = bool(np.array_equal(arrays[method].astype(np.float64), arrays["medml"].astype(np.float64)))
        geometry = bool(np.allclose(result["affine"], results["medml"]["affine"], atol=1e-4))
        print(
            f"{method:<10} {result['best_s']:>8.3f} {result['best_s'] / results['medml']['best_s']:>8.2f}x "
            f"{result['peak_extra_mb']:>15.0f} {result['peak_extra_mb'] / volume_mb:>8.2f}x  {same}/{geometry}"
        )
    speedup = results["simpleitk"]["best_s"] / results["medml"]["best_s"]
    print(
        f"\nmedml is {speedup:.2f}x SimpleITK and "
        f"{results['monai']['best_s'] / results['medml']['best_s']:.2f}x MONAI PydicomReader; "
        f"peak memory {results['medml']['peak_extra_mb'] / volume_mb:.2f}x the volume"
    )


if __name__ == "__main__":
    main()
