"""CPU threads for training on a shared machine."""

from __future__ import annotations

import os

import torch


def cap_cpu_threads() -> int:
    """Give torch no more threads than the cores other processes leave free (at least one); return the count.

    OpenMP threads spin at every barrier, so a thread whose core is busy with another process stalls all the
    others: on 2 cores busy with other work, 2 threads trained 8-10x slower than 1 thread. A user's
    ``OMP_NUM_THREADS`` or ``MEDML_NUM_THREADS`` wins.
    """
    chosen = os.environ.get("MEDML_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if chosen and chosen.isdigit() and int(chosen) > 0:
        threads = int(chosen)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
        threads = max(1, min(torch.get_num_threads(), cores - busy))
    torch.set_num_threads(threads)
    return threads
