"""``cocyclereg batch`` and ``cocyclereg.register_many`` on real pairs: the bundled demo pair
(TCGA-DU-7294 T1 -> T2 with tumour and tissue labels on both sides) and the stroke subject's
T1 -> T2 from ../shared/data at 2 mm, with bad rows (a 4D file, a missing file)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import cocyclereg
from cocyclereg.cli import main
from cocyclereg.errors import InputError
from cocyclereg.evaluation.evaluate import evaluate
from cocyclereg.geometry.displacement import displacement_transform, read_displacement_field
from cocyclereg.inference.batch import RegistrationSettings, plan
from cocyclereg.inference.manifest import Pair, read_manifest
from cocyclereg.io import read_labels
from cocyclereg.resources import demo_dir

DEMO = demo_dir()
FAST = ["--refine-steps", "5"]  # the model's 20 steps would only make the tests slower
SOURCE = Path(cocyclereg.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stroke_pair(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The stroke subject's T2 (fixed) and T1 (moving), block-averaged to 2 mm."""
    folder = tmp_path_factory.mktemp("stroke")
    paths = []
    for modality in ("t2", "t1"):
        image = sitk.ReadImage(str(data_dir / "brain-t1t2" / "stroke" / f"{modality}.nii.gz"))
        sitk.WriteImage(sitk.BinShrink(image, [2, 2, 2]), str(folder / f"{modality}.nii.gz"))
        paths.append(folder / f"{modality}.nii.gz")
    return paths[0], paths[1]


@pytest.fixture
def one_thread():
    """ITK and torch on one thread, as a batch worker on one core runs: sums in one order, so
    repeated registrations agree to float precision (with two threads the pre-alignment's
    parameters differ by about 1e-7 between runs, which the refinement's Adam steps, normalised
    per voxel, turn into field differences of tenths of a mm)."""
    import torch

    itk_threads, torch_threads = (
        sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
        torch.get_num_threads(),
    )
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    torch.set_num_threads(1)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)
    torch.set_num_threads(torch_threads)


