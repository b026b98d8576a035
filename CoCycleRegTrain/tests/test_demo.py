"""``cocyclereg demo``: the bundled pair, the bundled model, the figure and the printed scores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

import cocyclereg.resources as resources
from cocyclereg.cli import main
from cocyclereg.errors import InputError
from cocyclereg.evaluation.metrics import dice
from cocyclereg.geometry.displacement import (
    displacement_field_image,
    displacement_transform,
    voxel_flow_to_displacement_mm,
)
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.resample import resample_to_grid

DEMO_FILES = ["fixed_t2", "moving_t1", "fixed_tumor", "moving_tumor", "fixed_tissue"]
DEMO_FILES.append("moving_tissue")


def _bundled_model():
    """The bundled brain-t1t2 model; the test is skipped only when the file is absent."""
    try:
        return resources.bundled_model("brain-t1t2")
    except InputError as error:
        pytest.skip(f"the bundled model file is absent (the lead commits it): {error}")


def _demo(name: str) -> sitk.Image:
    return sitk.ReadImage(str(resources.demo_dir() / f"{name}.nii.gz"))


def test_bundled_models_are_listed_with_their_card_titles_and_a_missing_one_is_clear(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(resources, "MODELS", tmp_path)
    assert resources.list_bundled_models() == {}
    (tmp_path / "brain-t1t2.cocyclereg").write_bytes(b"weights")
    (tmp_path / "brain-t1t2.md").write_text("intro\n# Brain T1/T2 MRI (cpu-small)\n\n## Data\n")
    (tmp_path / "other.cocyclereg").write_bytes(b"weights")
    assert resources.list_bundled_models() == {
        "brain-t1t2": (tmp_path / "brain-t1t2.cocyclereg", "Brain T1/T2 MRI (cpu-small)"),
        "other": (tmp_path / "other.cocyclereg", ""),
    }
    assert resources.bundled_model("brain-t1t2") == tmp_path / "brain-t1t2.cocyclereg"
    with pytest.raises(InputError, match=r"'ct-mri' is not installed .*brain-t1t2, other.*--model"):
        resources.bundled_model("ct-mri")
    # --model takes a file or a bundled model's name; no value means the default model.
    assert resources.resolve_model("other") == tmp_path / "other.cocyclereg"
    assert resources.resolve_model(None) == tmp_path / "brain-t1t2.cocyclereg"
    assert resources.resolve_model("mine.cocyclereg") == Path("mine.cocyclereg")
    assert resources.resolve_model("runs/model") == Path("runs/model")
    with pytest.raises(InputError, match="'typo' is not installed"):
        resources.resolve_model("typo")
    # A folder named like a bundled model in the working folder does not hide the model.
    (tmp_path / "work" / "other").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert resources.resolve_model("other") == tmp_path / "other.cocyclereg"


def test_demo_pair_geometry_labels_and_size():
    folder = resources.demo_dir()
    images = {name: _demo(name) for name in DEMO_FILES}
    grid = Grid.from_image(images["fixed_t2"])
    assert grid.spacing == (2.0, 2.0, 2.0) and 40 < min(grid.size) and max(grid.size) < 128
    for name, image in images.items():
        assert Grid.from_image(image).is_close(grid), name
        expected = sitk.sitkInt16 if name.endswith(("t1", "t2")) else sitk.sitkUInt8
        assert image.GetPixelID() == expected, name
    arrays = {name: sitk.GetArrayFromImage(image) for name, image in images.items()}
    for side in ("fixed", "moving"):
        assert set(np.unique(arrays[f"{side}_tumor"])) == {0, 1, 2}
        assert set(np.unique(arrays[f"{side}_tissue"])) == {0, 1, 2, 3}
    # The head lies inside the grid with a margin: no head voxel on any face.
    for name in ("fixed_t2", "moving_t1"):
        head = arrays[name] > 0
        assert head.mean() > 0.2
        for axis in range(3):
            assert not head.take([0, -1], axis=axis).any(), name
    # Labels sit on their image: tissue inside the head, the tumour inside the tissue.
    for side, image in (("fixed", "fixed_t2"), ("moving", "moving_t1")):
        tissue = arrays[f"{side}_tissue"] > 0
        assert (arrays[image][tissue] > 0).mean() > 0.99
        assert tissue[arrays[f"{side}_tumor"] > 0].mean() > 0.95
    # Moving is the same anatomy, visibly moved: overlap well below 1, far above chance, and
    # volumes kept (the warp folds nowhere and is close to volume-preserving).
    scores = dice(arrays["fixed_tissue"], arrays["moving_tissue"])
    assert all(0.3 < score < 0.85 for score in scores.values()), scores
    assert 0.5 < dice(arrays["fixed_tumor"] > 0, arrays["moving_tumor"] > 0)[1] < 0.95
    for name in ("tumor", "tissue"):
        ratio = (arrays[f"moving_{name}"] > 0).sum() / (arrays[f"fixed_{name}"] > 0).sum()
        assert 0.85 < ratio < 1.15, name

    names = json.loads((folder / "labels.json").read_text())
    assert names["tissue"] == {"1": "CSF", "2": "grey matter", "3": "white matter"}
    assert set(names["tumor"]) == {"1", "2"}
    readme = (folder / "README.md").read_text()
    for credit in ("TCGA-LGG", "CC BY 3.0", "BraTS-Toolkit", "Apache-2.0", "make_demo_data.py"):
        assert credit in readme
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total < 2 * 1024 * 1024, f"the demo folder is {total} bytes"


def _panel_pixels(png: np.ndarray, axes, height: int) -> np.ndarray:
    box = axes.get_window_extent()
    return png[
        height - int(box.y1) + 2 : height - int(box.y0) - 2, int(box.x0) + 2 : int(box.x1) - 2
    ]


def test_figure_has_every_panel_filled_in_physical_proportion_and_shows_folding(tmp_path):
    from cocyclereg.evaluation.figure import DPI, draw_registration_figure

    fixed, moving = _demo("fixed_t2"), _demo("moving_t1")
    tumour, tissue = _demo("fixed_tumor"), _demo("fixed_tissue")
    grid = Grid.from_image(fixed)
    # A warp that folds in one blob: J <= 0 there must show in black.
    flow = np.zeros((3, *grid.shape))
    k, j, i = np.indices(grid.shape)
    centre = np.argwhere(sitk.GetArrayViewFromImage(tumour) > 0).mean(axis=0)
    distance = np.sqrt(((np.stack([k, j, i], -1) - centre) ** 2).sum(-1))
    flow[2] = -3.0 * np.exp(-((distance / 4.0) ** 2)) * (i - centre[2])
    field = displacement_field_image(voxel_flow_to_displacement_mm(flow, grid), grid)
    from cocyclereg.geometry.jacobian import jacobian_determinant

    jacobian = jacobian_determinant(field)
    assert (sitk.GetArrayViewFromImage(jacobian) <= 0).any()
    warped = resample_to_grid(moving, grid, "linear", displacement_transform(field))
    figure = draw_registration_figure(
        fixed,
        moving,
        warped,
        jacobian,
        contours={"tumour": (tumour, 2), "white matter": (tissue, 3)},
        centre_labels=tumour,
        title="test",
        names=("T2", "T1"),
    )
    path = tmp_path / "figure.png"
    figure.savefig(path, format="png", dpi=DPI)
    png = np.asarray(Image.open(path).convert("RGB")).astype(float)
    height, width, _ = png.shape
    assert 1200 <= width <= 2400 and 500 <= height <= 1200  # readable at 100 %
    panels = figure.axes[:7] + figure.axes[8:15]
    for index, axes in enumerate(panels):
        pixels = _panel_pixels(png, axes, height)
        assert pixels.std() > 10, f"panel {index} is blank"
        (image,) = axes.get_images()[:1]
        left, right, bottom, top = image.get_extent()
        # Extents in mm: 2 mm voxels, the panel as wide and high as the slice is in mm.
        assert abs(right - left) == pytest.approx(grid.size[0] * 2.0)
        assert abs(top - bottom) == pytest.approx(grid.size[1 if index < 7 else 2] * 2.0)
        box = axes.get_window_extent()
        assert box.height / box.width == pytest.approx(abs(top - bottom) / (right - left), 0.03)
    assert [axes.get_title() for axes in panels[:7]] == [
        "fixed (T2)",
        "moving (T1), before",
        "warped T1",
        "checkerboard before",
        "checkerboard after",
        "fixed labels on warped",
        "Jacobian determinant",
    ]
    for colour_bar, jacobian_axes in ((figure.axes[7], panels[6]), (figure.axes[15], panels[13])):
        low, high = colour_bar.get_ylim()
        assert low < 1 < high and 1 - low == pytest.approx(high - 1)  # centred at 1
        pixels = _panel_pixels(png, jacobian_axes, height)
        assert (pixels.max(axis=-1) < 20).any(), "folding (J <= 0) is not shown in black"
    assert len(panels[5].collections) >= 2  # label contours drawn


@pytest.mark.slow
def test_demo_writes_every_output_and_prints_the_scores_evaluate_computes(tmp_path, capsys):
    from cocyclereg.demo import OUTPUTS

    model = _bundled_model()
    out = tmp_path / "demo-output"
    assert main(["demo", "--output", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no partial files left

    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(model)
    assert set(summary["seconds"]) >= {"affine", "output", "write", "figure"}
    # The default does not run the network, and the summary does not time what did not run.
    assert summary["network"] is False and "network" not in summary["seconds"]
    assert summary["modalities"]["moving"] == "t1" and summary["modalities"]["fixed"] == "t2"
    # Whether it worked: the pair is more similar after registration than before.
    similarity = summary["similarity"]
    assert similarity["better"] == "higher" and similarity["improved"] is True
    assert similarity["after"] > similarity["prealigned"] > similarity["before"] > 1.0
    assert f"{similarity['before']:.3f} before, {similarity['after']:.3f} after" in printed
    fixed = sitk.ReadImage(str(resources.demo_dir() / "fixed_t2.nii.gz"))
    for name in ("warped_t1", "jacobian", "warped_tumor", "warped_tissue"):
        image = sitk.ReadImage(str(out / f"{name}.nii.gz"))
        assert Grid.from_image(image).is_close(Grid.from_image(fixed)), name

    folder = resources.demo_dir()
    for name in ("tumor", "tissue"):
        evaluated = out / f"evaluate-{name}.json"
        arguments = ["evaluate", "--transform", str(out / "transform.h5"), "--json"]
        arguments += [str(evaluated), "--fixed-labels", str(folder / f"fixed_{name}.nii.gz")]
        arguments += ["--moving-labels", str(folder / f"moving_{name}.nii.gz")]
        assert main(arguments) == 0
        expected = json.loads(evaluated.read_text())
        after = summary["labels"][name]["after"]
        assert after["dice"] == pytest.approx(expected["dice"], abs=1e-12)
        assert after["hd95_mm"] == pytest.approx(expected["hd95_mm"], abs=1e-9)
        # The file holds float32 displacements, the demo's numbers come from the float64 field.
        assert after["folding"] == pytest.approx(expected["folding"], rel=1e-5)
        # The printed table shows these numbers: label, Dice before, Dice after, HD95s.
        before = summary["labels"][name]["before"]
        for label, score in expected["dice"].items():
            row = re.search(rf"^{name} {label} .*$", printed, re.MULTILINE)
            assert row is not None, printed
            numbers = re.findall(r"\d+\.\d+", row.group(0))
            assert numbers[:2] == [f"{before['dice'][label]:.3f}", f"{score:.3f}"]
            assert numbers[3] == f"{expected['hd95_mm'][label]:.2f}"
        mean = re.search(rf"^{name} mean .*$", printed, re.MULTILINE).group(0)
        assert f"{expected['mean_dice']:.3f}" in mean
    # Before means the identity: the labels as they lie.
    fixed_tissue = sitk.GetArrayFromImage(_demo("fixed_tissue"))
    moving_tissue = sitk.GetArrayFromImage(_demo("moving_tissue"))
    before = summary["labels"]["tissue"]["before"]["dice"]
    assert before == pytest.approx(
        {str(k): v for k, v in dice(fixed_tissue, moving_tissue).items()}
    )
    folding = summary["folding"]
    assert f"J <= 0 in {folding['folding_voxels']} of {folding['total_voxels']} voxels" in printed
    for name in OUTPUTS:
        assert name in printed

    png = Image.open(out / "demo.png")
    assert png.format == "PNG" and png.size[0] >= 1200 and png.size[1] >= 500
    gray = np.asarray(png.convert("L"), dtype=float)
    assert gray.std() > 30 and (gray < 50).mean() > 0.2  # images, not an empty canvas


def test_register_without_model_uses_the_bundled_model(tmp_path):
    model = _bundled_model()
    folder = resources.demo_dir()
    summary = tmp_path / "summary.json"
    arguments = ["register", "--fixed", str(folder / "fixed_t2.nii.gz"), "--moving"]
    arguments += [str(folder / "moving_t1.nii.gz"), "--no-affine", "--device", "cpu"]
    arguments += ["--transform", str(tmp_path / "t.h5"), "--summary", str(summary)]
    assert main(arguments) == 0
    assert json.loads(summary.read_text())["model"] == str(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "t.h5"]
