"""Registration cases with a known deformation, built from co-registered scans in ../shared/data.

A case is the CoCycleReg paper's construction of its T1–T2 set: take two co-registered
modalities of one subject, deform one of them (image and labels) with a seeded random smooth
elastic field (:func:`cocyclereg.learning.augment.random_elastic_flow`: random displacements on a
control grid at most ``control_spacing_mm`` apart, cubic-spline upsampled, Gaussian-smoothed,
largest displacement a random 50–100 % of ``max_displacement_mm``, no folding) and register the
deformed one (moving) back onto the other (fixed).

Ground truth. The deformed moving image is ``M'(q) = M(q + u(q))`` (``u`` the elastic
resampling field). Since fixed and undeformed moving are co-registered, the fixed point ``p``
corresponds to the moving-image point ``q`` with ``q + u(q) = p``: the true fixed -> moving
transform is ``T(p) = p + v(p)`` with ``v = -u o (id + v)``, the inverse of the elastic warp. It
is found by fixed-point iteration (``v <- -u(p + v)``, trilinear) and written as an ITK
displacement field (LPS mm, on the fixed grid), the same kind of file every method produces, so
target registration error is ``|T_method(p) - T(p)|`` at fixed-image brain voxels. The case
records the largest residual ``|v(p) + u(p + v(p))|`` of the inversion.

Case sets (``kind``):

* ``t1t2``: one subject of ``brain-t1t2`` (default the held-out TCGA-DU-7294, 240×240×155, 1 mm).
  Both directions: deformed T1 -> T2 and deformed T2 -> T1, ``deformations`` seeded fields each.
  Tissue labels (1 CSF, 2 grey, 3 white) come from the *undeformed* T1 alone, computed once:
  :func:`cocyclereg.evaluation.tissue.tissue_from_t1`, a deterministic three-class k-means of T1
  intensities inside the skull-stripped brain (voxels > 0), classes ordered by mean intensity.
  They are independent of every registration method. Tumour labels are ``tumor.nii.gz``
  (automatic BraTS fusion, sub-regions 1–2). Both label maps are deformed with the image.
* ``ct-mri``: the 2 mm MNI population templates (91×109×91, one grid for all maps): the
  Clinical-toolbox CT with skull (``clinical-ct/scct.nii``) against the SPM12 T1 and T2
  (``spm12/T1.nii``, ``spm12/T2.nii``, also with skull). Four directions: CT -> T1, T1 -> CT,
  CT -> T2, T2 -> CT. Tissue labels = argmax of SPM12 grey/white/csf probability maps where their
  sum exceeds 0.5 (:func:`cocyclereg.evaluation.tissue.tissue_from_probabilities`), one labelmap for
  all three images since they share one space (the Clinical-toolbox ``scgrey/scwhite/sccsf`` maps
  lie on the same grid too; using one source keeps fixed and moving labels of the same anatomy). No
  tumour labels. These templates are also in the CT–MRI training list: only the deformations
  are new, the anatomy is not held out.

Appearance (``appearance``): ``"as-is"`` keeps both images' intensities as acquired;
``"new-scanner"`` gives each image of a case, independently, what another scanner or
protocol changes (:func:`new_scanner_appearance`): a smooth multiplicative coil bias of up to
±35 %, a gamma change (log-uniform in 0.7–1.4), noise of 1.5 % of the brightest tissue
everywhere (the background too, as in an image that was never masked) and another intensity
scale and offset. Geometry and labels are untouched. Such cases live in their own folders
(``…-new-scanner``).

Cases are cached under ``folder``: a case whose ``case.json`` holds the same parameters is
reused, so repeated benchmark runs register exactly the same inputs. Subjects without tumour
labels (stroke, BraTS-GLI-00001-000 here) give cases without ``fixed_tumour``/``moving_tumour``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from cocyclereg.evaluation.tissue import tissue_from_probabilities, tissue_from_t1
from cocyclereg.geometry.displacement import (
    displacement_field_image,
    displacement_transform,
    voxel_flow_to_displacement_mm,
)
from cocyclereg.geometry.grid import Grid
from cocyclereg.geometry.inverse import inverse_flow
from cocyclereg.geometry.resample import resample_to_grid
from cocyclereg.geometry.spatial_transformer import SpatialTransformer
from cocyclereg.io import read_image, read_labels, write_image
from cocyclereg.learning.augment import appearance_jitter, random_elastic_flow

INVERSION_ITERATIONS = 40
APPEARANCES = ("as-is", "new-scanner")


@dataclass
class Case:
    """One registration case: file paths (strings) and what the case was built from."""

    name: str
    kind: str
    direction: str  # e.g. "t1->t2": moving modality -> fixed modality
    moving_role: str  # "t1", "t2" or "ct"
    fixed_role: str
    seed: int
    fixed: str
    moving: str
    fixed_tissue: str
    moving_tissue: str
    ground_truth: str
    fixed_tumour: str | None = None
    moving_tumour: str | None = None
    max_displacement_mm: float = 0.0
    inversion_residual_mm: float = 0.0
    size: tuple[int, int, int] = (0, 0, 0)
    spacing: tuple[float, float, float] = (0.0, 0.0, 0.0)
    subject: str = ""  # the brain-t1t2 subject, or "mni" for the ct-mri templates
    case_set: str = ""  # the cache folder of the subject's cases, e.g. t1t2-stroke-native

    @classmethod
    def from_json(cls, path: Path) -> Case:
        values = json.loads(path.read_text())
        values.pop("parameters", None)
        values["size"] = tuple(values["size"])
        values["spacing"] = tuple(values["spacing"])
        return cls(**values)


def _resampled(image: sitk.Image, spacing_mm: float | None, labels: bool) -> sitk.Image:
    """``image`` on an isotropic ``spacing_mm`` grid over the same extent (None: unchanged)."""
    if not spacing_mm:
        return image
    grid = Grid.from_image(image)
    size = [max(1, round(n * s / spacing_mm)) for n, s in zip(grid.size, grid.spacing, strict=True)]
    # Keep the physical extent: the first voxel's corner stays where it was.
    corner = grid.index_to_physical(np.full(3, -0.5))
    new = Grid(tuple(size), (spacing_mm,) * 3, (0.0, 0.0, 0.0), grid.direction)
    origin = corner - new.index_to_physical(np.full(3, -0.5))
    new = Grid(tuple(size), (spacing_mm,) * 3, tuple(origin), grid.direction)
    return resample_to_grid(image, new, "label" if labels else "linear")


def _inverse_flow(
    flow: np.ndarray, spacing_dhw: np.ndarray, iterations: int = INVERSION_ITERATIONS
) -> tuple[np.ndarray, float]:
    """``v`` with ``v(p) = -u(p + v(p))`` (voxels, (3, D, H, W)) and the largest residual of
    that equation in mm after the last iteration."""
    warp = SpatialTransformer("bilinear")
    u = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))[None]
    v, _ = inverse_flow(u, iterations, tolerance=0.0)  # tolerance 0: every iteration runs
    with torch.no_grad():
        scale = torch.as_tensor(np.asarray(spacing_dhw, dtype=np.float32)).view(1, 3, 1, 1, 1)
        residual = float(((v + warp(u, v)) * scale).norm(dim=1).max())
    return v[0].numpy(), residual


def _field_mm(flow_voxels: np.ndarray, grid: Grid) -> sitk.Image:
    return displacement_field_image(voxel_flow_to_displacement_mm(flow_voxels, grid), grid)


def _source_t1t2(data: Path, subject: str, spacing_mm: float | None, folder: Path) -> dict:
    """Images and labels of one co-registered subject, on the benchmark grid, written once."""
    source = data / "brain-t1t2" / subject
    if not source.is_dir():
        raise SystemExit(f"no subject folder {source}")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "t1": folder / "t1.nii.gz",
        "t2": folder / "t2.nii.gz",
        "tissue": folder / "tissue.nii.gz",
        "tumour": folder / "tumour.nii.gz",
    }
    if all(p.is_file() for p in paths.values()):
        return paths
    full_t1 = read_image(source / "t1.nii.gz")
    write_image(_resampled(full_t1, spacing_mm, labels=False), paths["t1"])
    write_image(_resampled(read_image(source / "t2.nii.gz"), spacing_mm, labels=False), paths["t2"])
    # Tissue classes from the full-resolution T1, then carried to the benchmark grid.
    tissue = tissue_from_t1(full_t1)
    write_image(_resampled(tissue, spacing_mm, labels=True), paths["tissue"])
    tumour = source / "tumor.nii.gz"
    if tumour.is_file():
        write_image(_resampled(read_labels(tumour), spacing_mm, labels=True), paths["tumour"])
    else:
        paths.pop("tumour")
    return paths


def _source_ct_mri(data: Path, spacing_mm: float | None, folder: Path) -> dict:
    ct, spm = data / "templates" / "clinical-ct", data / "templates" / "spm12"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "ct": folder / "ct.nii.gz",
        "t1": folder / "t1.nii.gz",
        "t2": folder / "t2.nii.gz",
        "tissue": folder / "tissue.nii.gz",
    }
    if all(p.is_file() for p in paths.values()):
        return paths
    sources = {"ct": ct / "scct.nii", "t1": spm / "T1.nii", "t2": spm / "T2.nii"}
    grids = [Grid.from_image(read_image(p)) for p in sources.values()]
    if not all(g.is_close(grids[0], 1e-3) for g in grids):
        raise SystemExit("the CT and SPM12 templates are not on one grid")
    for role, path in sources.items():
        write_image(_resampled(read_image(path), spacing_mm, labels=False), paths[role])
    tissue = tissue_from_probabilities(
        *(read_image(spm / f"{name}.nii") for name in ("grey", "white", "csf"))
    )
    write_image(_resampled(tissue, spacing_mm, labels=True), paths["tissue"])
    return paths


def _directions(kind: str) -> list[tuple[str, str]]:
    if kind == "t1t2":
        return [("t1", "t2"), ("t2", "t1")]
    return [("ct", "t1"), ("t1", "ct"), ("ct", "t2"), ("t2", "ct")]


def build_cases(
    kind: str,
    data: Path,
    folder: Path,
    subject: str = "TCGA-DU-7294",
    deformations: int = 1,
    seed: int = 0,
    spacing_mm: float | None = None,
    control_spacing_mm: float = 24.0,
    max_displacement_mm: float = 10.0,
    appearance: str = "as-is",
    log=print,
) -> list[Case]:
    """Build (or reuse) ``deformations`` cases per direction; see the module docstring."""
    if kind not in ("t1t2", "ct-mri"):
        raise ValueError(f"unknown case set {kind!r}")
    if appearance not in APPEARANCES:
        raise ValueError(f"unknown appearance {appearance!r}, expected one of {APPEARANCES}")
    resolution = f"{spacing_mm:g}mm" if spacing_mm else "native"
    tag = f"{kind}-{subject if kind == 't1t2' else 'mni'}-{resolution}"
    if appearance != "as-is":
        tag += f"-{appearance}"
    root = folder / tag
    sources = (
        _source_t1t2(data, subject, spacing_mm, root / "source")
        if kind == "t1t2"
        else _source_ct_mri(data, spacing_mm, root / "source")
    )
    parameters = {
        "control_spacing_mm": control_spacing_mm,
        "max_displacement_mm": max_displacement_mm,
        "inversion_iterations": INVERSION_ITERATIONS,
    }
    if appearance != "as-is":
        parameters["appearance"] = appearance
    cases = []
    for moving_role, fixed_role in _directions(kind):
        for index in range(deformations):
            name = f"{moving_role}-to-{fixed_role}-{index}"
            # One seed per (base seed, direction, index): adding cases never changes old ones.
            digest = hashlib.sha256(f"{seed}/{moving_role}/{fixed_role}/{index}".encode()).digest()
            case_seed = int.from_bytes(digest[:4], "little")
            case_folder = root / name
            record = case_folder / "case.json"
            wanted = {**parameters, "seed": case_seed}
            if record.is_file() and json.loads(record.read_text()).get("parameters") == wanted:
                case = Case.from_json(record)
            else:
                log(f"building case {tag}/{name} (seed {case_seed})")
                case = _build_case(
                    sources, kind, name, moving_role, fixed_role, case_seed, case_folder, wanted
                )
            cases.append(replace(case, subject=subject if kind == "t1t2" else "mni", case_set=tag))
    return cases


def _build_case(
    sources: dict,
    kind: str,
    name: str,
    moving_role: str,
    fixed_role: str,
    seed: int,
    folder: Path,
    parameters: dict,
) -> Case:
    folder.mkdir(parents=True, exist_ok=True)
    fixed = read_image(sources[fixed_role])
    moving = read_image(sources[moving_role])
    grid = Grid.from_image(fixed)
    rng = np.random.default_rng(seed)
    flow = random_elastic_flow(
        grid.shape,
        grid.spacing,
        rng,
        control_spacing_mm=parameters["control_spacing_mm"],
        max_displacement_mm=parameters["max_displacement_mm"],
    )
    deform = displacement_transform(_field_mm(flow, grid))
    inverse, residual_mm = _inverse_flow(flow, np.asarray(grid.spacing[::-1]))
    truth = _field_mm(inverse, grid)
    largest_mm = float(np.linalg.norm(voxel_flow_to_displacement_mm(flow, grid), axis=-1).max())

    out = {
        "fixed": folder / "fixed.nii.gz",
        "moving": folder / "moving.nii.gz",
        "fixed_tissue": folder / "fixed_tissue.nii.gz",
        "moving_tissue": folder / "moving_tissue.nii.gz",
        "ground_truth": folder / "ground_truth.nii.gz",
    }
    deformed = resample_to_grid(moving, grid, "linear", deform)
    if parameters.get("appearance") == "new-scanner":
        # Streams of their own: the deformation stays that of the as-is case with this seed.
        fixed = new_scanner_appearance(fixed, np.random.default_rng([seed, 1]))
        deformed = new_scanner_appearance(deformed, np.random.default_rng([seed, 2]))
    write_image(fixed, out["fixed"])
    write_image(deformed, out["moving"])
    tissue = read_labels(sources["tissue"])
    write_image(tissue, out["fixed_tissue"])
    write_image(resample_to_grid(tissue, grid, "label", deform), out["moving_tissue"])
    sitk.WriteImage(sitk.Cast(truth, sitk.sitkVectorFloat32), str(out["ground_truth"]), True)
    if "tumour" in sources:
        tumour = read_labels(sources["tumour"])
        out["fixed_tumour"] = folder / "fixed_tumour.nii.gz"
        out["moving_tumour"] = folder / "moving_tumour.nii.gz"
        write_image(tumour, out["fixed_tumour"])
        write_image(resample_to_grid(tumour, grid, "label", deform), out["moving_tumour"])
    case = Case(
        name=name,
        kind=kind,
        direction=f"{moving_role}->{fixed_role}",
        moving_role=moving_role,
        fixed_role=fixed_role,
        seed=seed,
        max_displacement_mm=largest_mm,
        inversion_residual_mm=residual_mm,
        size=grid.size,
        spacing=grid.spacing,
        **{key: str(path) for key, path in out.items()},
    )
    record = {**asdict(case), "parameters": parameters}
    (folder / "case.json").write_text(json.dumps(record, indent=2) + "\n")
    return case


def new_scanner_appearance(image: sitk.Image, rng: np.random.Generator) -> sitk.Image:
    """``image`` as another scanner might show it (see the module docstring): float32, same
    grid. Intensities are scaled by the 99.9th percentile of the voxels above the minimum,
    changed by :func:`cocyclereg.learning.augment.appearance_jitter` (bias up to ±35 %, gamma
    0.7–1.4, noise 1.5 %), then mapped to a new range ``a * value + b``."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    low = float(array.min())
    high = float(np.percentile(array[array > low], 99.9)) if (array > low).any() else low + 1
    unit = np.clip((array - low) / max(high - low, 1e-6), 0.0, 1.0)
    changed = appearance_jitter(
        unit, rng, gamma=(0.7, 1.4), noise_std=0.015, bias_strength=0.3, blur_voxels=0.0
    )
    scale, offset = float(rng.uniform(200.0, 4000.0)), float(rng.uniform(-100.0, 100.0))
    result = sitk.GetImageFromArray(scale * changed + offset)
    result.CopyInformation(image)
    return result
