"""Registering many pairs: one output folder per pair, resumable.

The pairs come from a manifest (:mod:`cocyclereg.inference.manifest`). Dice and HD95 are scored for
each moving labelmap that has a fixed counterpart.

Each pair's outputs go to ``OUTPUT/<id>/`` under the names ``cocyclereg demo`` uses
(``transform.h5``, ``inverse-transform.h5``, ``warped_<moving modality>.nii.gz``,
``warped_<labels name>.nii.gz``, ``jacobian.nii.gz``, ``summary.json``): written into a hidden
sibling folder and renamed into place when complete, so a pair folder is complete or absent.
``summary.json`` records the settings that made it (inputs with their sizes and modification
times, the model file's SHA-256, modalities, pre-alignment, refinement, network); a later run
skips a pair whose folder records the same settings and registers it again otherwise.

Work runs in one process (``workers=1``: the model and the compiled kernels are loaded once),
in a pool of ``workers`` processes on this machine (the CPU cores split between them), or on a
Dask distributed cluster (``scheduler``; :mod:`cocyclereg.inference.batch_dask`). A pair that fails
is reported with its error and the others go on.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import math
import multiprocessing
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cocyclereg.errors import CoCycleRegError, GeometryError, InputError
from cocyclereg.inference.manifest import Pair, label_name, read_manifest

SUMMARY_NAME = "summary.json"
RESULT_COLUMNS = (
    "id",
    "status",
    "seconds",
    "folding_voxels",
    "folding_percent",
    "dice",
    "hd95_mm",
    "error",
    "fixed",
    "moving",
)
_PARTIAL_MARK, _REPLACED_MARK = ".partial-", ".replaced-"
LOCK_NAME = ".cocyclereg-batch.lock"
# New process pools after worker processes died (killed, out of memory), before the pairs left
# are reported failed.
POOL_RESTARTS = 2


@dataclass(frozen=True)
class RegistrationSettings:
    """The options of ``cocyclereg register`` that apply to every pair of a batch.

    ``model`` is a model file or a bundled model's name (``None``: the default bundled model);
    the rest are :func:`cocyclereg.inference.register.register`'s arguments of the same names
    (``network`` is its ``use_network``; ``refine_steps``, ``network``, ``mirror_average``,
    ``fine_steps`` and ``fine_spacing_mm`` ``None``: the model's recommendation). ``device`` is
    not recorded with a pair's outputs: a pair done on the CPU is not redone on a GPU.
    """

    model: str | Path | None = None
    fixed_modality: str | None = None
    moving_modality: str | None = None
    affine: bool = True
    prealignment: str = "rigid"
    refine_steps: int | None = None
    network: bool | None = None
    mirror_average: bool | None = None
    fine_steps: int | None = None
    fine_spacing_mm: float | None = None
    check_modality: bool = True
    device: str = "auto"


@dataclass
class PairResult:
    """How one pair ended: ``status`` is ``registered`` (this run), ``skipped`` (complete from
    an earlier run with the same settings; the numbers are that run's), ``failed`` (``error``
    says why) or ``pending`` (not finished when the batch stopped). ``dice`` and ``hd95_mm``
    hold the mean over labels of each labelmap scored (manifest order)."""

    id: str
    status: str
    fixed: str = ""
    moving: str = ""
    seconds: float | None = None
    folding_voxels: int | None = None
    folding_percent: float | None = None
    dice: tuple[float, ...] = ()
    hd95_mm: tuple[float | None, ...] = ()
    error: str = ""

    def as_row(self) -> dict[str, str]:
        """The ``results.csv`` row: numbers as text, lists ``;``-separated, missing empty."""

        def text(value, digits: int) -> str:
            return "" if value is None else f"{value:.{digits}f}"

        return {
            "id": self.id,
            "status": self.status,
            "seconds": text(self.seconds, 2),
            "folding_voxels": "" if self.folding_voxels is None else str(self.folding_voxels),
            "folding_percent": text(self.folding_percent, 4),
            "dice": ";".join(text(v, 4) for v in self.dice),
            "hd95_mm": ";".join(text(v, 2) for v in self.hd95_mm),
            "error": self.error,
            "fixed": self.fixed,
            "moving": self.moving,
        }


@dataclass(frozen=True)
class PairTask:
    """Everything a worker needs for one pair (picklable): the pair with the batch's settings
    applied, the resolved model file, the settings record, and the batch's output folder."""

    pair: Pair
    settings: RegistrationSettings
    model: Path
    record: dict = field(hash=False)
    output: Path


# -- planning: which pairs are done ----------------------------------------------------------


def _file_identity(path: Path) -> list:
    """``[path, size in bytes, modification time in ns]``; sizes and times None if missing."""
    try:
        status = path.stat()
        return [str(path), status.st_size, status.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


@functools.lru_cache(maxsize=64)
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Settings that records written before 0.5.0 lack: left out while they hold their default
# (the model's recommendation), so those records still match and their pairs are not redone.
_ADDED_IN_0_5 = ("mirror_average",)


# The settings whose ``None`` means the model file's recommendation, and where it records it.
_RECOMMENDED = {
    "refine_steps": "steps",
    "network": "use_network",
    "mirror_average": "mirror_average",
    "fine_steps": "fine_steps",
    "fine_spacing_mm": "fine_spacing_mm",
}


@functools.lru_cache(maxsize=64)
def _recommendation(model: Path, modified_ns: int):
    """The refinement ``model`` recommends (read once per file version, not once per pair)."""
    from cocyclereg.model_file import read_model_info

    return read_model_info(model).refinement


def _as_recommended(settings: RegistrationSettings, model: Path) -> RegistrationSettings:
    """``settings`` with every value that equals the model's recommendation set to ``None``
    (which means it): a batch rerun with the default spelt out is the same batch."""
    try:
        recommended = _recommendation(model.resolve(), model.stat().st_mtime_ns)
    except (CoCycleRegError, OSError):  # not a readable model: its pairs fail on their own
        return settings
    same = {
        name: None
        for name, field_name in _RECOMMENDED.items()
        if getattr(settings, name) is not None
        and getattr(settings, name) == getattr(recommended, field_name)
    }
    return replace(settings, **same)


def settings_record(pair: Pair, settings: RegistrationSettings, model: Path) -> dict:
    """What a pair's outputs depend on, as recorded in its ``summary.json``: every input file
    (path, size, modification time), the model file (path, SHA-256), and every setting of
    ``settings`` except the device, each setting that equals the model's recommendation as
    ``None`` (and ``mirror_average`` left out while ``None``). Equal records: the outputs would
    be the same."""
    settings = _as_recommended(settings, model) if model.is_file() else settings
    inputs = [pair.fixed, pair.moving, *pair.labels, *pair.fixed_labels]
    return {
        "fixed": str(pair.fixed),
        "moving": str(pair.moving),
        "labels": [str(p) for p in pair.labels],
        "fixed_labels": [str(p) for p in pair.fixed_labels],
        "files": [_file_identity(p) for p in inputs],
        "model": str(model),
        "model_sha256": _sha256(model.resolve()) if model.is_file() else None,
        **{
            k: v
            for k, v in asdict(settings).items()
            if k not in ("model", "device") and not (k in _ADDED_IN_0_5 and v is None)
        },
    }


def _pair_settings(pair: Pair, settings: RegistrationSettings) -> RegistrationSettings:
    """The batch's settings with the row's overrides."""
    overrides = {
        name: getattr(pair, name)
        for name in ("model", "fixed_modality", "moving_modality")
        if getattr(pair, name) is not None
    }
    return replace(settings, **overrides)


def _recorded(folder: Path) -> dict | None:
    """The ``batch`` entry of a pair folder's summary, if the folder is complete."""
    try:
        summary = json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
        entry = summary["batch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all((folder / name).is_file() for name in entry.get("files", [])):
        return None
    return entry


def _is_pair_folder(folder: Path) -> bool:
    """Whether ``folder`` is a pair folder this command wrote (its summary has a ``batch``
    entry), complete or not."""
    try:
        summary = json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "batch" in summary


def _not_replaceable(folder: Path) -> str | None:
    """Why a result may not replace ``folder`` (``None``: absent, or an earlier pair folder of
    this command, the only kind a batch replaces)."""
    if not folder.exists() and not folder.is_symlink():
        return None
    if folder.is_dir() and not folder.is_symlink() and _is_pair_folder(folder):
        return None
    return (
        f"{folder} exists and is not a pair folder written by cocyclereg batch; "
        "it was left as it is"
    )


def _folder_refusal(pair: Pair, folder: Path) -> str | None:
    """Why the pair's output ``folder`` may not be written (``None``: it may): it holds
    something other than an earlier result of this command, or one of the pair's inputs,
    which replacing the folder would delete."""
    refusal = _not_replaceable(folder)
    if refusal is not None:
        return refusal + ": move it, rename the pair or choose another --output"
    if not folder.exists():
        return None
    inside = folder.resolve()
    for path in (pair.fixed, pair.moving, *pair.labels, *pair.fixed_labels):
        if Path(path).resolve().is_relative_to(inside):
            return (
                f"the input {path} lies in the pair's output folder {folder}, which a new "
                "result replaces: move the input or choose another --output"
            )
    return None


def plan(
    pairs: Sequence[Pair], output: Path, settings: RegistrationSettings, force: bool = False
) -> tuple[list[PairTask], list[PairResult]]:
    """Split ``pairs`` into tasks to run and results known now: pairs already complete
    (``skipped``), rows naming an unknown bundled model and pairs whose output folder holds
    something a result must not replace (``failed``). A pair is complete when
    ``output/<id>/summary.json`` records the same settings (:func:`settings_record`) and
    every file it lists is there; with ``force`` none is."""
    from cocyclereg.resources import resolve_model

    tasks, done = [], []
    for pair in pairs:
        refusal = _folder_refusal(pair, output / pair.id)
        if refusal is not None:
            failure = PairResult(pair.id, "failed", str(pair.fixed), str(pair.moving))
            done.append(replace(failure, error=refusal))
            continue
        effective = _pair_settings(pair, settings)
        try:
            model = resolve_model(effective.model)
        except CoCycleRegError as error:  # a row's unknown bundled model name
            done.append(
                PairResult(pair.id, "failed", str(pair.fixed), str(pair.moving), error=str(error))
            )
            continue
        record = settings_record(pair, effective, model)
        entry = None if force else _recorded(output / pair.id)
        if entry is not None and entry.get("settings") == record:
            result = PairResult(**{**entry["result"], "status": "skipped"})
            result.dice, result.hd95_mm = tuple(result.dice), tuple(result.hd95_mm)
            done.append(result)
        else:
            tasks.append(PairTask(pair, effective, model, record, output))
    return tasks, done


# -- one pair, in a worker --------------------------------------------------------------------

# One registration at a time per process: the compiled kernels' threading layer cannot run two
# parallel regions at once (a Dask worker with several threads would try).
_ONE_AT_A_TIME = threading.Lock()
# Threads for torch (and the kernels) in this worker process; None: leave torch's setting.
_worker_threads: int | None = None


def start_worker(threads: int | None) -> None:
    """Prepare a worker process: ``threads`` threads for torch, ITK and the kernels, and the
    kernels loaded (compiled the first time after installation)."""
    global _worker_threads
    import SimpleITK as sitk
    import torch

    from cocyclereg.geometry import kernels

    _worker_threads = threads
    if threads is not None:
        torch.set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    kernels.load_in_background().result()


@functools.lru_cache(maxsize=4)
def _loaded_model(model: Path, sha256: str | None, device: str):
    """The network and its description, loaded once per process, model file and device
    (``sha256`` keys the cache so a replaced file is loaded again)."""
    from cocyclereg.device import resolve_device
    from cocyclereg.model_file import load_model

    return load_model(model, resolve_device(device))


def _moving_modality(info, fixed_modality: str | None, moving_modality: str | None) -> str:
    """The moving image's modality name, as :func:`cocyclereg.inference.register.register` chooses
    it."""
    if moving_modality is not None:
        return moving_modality
    if fixed_modality is not None:
        return info.x_modality if fixed_modality == info.y_modality else info.y_modality
    return info.x_modality


def _scores(result, fixed_label_paths: Sequence[Path]):
    """Dice and HD95 of each warped labelmap of ``result`` against its fixed labelmap."""
    import SimpleITK as sitk

    from cocyclereg.evaluation.evaluate import Evaluation
    from cocyclereg.evaluation.metrics import dice, hd95
    from cocyclereg.geometry.grid import Grid
    from cocyclereg.io import read_labels

    fixed_grid = Grid.from_image(result.transform)
    scores = []
    for path, warped in zip(fixed_label_paths, result.warped_labels, strict=True):
        fixed = read_labels(path)
        if not Grid.from_image(fixed).is_close(fixed_grid, 1e-3):
            raise GeometryError(f"{path} is not on the fixed image's grid")
        fixed_array, warped_array = sitk.GetArrayFromImage(fixed), sitk.GetArrayFromImage(warped)
        per_label = dice(fixed_array, warped_array)
        spacing_dhw = tuple(reversed(fixed_grid.spacing))
        distances = {k: hd95(fixed_array, warped_array, spacing_dhw, k) for k in per_label}
        scores.append(Evaluation(per_label, distances, result.folding))
    return scores


def _write_pair(task: PairTask, result, scores, started: float) -> PairResult:
    """Write the pair's folder (a hidden sibling first, renamed when complete); its result."""
    from cocyclereg.inference.outputs import registration_summary, write_registration_outputs

    pair, output, settings = task.pair, task.output, task.settings
    modality = _moving_modality(result.model, settings.fixed_modality, settings.moving_modality)
    warped_name = f"warped_{modality}.nii.gz"
    label_names = [f"warped_{label_name(p)}.nii.gz" for p in pair.labels]
    if warped_name in label_names:
        raise InputError(f"a labelmap would be written as {warped_name}: rename it")
    files = ["transform.h5", "inverse-transform.h5", warped_name, "jacobian.nii.gz"]
    files += [*label_names, SUMMARY_NAME]
    outcome = PairResult(
        pair.id,
        "registered",
        str(pair.fixed),
        str(pair.moving),
        folding_voxels=result.folding.folding_voxels,
        folding_percent=result.folding.folding_percent,
        dice=tuple(s.mean_dice for s in scores),
        hd95_mm=tuple(s.as_dict()["mean_hd95_mm"] for s in scores),  # None: no label had one
    )

    def write_summary(path: Path) -> None:
        document = registration_summary(result, pair.fixed, pair.moving, task.model)
        document["id"] = pair.id
        document["labels"] = {
            label_name(moving): {
                "moving": str(moving),
                "fixed": str(pair.fixed_labels[i]) if scores else None,
                "after": scores[i].as_dict() if scores else None,
            }
            for i, moving in enumerate(pair.labels)
        }
        outcome.seconds = time.perf_counter() - started
        document["batch"] = {"settings": task.record, "files": files, "result": asdict(outcome)}
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")

    staging = output / f".{pair.id}{_PARTIAL_MARK}{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        write_registration_outputs(
            result,
            staging / files[0],
            inverse_transform=staging / files[1],
            warped=staging / files[2],
            jacobian=staging / files[3],
            warped_labels=[staging / name for name in label_names],
            extra=[(staging / SUMMARY_NAME, write_summary)],
        )
        _move_into_place(staging, output / pair.id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outcome


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename the complete ``staging`` folder to ``folder``; an older ``folder`` is moved aside
    first and removed after, so ``folder`` is always a complete pair folder or absent. Only an
    earlier pair folder of this command is ever replaced (checked again here: the folder may
    have appeared since the batch was planned)."""
    refusal = _not_replaceable(folder)
    if refusal is not None:
        raise InputError(refusal)
    if folder.exists():
        aside = folder.with_name(f".{folder.name}{_REPLACED_MARK}{secrets.token_hex(4)}")
        os.replace(folder, aside)
        os.replace(staging, folder)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging, folder)


def register_pair(task: PairTask) -> PairResult:
    """Register one pair and write its folder; never raises for a bad pair: the result is
    ``failed`` with the error (``KeyboardInterrupt`` and ``SystemExit`` still stop it)."""
    pair, settings = task.pair, task.settings
    with _ONE_AT_A_TIME:
        started = time.perf_counter()
        try:
            from cocyclereg.inference.register import register

            if _worker_threads is not None:
                import torch

                torch.set_num_threads(_worker_threads)  # per thread: Dask runs tasks in threads
            model = _loaded_model(task.model, task.record["model_sha256"], settings.device)
            result = register(
                pair.fixed,
                pair.moving,
                model,
                fixed_modality=settings.fixed_modality,
                moving_modality=settings.moving_modality,
                affine=settings.affine,
                prealignment=settings.prealignment,
                device=settings.device,
                labels=list(pair.labels),
                refine_steps=settings.refine_steps,
                use_network=settings.network,
                mirror_average=settings.mirror_average,
                fine_steps=settings.fine_steps,
                fine_spacing_mm=settings.fine_spacing_mm,
                check_modality=settings.check_modality,
            )
            scores = _scores(result, pair.fixed_labels)
            return _write_pair(task, result, scores, started)
        except Exception as error:  # every failure of one pair is that pair's result
            return failed(task, error, time.perf_counter() - started)


def failed(task: PairTask, error: BaseException | str, seconds: float | None = None):
    """The ``failed`` result of ``task`` with ``error`` as one line of text."""
    if isinstance(error, CoCycleRegError | str):
        message = str(error)
    else:
        message = f"{type(error).__name__}: {error}"
    return PairResult(
        task.pair.id,
        "failed",
        str(task.pair.fixed),
        str(task.pair.moving),
        seconds=seconds,
        error=" ".join(message.split()),
    )


# -- running a batch ---------------------------------------------------------------------------


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _local_results(tasks: list[PairTask], workers: int) -> Iterator[PairResult]:
    """Results of ``tasks`` run in this process (``workers`` 1) or a pool of ``workers``
    processes with the cores split between them, each loading the model once. When a worker
    process dies (killed, out of memory) the pairs not finished go to a new pool; after
    :data:`POOL_RESTARTS` such deaths they are reported failed (a rerun retries them)."""
    if workers == 1:
        start_worker(None)
        for task in tasks:
            yield register_pair(task)
        return
    threads = max(1, available_cores() // workers)
    waiting, deaths = list(tasks), 0
    while waiting:
        if deaths > POOL_RESTARTS:
            for task in waiting:
                yield failed(
                    task, f"worker processes died {deaths} times (killed, or out of memory)"
                )
            return
        with ProcessPoolExecutor(
            max_workers=min(workers, len(waiting)),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=start_worker,
            initargs=(threads,),
        ) as pool:
            running = {pool.submit(register_pair, task): task for task in waiting}
            waiting = []
            try:
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        task = running.pop(future)
                        try:
                            yield future.result()
                        except BrokenProcessPool:
                            waiting.append(task)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        if waiting:  # a worker died; the pool has stopped the others
            deaths += 1
            _remove_staging(waiting[0].output)


@contextlib.contextmanager
def _locked(output: Path) -> Iterator[None]:
    """Hold ``output``'s batch lock (one batch per output folder at a time), then remove the
    staging folders a killed run left behind."""
    output.mkdir(parents=True, exist_ok=True)
    with (output / LOCK_NAME).open("a") as lock:
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise InputError(
                    f"Another cocyclereg batch is writing to {output}; wait for it to end."
                ) from None
        _remove_staging(output)
        yield


def _remove_staging(output: Path) -> None:
    """Remove the hidden folders of pairs being written, left by killed workers (call only
    while no worker of this batch is running)."""
    for leftover in output.glob(".*"):
        if leftover.is_dir() and (
            _PARTIAL_MARK in leftover.name or _REPLACED_MARK in leftover.name
        ):
            shutil.rmtree(leftover, ignore_errors=True)


def register_many(
    pairs: Iterable[Pair] | str | os.PathLike,
    output: str | os.PathLike,
    settings: RegistrationSettings | None = None,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    force: bool = False,
) -> Iterator[PairResult]:
    """Register every pair into ``output/<id>/`` and yield each :class:`PairResult` as it
    finishes: first the pairs complete from an earlier run (``skipped``), then the others
    (``registered`` or ``failed``), in the order they finish.

    Args:
        pairs: :class:`Pair` objects, or a manifest CSV (:func:`read_manifest`).
        output: the batch's folder (created if missing).
        settings: what applies to every pair (rows may override model and modalities).
        workers: processes on this machine (1: this process); the cores are split between them.
        scheduler: address of a Dask distributed scheduler (``tcp://host:8786``): the pairs
            run on its workers instead (``pip install "cocyclereg[distributed]"``); input and
            output paths must be the same on every worker.
        force: register every pair again, complete or not.

    Only one batch may write to ``output`` at a time (:class:`InputError` otherwise).
    """
    if isinstance(pairs, str | os.PathLike):
        pairs = read_manifest(pairs)
    pairs = list(pairs)
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    output = Path(output)
    settings = settings or RegistrationSettings()
    from cocyclereg.resources import resolve_model

    if not resolve_model(settings.model).is_file():
        raise InputError(f"Model file not found: {settings.model}")
    with _locked(output):
        tasks, done = plan(pairs, output, settings, force)
        yield from done
        if not tasks:
            return
        if scheduler is not None:
            try:
                from cocyclereg.inference.batch_dask import dask_results
            except ImportError:
                raise InputError(
                    'a scheduler needs Dask: pip install "cocyclereg[distributed]"'
                ) from None
            yield from dask_results(tasks, scheduler)
        else:
            yield from _local_results(tasks, workers)


class ResultsTable:
    """``results.csv`` of a batch: one row per manifest pair (``pending`` until it ends),
    rewritten atomically at most every ``interval`` seconds and when :meth:`write` is forced."""

    def __init__(self, pairs: Sequence[Pair], path: Path, interval: float = 2.0) -> None:
        self.path, self.interval, self.written_at = path, interval, -math.inf
        self.rows = {p.id: PairResult(p.id, "pending", str(p.fixed), str(p.moving)) for p in pairs}

    def add(self, result: PairResult) -> None:
        self.rows[result.id] = result
        if time.monotonic() - self.written_at >= self.interval:
            self.write()

    def write(self) -> None:
        from cocyclereg.io import atomic_output

        with atomic_output(self.path) as temporary:
            with temporary.open("w", newline="", encoding="utf-8") as stream:
                writer = csv.DictWriter(stream, RESULT_COLUMNS)
                writer.writeheader()
                writer.writerows(result.as_row() for result in self.rows.values())
        self.written_at = time.monotonic()