def _write_manifest(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _demo_row(pair_id: str, labels: bool = False) -> str:
    row = f"{pair_id},{DEMO / 'fixed_t2.nii.gz'},{DEMO / 'moving_t1.nii.gz'}"
    if labels:
        moving = ";".join(str(DEMO / f"moving_{n}.nii.gz") for n in ("tumor", "tissue"))
        fixed = ";".join(str(DEMO / f"fixed_{n}.nii.gz") for n in ("tumor", "tissue"))
        row += f",{moving},{fixed}"
    return row


def _results(output: Path) -> dict[str, dict[str, str]]:
    with (output / "results.csv").open(newline="", encoding="utf-8") as stream:
        return {row["id"]: row for row in csv.DictReader(stream)}


def _field(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _transform(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(read_displacement_field(path))


def _assert_complete(folder: Path) -> dict:
    """Every file the pair's summary lists is there; returns the summary."""
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    for name in summary["batch"]["files"]:
        assert (folder / name).is_file(), f"{folder.name} lacks {name}"
    return summary


def _pair_folders(output: Path) -> list[Path]:
    """The pair folders in ``output`` (not the hidden ones being written)."""
    return sorted(p for p in output.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_manifest_resolves_relative_paths_and_keeps_row_overrides(tmp_path):
    manifest = _write_manifest(
        tmp_path / "pairs.csv",
        "id,fixed,moving,labels,fixed_labels,model,fixed_modality,moving_modality",
        [
            "a,sub/t2.nii.gz,sub/t1.nii.gz,sub/moving_aseg.nii.gz; sub/lesion.nii,"
            "sub/aseg.nii.gz;sub/lesion_t2.nii,head-ct-mri,ct,t1",
            "",
            f"b.2,{DEMO / 'fixed_t2.nii.gz'},../elsewhere/t1.nrrd,,,,,",
        ],
    )
    first, second = read_manifest(manifest)
    folder = tmp_path.resolve()
    assert first == Pair(
        "a",
        folder / "sub/t2.nii.gz",
        folder / "sub/t1.nii.gz",
        (folder / "sub/moving_aseg.nii.gz", folder / "sub/lesion.nii"),
        (folder / "sub/aseg.nii.gz", folder / "sub/lesion_t2.nii"),
        "head-ct-mri",
        "ct",
        "t1",
    )
    assert second == Pair("b.2", DEMO / "fixed_t2.nii.gz", tmp_path.parent / "elsewhere/t1.nrrd")


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        ("id,fixed", "a,f.nii", "missing column(s) moving"),
        ("id,fixed,moving,label", "a,f.nii,m.nii,l.nii", "unknown column(s) label"),
        ("id,fixed,moving", "a,,m.nii", "line 2: empty fixed"),
        ("id,fixed,moving", "../a,f.nii,m.nii", "id '../a' names the pair's output folder"),
        ("id,fixed,moving", "a,f.nii,m.nii\na,g.nii,m.nii", "line 3: id 'a' is already used"),
        ("id,fixed,moving", "a,f.nii,m.nii,extra", "line 2: 4 fields, the header has 3"),
        (
            "id,fixed,moving,labels,fixed_labels",
            "a,f.nii,m.nii,l1.nii;l2.nii,k1.nii",
            "1 fixed_labels for 2 labels",
        ),
        ("id,fixed,moving,labels", "a,f.nii,m.nii,x/l.nii;y/l.nii", "warped_<name>"),
    ],
)
def test_a_bad_manifest_is_refused_by_line_before_anything_is_written(
    tmp_path, capsys, header, row, message
):
    manifest = _write_manifest(tmp_path / "pairs.csv", header, [row])
    with pytest.raises(InputError) as error:
        read_manifest(manifest)
    assert message in str(error.value)
    assert main(["batch", "--manifest", str(manifest), "--output", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_manifest_that_is_not_utf8_text_is_refused_by_line(tmp_path, capsys):
    manifest = tmp_path / "pairs.csv"
    manifest.write_bytes(
        "id,fixed,moving\ns1,a.nii.gz,b.nii.gz\ns2,Ren\u00e9/t2.nii.gz,t1.nii.gz\n".encode(
            "latin-1"
        )
    )
    with pytest.raises(InputError, match=r"line 3 is not UTF-8 text \(byte 0xe9\)"):
        read_manifest(manifest)
    manifest.write_bytes(b"id,fixed,moving\r\n" + bytes(range(256)))  # a binary file
    assert main(["batch", "--manifest", str(manifest), "--output", str(tmp_path / "out")]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_batch_equals_register_records_bad_rows_and_skips_or_redoes_pairs(
    tmp_path, stroke_pair, one_thread
):
    """One process registers the real pairs exactly as `register` does, pair by pair; the
    4D and missing rows fail with their reasons and the others complete; a rerun skips the
    complete pairs; a changed option registers them again."""
    fixed, moving = stroke_pair
    four_d = sitk.JoinSeries([sitk.ReadImage(str(moving))] * 2)
    sitk.WriteImage(four_d, str(tmp_path / "four_d.nii.gz"))
    manifest = _write_manifest(
        tmp_path / "pairs.csv",
        "id,fixed,moving,labels,fixed_labels",
        [
            _demo_row("demo", labels=True),
            f"stroke,{fixed},{moving},,",
            f"four-d,{fixed},four_d.nii.gz,,",
            f"missing,{fixed},no_such_file.nii.gz,,",
        ],
    )
    output = tmp_path / "out"
    batch = ["batch", "--manifest", str(manifest), "--output", str(output), *FAST]
    assert main(batch) == 1  # two pairs failed

    results = _results(output)
    assert [results[i]["status"] for i in ("demo", "stroke", "four-d", "missing")] == [
        "registered",
        "registered",
        "failed",
        "failed",
    ]
    assert "4D image" in results["four-d"]["error"]
    assert "File not found" in results["missing"]["error"]
    assert [p.name for p in _pair_folders(output)] == ["demo", "stroke"]
    tumour_dice, tissue_dice = map(float, results["demo"]["dice"].split(";"))
    assert tumour_dice > 0.75 and tissue_dice > 0.7  # identity: 0.744 and 0.709 (demo)
    transform = displacement_transform(read_displacement_field(output / "demo" / "transform.h5"))
    for name, batch_dice in (("tumor", tumour_dice), ("tissue", tissue_dice)):
        fixed_map = read_labels(DEMO / f"fixed_{name}.nii.gz")
        moving_map = read_labels(DEMO / f"moving_{name}.nii.gz")
        assert evaluate(fixed_map, moving_map, transform).mean_dice == pytest.approx(
            batch_dice, abs=0.005
        )
    assert len(results["demo"]["hd95_mm"].split(";")) == 2 and results["stroke"]["dice"] == ""
    demo = _assert_complete(output / "demo")
    assert sorted(demo["batch"]["files"]) == sorted(
        [
            "transform.h5",
            "inverse-transform.h5",
            "warped_t1.nii.gz",
            "warped_tumor.nii.gz",
            "warped_tissue.nii.gz",
            "jacobian.nii.gz",
            "summary.json",
        ]
    )
    assert demo["refinement"]["steps"] == 5

    # `register` on each pair, with the same options: the same transforms and images.
    for pair_id, (pair_fixed, pair_moving) in {
        "demo": (DEMO / "fixed_t2.nii.gz", DEMO / "moving_t1.nii.gz"),
        "stroke": stroke_pair,
    }.items():
        alone = tmp_path / pair_id
        alone.mkdir()
        command = ["register", "--fixed", str(pair_fixed), "--moving", str(pair_moving)]
        command += ["--transform", str(alone / "transform.h5"), *FAST]
        command += ["--inverse-transform", str(alone / "inverse-transform.h5")]
        command += ["--warped", str(alone / "warped.nii.gz")]
        assert main(command) == 0
        for name in ("transform.h5", "inverse-transform.h5"):
            batch_field, register_field = (_transform(f / name) for f in (output / pair_id, alone))
            assert np.abs(batch_field).max() > 1.0  # a real registration, not the identity
            np.testing.assert_allclose(batch_field, register_field, rtol=0, atol=1e-4)
        np.testing.assert_allclose(
            _field(output / pair_id / "warped_t1.nii.gz"),
            _field(alone / "warped.nii.gz"),
            rtol=1e-5,
            atol=1e-3,
        )

    # A rerun registers nothing again: complete pairs are skipped, files untouched.
    stamps = {p.name: (p / "transform.h5").stat().st_mtime_ns for p in _pair_folders(output)}
    assert main(batch) == 1
    results = _results(output)
    assert results["demo"]["status"] == results["stroke"]["status"] == "skipped"
    assert results["demo"]["dice"] == f"{tumour_dice:.4f};{tissue_dice:.4f}"
    assert {n: (output / n / "transform.h5").stat().st_mtime_ns for n in stamps} == stamps

    # A changed option registers the pair again, replacing its folder whole.
    before = _transform(output / "demo" / "transform.h5")
    demo_only = _write_manifest(
        tmp_path / "demo.csv", "id,fixed,moving,labels,fixed_labels", [_demo_row("demo", True)]
    )
    changed = ["batch", "--manifest", str(demo_only), "--output", str(output)]
    assert main([*changed, "--refine-steps", "2"]) == 0
    assert _results(output)["demo"]["status"] == "registered"
    assert _assert_complete(output / "demo")["refinement"]["steps"] == 2
    assert np.abs(_transform(output / "demo" / "transform.h5") - before).max() > 1e-3
    assert not [p for p in output.iterdir() if p.name.startswith(".") and p.is_dir()]


def _pool_workers(pid: int) -> list[int]:
    """The process-pool workers among the children of process ``pid`` (Linux)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = []
    for child in map(int, children):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
    return workers


def _wait_for_folders(output: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while not (output.is_dir() and len(_pair_folders(output)) >= count):
        assert process.poll() is None, "the batch ended before it was killed"
        assert time.monotonic() < deadline, f"{count} pairs not finished in time"
        time.sleep(0.05)


def test_a_killed_worker_or_batch_loses_no_pair_and_the_rerun_does_only_the_rest(tmp_path):
    """A 2-worker batch: one worker process is killed after the first pair (the batch goes
    on in a new pool), then the whole process group after the next; the rerun completes
    every pair without registering again those complete before."""
    ids = ["p1", "p2", "p3", "p4", "p5"]
    manifest = _write_manifest(tmp_path / "pairs.csv", "id,fixed,moving", map(_demo_row, ids))
    output = tmp_path / "out"
    # The quickest registrations (what is tested is where the kills leave the folders).
    command = ["batch", "--manifest", str(manifest), "--output", str(output)]
    command += ["--no-affine", "--refine-steps", "1"]
    environment = {**os.environ, "PYTHONPATH": str(SOURCE)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cocyclereg", *command, "--workers", "2"],
        env=environment,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_folders(output, 1, process)
        os.kill(_pool_workers(process.pid)[0], signal.SIGKILL)
        _wait_for_folders(output, len(_pair_folders(output)) + 1, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    complete = {}
    for folder in _pair_folders(output):
        _assert_complete(folder)
        complete[folder.name] = (folder / "summary.json").stat().st_mtime_ns
    assert 2 <= len(complete) < len(ids)
    (output / ".p5.partial-0000").mkdir(exist_ok=True)  # as a kill mid-write leaves it

    assert main(command) == 0
    results = _results(output)
    for pair_id in ids:
        _assert_complete(output / pair_id)
        expected = "skipped" if pair_id in complete else "registered"
        assert results[pair_id]["status"] == expected
    assert {n: (output / n / "summary.json").stat().st_mtime_ns for n in complete} == complete
    listing = sorted(p.name for p in output.iterdir())
    assert listing == [".cocyclereg-batch.lock", *ids, "results.csv"]


def test_register_many_yields_results_as_they_finish(tmp_path):
    output = tmp_path / "out"
    pairs = [Pair("demo", DEMO / "fixed_t2.nii.gz", DEMO / "moving_t1.nii.gz")]
    settings = RegistrationSettings(affine=False, refine_steps=1)
    [result] = cocyclereg.register_many(pairs, output, settings)
    assert result.status == "registered" and result.folding_voxels is not None
    [again] = cocyclereg.register_many(pairs, output, settings)
    assert again.status == "skipped" and again.folding_voxels == result.folding_voxels
    with pytest.raises(InputError, match="Model file not found"):
        next(cocyclereg.register_many(pairs, output, RegistrationSettings(model="none.cocyclereg")))


def test_a_folder_that_is_not_an_earlier_result_is_never_replaced(tmp_path):
    """Data the user keeps in OUTPUT/<id> (here the pair's own inputs and notes) must survive:
    the pair fails with the reason, the folder is left as it is, the other pairs run."""
    from cocyclereg.inference.batch import _move_into_place

    output = tmp_path / "out"
    subject = output / "sub-01"
    subject.mkdir(parents=True)
    for name in ("fixed_t2.nii.gz", "moving_t1.nii.gz"):
        (subject / name).write_bytes((DEMO / name).read_bytes())
    (subject / "notes.txt").write_text("keep me", encoding="utf-8")
    before = sorted(p.name for p in subject.iterdir())
    pairs = [
        Pair("sub-01", subject / "fixed_t2.nii.gz", subject / "moving_t1.nii.gz"),
        Pair("demo", DEMO / "fixed_t2.nii.gz", DEMO / "moving_t1.nii.gz"),
    ]
    settings = RegistrationSettings(affine=False, refine_steps=1)
    results = {r.id: r for r in cocyclereg.register_many(pairs, output, settings)}
    assert results["sub-01"].status == "failed"
    assert "not a pair folder written by cocyclereg batch" in results["sub-01"].error
    assert results["demo"].status == "registered"
    assert sorted(p.name for p in subject.iterdir()) == before
    assert (subject / "notes.txt").read_text(encoding="utf-8") == "keep me"

    # An input inside an earlier result's folder: replacing that folder would delete it.
    warped = output / "demo" / "warped_t1.nii.gz"
    assert warped.is_file()
    again = [Pair("demo", DEMO / "fixed_t2.nii.gz", warped)]
    [result] = cocyclereg.register_many(again, output, settings)
    assert result.status == "failed" and "lies in the pair's output folder" in result.error
    assert warped.is_file()

    # The last check before the rename, for a folder that appeared after planning.
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(InputError, match="not a pair folder"):
        _move_into_place(staging, subject)
    assert (subject / "notes.txt").is_file() and staging.is_dir()


def test_spelling_out_the_models_recommendation_does_not_redo_a_pair(tmp_path):
    from cocyclereg.model_file import read_model_info
    from cocyclereg.resources import bundled_model

    recommended = read_model_info(bundled_model()).refinement
    output = tmp_path / "out"
    pairs = [Pair("demo", DEMO / "fixed_t2.nii.gz", DEMO / "moving_t1.nii.gz")]
    [first] = cocyclereg.register_many(pairs, output, RegistrationSettings(affine=False))
    assert first.status == "registered"
    spelt_out = RegistrationSettings(
        affine=False,
        refine_steps=recommended.steps,
        network=recommended.use_network,
        mirror_average=recommended.mirror_average,
        fine_steps=recommended.fine_steps,
        fine_spacing_mm=recommended.fine_spacing_mm,
    )
    [again] = cocyclereg.register_many(pairs, output, spelt_out)
    assert again.status == "skipped"
    # A value that differs from the recommendation is a different batch.
    other = RegistrationSettings(affine=False, fine_steps=recommended.fine_steps + 1)
    tasks, done = plan(pairs, output, other)
    assert len(tasks) == 1 and not done


def test_a_batch_that_cannot_start_leaves_the_results_table_as_it_was(tmp_path, capsys):
    import fcntl

    manifest = _write_manifest(tmp_path / "pairs.csv", "id,fixed,moving", [_demo_row("demo")])
    output = tmp_path / "out"
    arguments = ["batch", "--manifest", str(manifest), "--output", str(output), "--no-affine"]
    assert main([*arguments, "--refine-steps", "1"]) == 0
    table = (output / "results.csv").read_bytes()
    assert b"registered" in table
    # A misspelt model: refused, and the finished table is not rewritten as "pending".
    assert main([*arguments, "--model", "brain-t1t3"]) != 0
    assert (output / "results.csv").read_bytes() == table
    # Another batch holds the folder: refused without touching that batch's table.
    with (output / ".cocyclereg-batch.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main([*arguments, "--refine-steps", "2"]) != 0
        assert "Another cocyclereg batch" in capsys.readouterr().err
    assert (output / "results.csv").read_bytes() == table


@pytest.mark.slow
def test_a_dask_cluster_registers_the_same_and_loses_no_pair_to_a_killed_worker(
    tmp_path, one_thread
):
    """Two worker processes of a Dask LocalCluster, reached through its scheduler address as
    `--scheduler` would be; one worker is killed after the first result."""
    distributed = pytest.importorskip("distributed")
    ids = ["d1", "d2", "d3"]
    pairs = [Pair(i, DEMO / "fixed_t2.nii.gz", DEMO / "moving_t1.nii.gz") for i in ids]
    settings = RegistrationSettings(refine_steps=5)
    reference = tmp_path / "reference"
    [alone] = cocyclereg.register_many(pairs[:1], reference, settings)
    assert alone.status == "registered"

    output = tmp_path / "out"
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        results = cocyclereg.register_many(
            pairs, output, settings, scheduler=cluster.scheduler_address
        )
        statuses = [next(results).status]
        pids = client.run(os.getpid)
        os.kill(sorted(pids.values())[0], signal.SIGKILL)
        statuses += [r.status for r in results]
    assert statuses == ["registered"] * len(ids)
    for pair_id in ids:
        _assert_complete(output / pair_id)
        np.testing.assert_allclose(
            _transform(output / pair_id / "transform.h5"),
            _transform(reference / "d1" / "transform.h5"),
            rtol=0,
            atol=1e-4,
        )
