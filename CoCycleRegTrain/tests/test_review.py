"""``cocyclereg review``: the result folders it reads, the scene it builds with Slicer's own
readers, and the page itself, served by the real command and looked at in the system's Chromium
(Debian package ``chromium``) through Playwright; no browser is downloaded.

The results are real runs on the bundled demo pair (TCGA-DU-7294 T1 -> T2): ``cocyclereg demo``,
``cocyclereg register`` with outputs under names of its own, and a ``cocyclereg batch`` of two
pairs (the demo pair with its labels, and the same T1 registered to the T2 resampled onto an
oblique, anisotropic, axis-flipped grid) plus a pair that fails. The page tests measure the
pixels of each slice view on screenshots. Set ``COCYCLEREG_REVIEW_SCREENSHOT=PATH`` to keep
the demo page's screenshot (the README's picture) at PATH.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_direction
from PIL import Image

import cocyclereg
from cocyclereg.cli import main
from cocyclereg.errors import InputError
from cocyclereg.resources import demo_dir
from cocyclereg.review.command import check_port_free
from cocyclereg.review.results import read_result_folder

DEMO = demo_dir()
CHROMIUM = Path("/usr/bin/chromium")
SOURCE = Path(cocyclereg.__file__).resolve().parents[1]
FAST = ["--refine-steps", "5", "--fine-steps", "0"]  # the page, not the accuracy, is tested


def _require(*modules: str, browser: bool = False) -> None:
    """Skip, saying what is missing, unless CI (``COCYCLEREG_REQUIRE_DATA``) must run it."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if browser and not CHROMIUM.is_file():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        reason = f'needs {", ".join(missing)} (pip install "cocyclereg[review]")'
        if os.environ.get("COCYCLEREG_REQUIRE_DATA"):
            pytest.fail(reason)
        pytest.skip(reason)


# -- the result folders ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("review") / "demo"
    assert main(["demo", "--output", str(folder), "--no-figure"]) == 0
    return folder


def _oblique_fixed(folder: Path) -> Path:
    """The demo's fixed T2 resampled onto an oblique, anisotropic, x-flipped grid around the
    same centre (linear interpolation)."""
    fixed = sitk.ReadImage(str(DEMO / "fixed_t2.nii.gz"))
    centre = np.array(
        fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    )
    spacing = np.array([2.5, 1.8, 3.0])
    size = np.ceil(170 / spacing).astype(int)
    direction = np.array(oblique_direction([12, -9, 20], [-1, 1, 1])).reshape(3, 3)
    origin = centre - direction @ (spacing * (size - 1) / 2)
    oblique = sitk.Resample(
        fixed,
        [int(n) for n in size],
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        spacing.tolist(),
        direction.ravel().tolist(),
        0.0,
        sitk.sitkFloat32,
    )
    path = folder / "oblique_t2.nii.gz"
    sitk.WriteImage(oblique, str(path))
    return path


@pytest.fixture(scope="module")
def batch_output(tmp_path_factory) -> Path:
    """A batch: ``plain`` (the demo pair with tumour and tissue labels), ``oblique`` (the demo
    T1 to the oblique T2) and ``broken`` (a missing moving file: failed)."""
    folder = tmp_path_factory.mktemp("review-batch")
    labels = ";".join(str(DEMO / f"moving_{n}.nii.gz") for n in ("tumor", "tissue"))
    fixed_labels = ";".join(str(DEMO / f"fixed_{n}.nii.gz") for n in ("tumor", "tissue"))
    t1, t2 = DEMO / "moving_t1.nii.gz", DEMO / "fixed_t2.nii.gz"
    manifest = folder / "pairs.csv"
    manifest.write_text(
        "id,fixed,moving,labels,fixed_labels\n"
        f"plain,{t2},{t1},{labels},{fixed_labels}\n"
        f"oblique,{_oblique_fixed(folder)},{t1},,\n"
        f"broken,{t2},{folder / 'absent_t1.nii.gz'},,\n",
        encoding="utf-8",
    )
    output = folder / "results"
    code = main(["batch", "--manifest", str(manifest), "--output", str(output), *FAST])
    assert code == 1  # the broken pair failed; the others were registered
    return output


