"""Training threads never outnumber the free cores: on a busy machine, spinning OpenMP threads stall every step."""

import os

import pytest
import torch

from medml.utils.threads import cap_cpu_threads


@pytest.fixture()
def two_cores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MEDML_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    torch.set_num_threads(2)
    yield monkeypatch
    torch.set_num_threads(before)


@pytest.mark.parametrize(("load", "threads"), [(0.1, 2), (1.2, 1), (6.0, 1)])
def test_threads_fit_the_free_cores(two_cores, load, threads):
    two_cores.setattr(os, "getloadavg", lambda: (load, load, load))
    assert cap_cpu_threads() == threads == torch.get_num_threads()


def test_a_chosen_thread_count_wins(two_cores):
    two_cores.setattr(os, "getloadavg", lambda: (6.0, 6.0, 6.0))
    two_cores.setenv("MEDML_NUM_THREADS", "2")
    assert cap_cpu_threads() == 2 == torch.get_num_threads()
