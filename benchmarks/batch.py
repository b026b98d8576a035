"""Pairs per minute: ``cocyclereg register`` in a loop against ``cocyclereg batch``.

Registers the same pair ``--pairs`` times (default 20) in each way, on this machine, with the
bundled model's recommended settings, and prints the wall seconds per pair and pairs per minute
of each, with each one's speed-up over the loop:

* ``register loop``: one ``cocyclereg register`` process per pair (interpreter start-up, torch
  import, kernel and model loading every time), writing the same outputs as a batch pair.
* ``batch, 1 worker`` and ``batch, 2 workers``: one ``cocyclereg batch`` process over a
  manifest listing the pair ``--pairs`` times (``--workers``: the cores split between them).
* ``batch, Dask``: the same through ``--scheduler`` to a Dask ``LocalCluster`` of two
  single-threaded worker processes started beforehand (its start-up not counted); skipped
  when Dask is not installed.

``--case demo`` is the bundled demo pair (75x92x76 voxels of 2 mm); ``--case full`` is
the development subject TCGA-FG-6692 T1 -> T2 from ``../shared/data`` (240x240x155, 1 mm).

    python benchmarks/batch.py --case demo --pairs 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("COCYCLEREG_DATA", REPOSITORY.parent / "shared" / "data"))


def _pair(case: str) -> tuple[Path, Path]:
    if case == "demo":
        from cocyclereg.resources import demo_dir

        return demo_dir() / "fixed_t2.nii.gz", demo_dir() / "moving_t1.nii.gz"
    subject = DATA / "brain-t1t2" / "TCGA-FG-6692"
    return subject / "t2.nii.gz", subject / "t1.nii.gz"


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["demo", "full"], default="demo")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument(
        "--skip", nargs="*", default=[], help="ways not to run: loop, batch1, batch2, dask"
    )
    args = parser.parse_args()
    fixed, moving = _pair(args.case)
    program = [sys.executable, "-m", "cocyclereg"]
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        manifest = folder / "pairs.csv"
        rows = [f"p{i:03d},{fixed},{moving}" for i in range(args.pairs)]
        manifest.write_text("id,fixed,moving\n" + "\n".join(rows) + "\n", encoding="utf-8")
        # Compile the kernels if needed, and warm the file cache, before timing anything.
        warm_up = folder / "one.csv"
        warm_up.write_text("id,fixed,moving\n" + rows[0] + "\n", encoding="utf-8")
        _timed([*program, "batch", "--manifest", str(warm_up), "--output", str(folder / "w")])

        if "loop" not in args.skip:
            loop = folder / "loop"
            loop.mkdir()
            started = time.perf_counter()
            for i in range(args.pairs):
                outputs = ["--transform", str(loop / f"{i}.h5")]
                outputs += ["--inverse-transform", str(loop / f"{i}-inverse.h5")]
                outputs += ["--warped", str(loop / f"{i}.nii.gz")]
                outputs += ["--jacobian", str(loop / f"{i}-j.nii.gz")]
                outputs += ["--summary", str(loop / f"{i}.json")]
                _timed(
                    [*program, "register", "--fixed", str(fixed), "--moving", str(moving), *outputs]
                )
            seconds["register loop"] = time.perf_counter() - started
        for workers in (1, 2):
            if f"batch{workers}" in args.skip:
                continue
            output = str(folder / f"batch{workers}")
            command = ["batch", "--manifest", str(manifest), "--output", output]
            seconds[f"batch, {workers} worker(s)"] = _timed(
                [*program, *command, "--workers", str(workers)]
            )
        if "dask" not in args.skip:
            try:
                from distributed import LocalCluster
            except ImportError:
                print("Dask not installed: no Dask run")
            else:
                with LocalCluster(
                    n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
                ) as cluster:
                    output = str(folder / "dask")
                    command = ["batch", "--manifest", str(manifest), "--output", output]
                    command += ["--scheduler", cluster.scheduler_address]
                    seconds["batch, Dask (2 workers)"] = _timed([*program, *command])

    loop = seconds.get("register loop")
    print(f"{args.pairs} registrations of the {args.case} pair, {os.cpu_count()} CPU cores")
    print(f"{'way':<26s} {'s/pair':>7s} {'pairs/min':>9s} {'x loop':>7s}")
    for way, total in seconds.items():
        per_pair = total / args.pairs
        ratio = f"{loop / total:7.2f}" if loop else "      -"
        print(f"{way:<26s} {per_pair:7.2f} {60 / per_pair:9.1f} {ratio}")


if __name__ == "__main__":
    main()