def test_result_folders_are_read_with_their_files_and_other_folders_are_refused(
    demo_output, batch_output, tmp_path
):
    (demo,) = read_result_folder(demo_output)
    summary = json.loads((demo_output / "summary.json").read_text())
    assert (demo.id, demo.status) == ("demo", "registered")
    assert demo.folding_voxels == summary["folding"]["folding_voxels"]
    assert demo.dice == tuple(summary["labels"][n]["after"]["mean_dice"] for n in summary["labels"])
    files = demo.files
    assert (files.fixed, files.moving) == (DEMO / "fixed_t2.nii.gz", DEMO / "moving_t1.nii.gz")
    assert (files.transform, files.warped, files.jacobian) == (
        demo_output / "transform.h5",
        demo_output / "warped_t1.nii.gz",
        demo_output / "jacobian.nii.gz",
    )
    assert files.warped_labels == {
        n: demo_output / f"warped_{n}.nii.gz" for n in ("tumor", "tissue")
    }

    pairs = {pair.id: pair for pair in read_result_folder(batch_output)}
    assert [(p.id, p.status, p.viewable) for p in pairs.values()] == [
        ("plain", "registered", True),
        ("oblique", "registered", True),
        ("broken", "failed", False),
    ]
    assert "absent_t1.nii.gz" in pairs["broken"].error
    assert len(pairs["plain"].dice) == 2 and pairs["oblique"].dice == ()
    assert pairs["oblique"].files.warped == batch_output / "oblique" / "warped_t1.nii.gz"
    assert pairs["oblique"].files.warped_labels == {}

    # A folder copied elsewhere: the outputs are found beside its summary.
    copied = tmp_path / "copied"
    shutil.copytree(batch_output / "plain", copied)
    assert read_result_folder(copied)[0].files.transform == copied / "transform.h5"

    for path, message in [
        (tmp_path / "absent", "is not a folder"),
        (tmp_path, "neither summary.json .*nor results.csv"),
        (demo_output / "summary.json", "is not a folder"),
    ]:
        with pytest.raises(InputError, match=message):
            read_result_folder(path)
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="is not a cocyclereg summary"):
        read_result_folder(tmp_path)


def test_register_records_its_outputs_for_review_under_any_names(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    arguments = ["register", "--fixed", str(DEMO / "fixed_t2.nii.gz"), "--moving"]
    arguments += [str(DEMO / "moving_t1.nii.gz"), "--refine-steps", "0", "--fine-steps", "0"]
    arguments += ["--transform", str(out / "t1_to_t2.h5"), "--warped", str(out / "t1_in_t2.nii.gz")]
    arguments += ["--jacobian", str(out / "det.nii.gz"), "--summary", str(out / "summary.json")]
    arguments += ["--labels", str(DEMO / "moving_tumor.nii.gz"), "--warped-labels"]
    arguments += [str(out / "tumour_in_t2.nii.gz")]
    assert main(arguments) == 0
    (pair,) = read_result_folder(out)
    assert (pair.files.transform, pair.files.warped, pair.files.jacobian) == (
        out / "t1_to_t2.h5",
        out / "t1_in_t2.nii.gz",
        out / "det.nii.gz",
    )
    assert pair.files.warped_labels == {"tumor": out / "tumour_in_t2.nii.gz"}


def test_review_shows_only_the_files_a_summary_lists_and_a_copys_own_files(tmp_path):
    import shutil

    def register_into(out: Path, steps: str, jacobian: bool) -> None:
        arguments = ["register", "--fixed", str(DEMO / "fixed_t2.nii.gz"), "--moving"]
        arguments += [str(DEMO / "moving_t1.nii.gz"), "--refine-steps", steps, "--no-affine"]
        arguments += ["--fine-steps", "0", "--transform", str(out / "t.h5")]
        arguments += ["--summary", str(out / "summary.json")]
        arguments += ["--jacobian", str(out / "jacobian.nii.gz")] if jacobian else []
        assert main(arguments) == 0

    out = tmp_path / "run"
    out.mkdir()
    register_into(out, "1", jacobian=True)
    # A copy of the folder shows its own files, even after the original is registered again.
    shutil.copytree(out, tmp_path / "copy")
    register_into(out, "2", jacobian=True)
    (pair,) = read_result_folder(tmp_path / "copy")
    assert pair.files.transform == tmp_path / "copy" / "t.h5"
    assert pair.files.jacobian == tmp_path / "copy" / "jacobian.nii.gz"
    # A later registration into the same folder without --jacobian: the earlier run's
    # jacobian.nii.gz is not this registration's and is not shown as if it were.
    register_into(out, "1", jacobian=False)
    (pair,) = read_result_folder(out)
    assert pair.files.transform == out / "t.h5" and pair.files.jacobian is None


def test_a_damaged_batch_table_is_refused_by_line_and_a_damaged_summary_fails_its_pair(
    batch_output, tmp_path
):
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(batch_output, copy)
    table = (copy / "results.csv").read_text(encoding="utf-8")
    (copy / "oblique" / "summary.json").write_text("{damaged", encoding="utf-8")
    pairs = {pair.id: pair for pair in read_result_folder(copy)}
    assert pairs["oblique"].status == "failed" and "summary" in pairs["oblique"].error
    assert pairs["plain"].viewable  # the other pairs are still shown
    lines = table.splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("folding_voxels")] = "30.5"
    (copy / "results.csv").write_text("\n".join([lines[0], ",".join(row)]) + "\n")
    with pytest.raises(InputError, match="line 2: not a number"):
        read_result_folder(copy)
    row[header.index("folding_voxels")] = ""
    row[header.index("id")] = ".."
    (copy / "results.csv").write_text("\n".join([lines[0], ",".join(row)]) + "\n")
    with pytest.raises(InputError, match=r"line 2: '\.\.' is not a pair id"):
        read_result_folder(copy)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_review_refuses_a_taken_port_and_a_folder_that_is_not_a_result(
    demo_output, tmp_path, capsys
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=f"port {port} on 127.0.0.1 is taken.*--port"):
            check_port_free("127.0.0.1", port)
        assert main(["review", str(demo_output), "--port", str(port)]) == 2
    assert "is taken" in capsys.readouterr().err
    assert main(["review", str(tmp_path), "--port", str(_free_port())]) == 2
    assert "is not a cocyclereg result folder" in capsys.readouterr().err


