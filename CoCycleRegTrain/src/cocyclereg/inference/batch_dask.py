"""Running a batch's pairs on a Dask distributed cluster (``pip install
"cocyclereg[distributed]"``).

Each pair is one task of :func:`cocyclereg.inference.batch.register_pair`. A worker plugin prepares
every worker process once (:func:`cocyclereg.inference.batch.start_worker`: its share of the host's
cores, the compiled kernels loaded), and each process keeps the models it has loaded, so a worker
loads a model once however many pairs it runs. When a worker dies, the scheduler runs its pairs
again on another; since a pair's folder appears only by renaming a complete one, the dead worker's
half-done pair leaves nothing behind. Paths must be the same on every worker (a shared file
system).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from urllib.parse import urlparse

from distributed import Client, WorkerPlugin, as_completed

from cocyclereg.errors import InputError
from cocyclereg.inference.batch import (
    PairResult,
    PairTask,
    available_cores,
    failed,
    register_pair,
    start_worker,
)


def _host(address: str) -> str:
    return urlparse(address).hostname or address


class RegistrationWorkerPlugin(WorkerPlugin):
    """Splits a host's cores between its worker processes (as the scheduler counted them when
    the batch started; a host not known then gets all its cores) and loads the compiled
    kernels, once per worker process, before its first pair."""

    name = "cocyclereg-registration"

    def __init__(self, processes_per_host: dict[str, int]) -> None:
        self.processes_per_host = processes_per_host

    def setup(self, worker) -> None:
        processes = self.processes_per_host.get(_host(worker.address), 1)
        start_worker(max(1, available_cores() // processes))


def dask_results(tasks: list[PairTask], scheduler: str) -> Iterator[PairResult]:
    """Run ``tasks`` on the Dask cluster at ``scheduler`` (``tcp://host:port``) and yield
    results as they finish. A task Dask gave up on (its workers kept dying) is ``failed``."""
    try:
        client = Client(scheduler, timeout=30)
    except (OSError, TimeoutError) as error:
        raise InputError(f"Cannot reach the Dask scheduler at {scheduler}: {error}") from error
    with client:
        addresses = client.scheduler_info(n_workers=-1)["workers"]
        plugin = RegistrationWorkerPlugin(dict(Counter(_host(a) for a in addresses)))
        client.register_plugin(plugin)
        batch = secrets.token_hex(4)
        futures = {
            client.submit(
                register_pair, task, key=f"cocyclereg-{batch}-{task.pair.id}", pure=False
            ): task
            for task in tasks
        }
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as error:  # e.g. KilledWorker: the pair's workers kept dying
                yield failed(futures[future], error)
