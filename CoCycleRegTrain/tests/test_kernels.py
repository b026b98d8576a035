"""The compiled kernels' loader (the kernels themselves are tested through cocyclereg.dense,
cocyclereg.jacobian and cocyclereg.refine against ITK, numpy and autograd)."""

from __future__ import annotations

import subprocess
import sys

from cocyclereg import kernels


def test_the_kernels_load_once_per_process_in_the_background():
    first = kernels.load_in_background()
    assert kernels.load_in_background() is first
    assert first.result(timeout=300) is None


def test_loading_does_not_hold_up_the_caller():
    # In a new process: the call returns while the loading thread still runs.
    code = (
        "from cocyclereg import kernels\n"
        "loading = kernels.load_in_background()\n"
        "print(loading.done())\n"
        "loading.result()\n"
        "print(loading.done())\n"
    )
    printed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert printed == ["False", "True"]