# -- the scene: what Slicer shows ------------------------------------------------------------


def _physical_points_ras(image: sitk.Image, index_kji: np.ndarray) -> np.ndarray:
    """RAS points (N, 3) of voxel indices (N, 3) given as (k, j, i) of a SimpleITK image."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijk = index_kji[:, ::-1] * np.array(image.GetSpacing())
    lps = ijk @ direction.T + np.array(image.GetOrigin())
    return lps * [-1, -1, 1]


def _values_at(node, points_ras: np.ndarray) -> np.ndarray:
    """The voxel values of a Slicer volume node at RAS points that are its voxel centres
    (through the node's own RAS-to-IJK matrix: Slicer may order the voxels differently)."""
    import vtk
    from slicer.util import arrayFromVolume

    matrix = vtk.vtkMatrix4x4()
    node.GetRASToIJKMatrix(matrix)
    ras_to_ijk = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    ijk = points_ras @ ras_to_ijk[:3, :3].T + ras_to_ijk[:3, 3]
    index = np.rint(ijk).astype(int)
    assert np.abs(ijk - index).max() < 1e-3  # voxel centres of the same grid
    return arrayFromVolume(node)[index[:, 2], index[:, 1], index[:, 0]].astype(np.float64)


@pytest.mark.parametrize("pair_id", ["plain", "oblique"])
def test_the_scene_shows_the_moving_image_where_the_package_warped_it(batch_output, pair_id):
    """Slicer resamples the moving volume through the grid transform node read from the
    transform file (as the slice views draw it; hardening does the same): at every voxel
    centre inside the head it equals the package's warped image to Slicer's integer rounding,
    on the plain grid and on the oblique, anisotropic, flipped one; without the transform it
    does not."""
    _require("slicer")
    import slicer

    from cocyclereg.review.scene import load_pair

    pair = {p.id: p for p in read_result_folder(batch_output)}[pair_id]
    scene = slicer.vtkMRMLScene()
    nodes = load_pair(scene, pair.files, pair.id)
    assert nodes.transform.IsA("vtkMRMLGridTransformNode") and not nodes.moving_is_warped
    assert nodes.moving.GetParentTransformNode() is nodes.transform
    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)

    warped_image = sitk.ReadImage(str(pair.files.warped))
    warped = sitk.GetArrayFromImage(warped_image).astype(np.float64)
    head = np.argwhere(warped > 50)  # the moving T1's background is below 0; the head, 100s
    assert len(head) > 0.1 * warped.size
    points = _physical_points_ras(warped_image, head)
    expected = warped[tuple(head.T)]

    def resampled_by_slicer() -> np.ndarray:
        return _values_at(logic.ResampleVolumeToReferenceVolume(nodes.moving, nodes.fixed), points)

    difference = np.abs(resampled_by_slicer() - expected)
    assert difference.max() <= 0.6, np.percentile(difference, [50, 99, 100])  # rounding: 0.5

    nodes.moving.SetAndObserveTransformNodeID(None)
    untransformed = np.abs(resampled_by_slicer() - expected)
    assert np.median(untransformed) > 10 * max(np.median(difference), 0.5)


