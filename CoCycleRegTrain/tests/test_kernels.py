"""The compiled kernels' loader (the kernels themselves are tested through
cocyclereg.geometry.dense, cocyclereg.geometry.jacobian and cocyclereg.inference.refine against ITK,
numpy and autograd)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cocyclereg.geometry import kernels


def _printed_by_new_process(code: str) -> list[str]:
    """What ``code`` prints, run by a new Python process, split into words."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()


def test_the_kernels_load_once_per_process_in_the_background():
    first = kernels.load_in_background()
    assert kernels.load_in_background() is first
    assert first.result(timeout=300) is None


def test_loading_does_not_hold_up_the_caller():
    # In a new process: the call returns while the loading thread still runs.
    code = (
        "from cocyclereg.geometry import kernels\n"
        "loading = kernels.load_in_background()\n"
        "print(loading.done())\n"
        "loading.result()\n"
        "print(loading.done())\n"
    )
    printed = _printed_by_new_process(code)
    assert printed == ["False", "True"]


def test_kernels_use_and_keep_pytorchs_thread_count():
    # In a new process, so the OpenMP runtime starts from its defaults: numba's OpenMP layer
    # shares it with PyTorch and, unchecked, raised PyTorch's count to every core.
    code = (
        "import numba, numpy as np, torch\n"
        "from cocyclereg.geometry.grid import Grid\n"
        "from cocyclereg.geometry.jacobian import jacobian_determinant_array\n"
        "grid = Grid((4, 5, 6), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))\n"
        "for threads in (1, 2, 1):\n"
        "    torch.set_num_threads(threads)\n"
        "    torch.nn.functional.conv3d(torch.rand(1, 1, 9, 9, 9), torch.rand(1, 1, 3, 3, 3))\n"
        "    jacobian_determinant_array(np.zeros((6, 5, 4, 3)), grid)\n"
        "    print(torch.get_num_threads(), numba.get_num_threads())\n"
    )
    printed = _printed_by_new_process(code)
    cores = min(2, __import__("numba").config.NUMBA_NUM_THREADS)
    assert printed == ["1", "1", "2", str(cores), "1", "1"]


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_idle_openmp_threads_sleep_unless_the_user_says_otherwise(given):
    """Importing cocyclereg sets OMP_WAIT_POLICY=PASSIVE for the OpenMP runtime torch loads
    after it, and keeps a value the user set."""
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        environment["OMP_WAIT_POLICY"] = given
    script = "import cocyclereg, os, torch; print(os.environ['OMP_WAIT_POLICY'])"
    printed = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    assert printed == (given or "PASSIVE")