def test_without_the_moving_image_the_scene_shows_the_packages_warped_image(batch_output, tmp_path):
    _require("slicer")
    import slicer

    from cocyclereg.review.scene import load_pair

    folder = tmp_path / "copied"
    shutil.copytree(batch_output / "plain", folder)
    summary = json.loads((folder / "summary.json").read_text())
    summary["moving"] = str(tmp_path / "elsewhere" / "moving_t1.nii.gz")
    (folder / "summary.json").write_text(json.dumps(summary))
    (pair,) = read_result_folder(folder)
    assert pair.files.moving is None and pair.files.warped == folder / "warped_t1.nii.gz"
    nodes = load_pair(slicer.vtkMRMLScene(), pair.files, pair.id)
    assert nodes.moving_is_warped and nodes.moving.GetParentTransformNode() is None
    warped_image = sitk.ReadImage(str(pair.files.warped))
    warped = sitk.GetArrayFromImage(warped_image)
    everywhere = np.argwhere(np.ones_like(warped, dtype=bool))[::97]
    shown = _values_at(nodes.moving, _physical_points_ras(warped_image, everywhere))
    np.testing.assert_array_equal(shown, warped[tuple(everywhere.T)])
    assert set(nodes.labels) == {"tumor", "tissue"} and nodes.jacobian is not None


# -- the page in a browser -------------------------------------------------------------------


@contextlib.contextmanager
def review_server(path: Path):
    """``cocyclereg review PATH`` in its own process on a free loopback port; yields the page's
    address once the server says it is ready; stops it and checks the port is free again."""
    port = _free_port()
    environment = dict(os.environ, PYTHONPATH=str(SOURCE))
    command = [sys.executable, "-m", "cocyclereg", "review", str(path), "--port", str(port)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any(line.startswith("reviewing ") for line in lines):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the review server did not start:\n" + "".join(lines))
            time.sleep(0.2)
        assert f"http://127.0.0.1:{port}/" in "".join(lines)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail("the review server did not stop on SIGTERM")
    check_port_free("127.0.0.1", port)


@contextlib.contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 720})
        finally:
            browser.close()


def view_pixels(page) -> list[np.ndarray]:
    """RGB pixels (H, W, 3), floats 0-255, of each slice view's area on the page (its image
    fills it once the server streams frames of the area's size), without the outer 10 % where
    the view's own buttons and slider lie."""
    areas = page.locator("img.image-display-area").locator("xpath=..")
    assert areas.count() == 3
    pixels = []
    for index in range(3):
        box = areas.nth(index).bounding_box()
        image = Image.open(io.BytesIO(page.screenshot(clip=box))).convert("RGB")
        image = np.asarray(image)
        height, width = image.shape[:2]
        inner = image[height // 10 : -height // 10, width // 10 : -width // 10]
        pixels.append(inner.astype(np.float64))
    return pixels


def drawn_fraction(view: np.ndarray) -> float:
    """The fraction of pixels brighter than near-black."""
    return float(np.mean(view.mean(axis=-1) > 40))


def coloured_fraction(view: np.ndarray) -> float:
    """The fraction of clearly coloured (not grey) pixels."""
    return float(np.mean(view.max(axis=-1) - view.min(axis=-1) > 40))


def wait_for_views(page, condition, what: str, timeout: float = 60) -> list[np.ndarray]:
    """Screenshots of the views, taken until ``condition(views)`` holds (the server renders
    and streams them after each change)."""
    deadline = time.monotonic() + timeout
    while True:
        views = view_pixels(page)
        if condition(views):
            return views
        if time.monotonic() > deadline:
            drawn = [round(drawn_fraction(v), 3) for v in views]
            coloured = [round(coloured_fraction(v), 3) for v in views]
            pytest.fail(f"{what}: not seen in {timeout} s (drawn {drawn}, coloured {coloured})")
        page.wait_for_timeout(500)


def settled_views(page, timeout: float = 30) -> list[np.ndarray]:
    """The views once two screenshots half a second apart agree (a change can arrive as
    more than one frame: a quick one, then the full-quality one)."""
    deadline = time.monotonic() + timeout
    views = view_pixels(page)
    while True:
        page.wait_for_timeout(500)
        latest = view_pixels(page)
        if distance(views, latest) < 0.5 or time.monotonic() > deadline:
            return latest
        views = latest


def all_drawn(views) -> bool:
    return all(drawn_fraction(view) > 0.15 for view in views)


def changed(before, after, grey_levels: float = 3.0) -> bool:
    return all(np.abs(a - b).mean() > grey_levels for a, b in zip(before, after, strict=True))


def distance(before, after) -> float:
    """The mean absolute difference of the views' pixels (grey levels)."""
    return float(np.mean([np.abs(a - b).mean() for a, b in zip(before, after, strict=True)]))


def similar(before, after, grey_levels: float = 3.0) -> bool:
    return all(np.abs(a - b).mean() < grey_levels for a, b in zip(before, after, strict=True))


def _set_opacity(page, key: str) -> None:
    """``Home``: opacity 0; ``End``: opacity 1 (the slider's keyboard keys)."""
    page.locator(".review-opacity [role=slider]").focus()
    page.keyboard.press(key)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("headers", "loopback", "refused"),
    [
        ({"Host": "127.0.0.1:8080"}, True, None),
        ({"Host": "localhost:8080", "Origin": "http://localhost:8080"}, True, None),
        ({"Host": "[::1]:8080", "Origin": "http://[::1]:8080"}, True, None),
        ({"Host": "127.0.0.1:8080", "Origin": "http://evil.example"}, True, "another origin"),
        ({"Host": "evil.example:8080", "Origin": "http://evil.example:8080"}, True, "loopback"),
        ({"Host": "10.0.0.5:8080", "Origin": "http://10.0.0.5:8080"}, False, None),
        ({"Host": "10.0.0.5:8080", "Origin": "http://evil.example"}, False, "another origin"),
    ],
)
def test_only_the_pages_own_origin_and_a_loopback_host_are_served(headers, loopback, refused):
    from cocyclereg.review.command import request_refusal

    reason = request_refusal(headers, loopback)
    assert reason is None if refused is None else refused in reason


def test_the_running_page_refuses_other_origins_over_http_and_websocket(demo_output):
    _require("trame_slicer", "aiohttp")
    import asyncio

    import aiohttp

    async def probe(url: str) -> list:
        statuses = []
        async with aiohttp.ClientSession() as session:
            for headers in ({}, {"Origin": "http://evil.example"}, {"Host": "evil.example"}):
                async with session.get(url, headers=headers, allow_redirects=False) as reply:
                    statuses.append(reply.status)
            for origin in (url.rstrip("/"), "http://evil.example"):
                try:
                    async with session.ws_connect(f"{url}ws", headers={"Origin": origin}):
                        statuses.append("connected")
                except aiohttp.WSServerHandshakeError as error:
                    statuses.append(error.status)
        return statuses

    with review_server(demo_output) as url:
        statuses = asyncio.run(probe(url))
    assert statuses[0] in (200, 302) and statuses[1:3] == [403, 403]
    assert statuses[3:] == ["connected", 403]


def test_page_of_the_demo_draws_the_views_the_jacobian_and_follows_the_opacity(
    demo_output, tmp_path
):
    _require("trame_slicer", "playwright", browser=True)
    with review_server(demo_output) as url, browser_page() as page:
        page.goto(url)
        page.get_by_text("registered").wait_for()
        views = wait_for_views(page, all_drawn, "the three slice views drawn")
        assert max(coloured_fraction(v) for v in views) < 0.05  # grey images, thin outlines
        jacobian = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_output / "jacobian.nii.gz")))
        folded = f"J ≤ 0 in {int((jacobian <= 0).sum())} of {jacobian.size} voxels"
        assert folded in page.locator(".review-folding").inner_text()

        page.locator(".review-labels").click()
        page.get_by_role("option", name="tissue").click()
        outlined = wait_for_views(
            page,
            lambda views: all(coloured_fraction(v) > 0.02 for v in views),
            "the tissue labels' coloured outlines in every view",
        )

        _set_opacity(page, "End")  # the moving image alone
        wait_for_views(page, lambda v: changed(outlined, v), "opacity 1 changes the views")
        opaque = settled_views(page)
        _set_opacity(page, "Home")  # the fixed image alone
        wait_for_views(page, lambda v: changed(opaque, v), "opacity 0 changes the views")
        fixed = settled_views(page)
        # Flicker: the views swap between the fixed image alone and the moving image alone.
        flicker = page.locator(".review-flicker input")
        flicker.check()
        seen = set()

        def both_seen(views) -> bool:
            to_fixed, to_moving = distance(fixed, views), distance(opaque, views)
            if to_fixed < to_moving / 2:
                seen.add("fixed")
            if to_moving < to_fixed / 2:
                seen.add("moving")
            return seen == {"fixed", "moving"}

        wait_for_views(page, both_seen, "flicker: the fixed image alone, then the moving alone")
        # Showing the Jacobian stops the flicker (its switch is hidden there).
        page.locator(".review-overlay-jacobian input").check()
        page.locator(".review-overlay-moving input").check()
        page.wait_for_timeout(500)
        assert not flicker.is_checked()
        # The slider's opacity again: 0, the fixed image alone (stays so for a few swaps).
        page.wait_for_timeout(2000)
        wait_for_views(page, lambda v: similar(fixed, v, 1.0), "flicker off: opacity 0 again")
        _set_opacity(page, "End")
        for _ in range(10):
            page.keyboard.press("ArrowLeft")  # 1 - 10 x 0.05: half and half
        page.locator(".review-labels .mdi-close-circle").click()  # no labels: grey again
        wait_for_views(
            page,
            lambda views: all(coloured_fraction(v) < 0.01 for v in views),
            "the views without label outlines",
        )
        page.locator(".review-overlay-jacobian input").check()
        jacobian = wait_for_views(
            page,
            lambda views: all(coloured_fraction(v) > 0.06 for v in views),  # 0.12-0.14 seen
            "the Jacobian's colours in every view",
        )
        assert all_drawn(jacobian)
        colorbar = page.locator(".review-colorbar")
        assert colorbar.is_visible()
        bar = np.asarray(Image.open(io.BytesIO(colorbar.locator("div").first.screenshot())))
        left, middle, right = (
            bar[bar.shape[0] // 2, x, :3].astype(int) for x in (2, bar.shape[1] // 2, -3)
        )
        assert left[2] > left[0] + 80 and right[0] > right[2] + 80  # blue at J <= 0, red at 2
        assert abs(middle[0] - middle[2]) < 20  # grey-white at J = 1

        page.screenshot(path=tmp_path / "review.png")
        keep = os.environ.get("COCYCLEREG_REVIEW_SCREENSHOT")
        if keep:
            Image.open(tmp_path / "review.png").convert("RGB").quantize(128).save(
                keep, optimize=True
            )


@pytest.mark.slow
def test_page_of_a_batch_lists_the_pairs_marks_the_failed_one_and_switches_views(batch_output):
    _require("trame_slicer", "playwright", browser=True)
    with review_server(batch_output) as url, browser_page() as page:
        page.goto(url)
        rows = page.locator(".review-pairs tbody tr")
        rows.first.wait_for()
        assert rows.count() == 3
        failed = page.locator(".review-pairs .text-error")
        assert failed.inner_text() == "failed" and "absent_t1" in failed.get_attribute("title")
        plain = wait_for_views(page, all_drawn, "the first pair's views drawn")

        page.locator(".review-pairs tr", has_text="oblique").click()
        wait_for_views(
            page, lambda v: all_drawn(v) and changed(plain, v, 10), "the oblique pair's views"
        )
        oblique = settled_views(page)
        assert max(coloured_fraction(v) for v in oblique) < 0.01  # no labels: grey
        page.locator(".review-grid input").check()
        wait_for_views(
            page,
            lambda views: all(coloured_fraction(v) > 0.01 for v in views),
            "the deformed grid's coloured lines in every view",
        )
        page.locator(".review-grid input").uncheck()
        page.locator(".review-pairs tr", has_text="broken").click()
        message = page.locator(".review-message")
        message.wait_for()
        assert "broken is failed" in message.inner_text() and "absent_t1" in message.inner_text()
        wait_for_views(
            page, lambda v: all(drawn_fraction(x) < 0.01 for x in v), "no views for a failed pair"
        )
        page.locator(".review-pairs tr", has_text="oblique").click()
        wait_for_views(page, lambda v: similar(oblique, v), "the oblique pair's views again")
