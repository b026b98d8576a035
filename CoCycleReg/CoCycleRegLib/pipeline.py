"""One registration as the module runs it: export the inputs, the ``cocyclereg register``
command for a separate process, and the import of its files as MRML nodes (all or nothing).

No Qt here: the widget (CoCycleReg.py) and the tests drive the same functions.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from CoCycleRegLib import nodes as mrml


@dataclass
class RegistrationRequest:
    """What the user asked for. Nodes are MRML nodes of one scene."""

    fixed: object
    moving: object
    model_path: str
    fixed_modality: str | None = None
    moving_modality: str | None = None
    affine: bool = True
    refine: bool = True  # False: the network's fields only (--refine-steps 0 --fine-steps 0)
    network: bool | None = None  # False: the refinement alone (--no-network); None: the model's
    cpu_only: bool = False
    inverse: bool = True
    warped: bool = True
    jacobian: bool = True
    labelmaps: list = field(default_factory=list)
    segmentations: list = field(default_factory=list)


@dataclass
class RunFiles:
    """The files of one run, all in one temporary folder."""

    folder: Path
    fixed: Path
    moving: Path
    transform: Path
    inverse: Path | None
    warped: Path | None
    jacobian: Path | None
    summary: Path


@dataclass
class RegistrationResults:
    """The nodes one run added to the scene, and its folding statistics."""

    transform: object
    inverse: object | None = None
    warped: object | None = None
    jacobian: object | None = None
    labelmaps: list = field(default_factory=list)
    segmentations: list = field(default_factory=list)
    folding_voxels: int | None = None
    folding_percent: float | None = None
    total_voxels: int | None = None
    summary: dict = field(default_factory=dict)

    def nodes(self) -> list:
        singles = [self.transform, self.inverse, self.warped, self.jacobian]
        return [n for n in (*singles, *self.labelmaps, *self.segmentations) if n is not None]

    def folding_text(self) -> str:
        if self.folding_voxels is None:
            return ""
        return (
            f"Folding (J ≤ 0): {self.folding_voxels} of {self.total_voxels} voxels "
            f"({self.folding_percent:.4f} %)"
        )

    def motion_text(self) -> str:
        """How far the deformable part moved the anatomy (the summary's
        ``deformable_displacement_mm``; the pre-alignment is not part of it), or ""."""
        moved = self.summary.get("deformable_displacement_mm")
        if not moved:
            return ""
        return (
            f"Deformable motion: mean {moved['mean']:.2f} mm, max {moved['max']:.2f} mm "
            "(pre-alignment excluded)"
        )


def check_request(request: RegistrationRequest) -> str | None:
    """Why the request cannot run (a sentence for the Apply button), or None."""
    if request.fixed is None:
        return "Select the fixed volume."
    if request.moving is None:
        return "Select the moving volume."
    if request.fixed is request.moving or request.fixed.GetID() == request.moving.GetID():
        return "The fixed and moving volumes must be different volumes."
    if not request.model_path:
        return "Choose a model."
    if not Path(request.model_path).is_file():
        return f"The model file does not exist: {request.model_path}"
    if (
        request.fixed_modality
        and request.moving_modality
        and request.fixed_modality == request.moving_modality
    ):
        return f"Fixed and moving cannot both be '{request.fixed_modality}'."
    for role, node in (("fixed", request.fixed), ("moving", request.moving)):
        try:
            mrml.check_volume_input(node, role)
        except mrml.SceneError as error:
            return str(error)
    for node in request.labelmaps + request.segmentations:
        if node.GetParentTransformNode() is not None:
            return f"'{node.GetName()}' is under a transform: harden or remove it first."
    if not request.refine and request.network is False:
        return (
            "Neither the network nor the refinement would run, so nothing would be registered "
            "beyond the pre-alignment: tick 'Start from the network's field' to use the "
            "network's field as it is, or 'Refine on this pair'."
        )
    return None


def export_inputs(request: RegistrationRequest, folder: str | os.PathLike) -> RunFiles:
    """Write the fixed and moving volumes to ``folder`` (NRRD: exact oblique geometry) and
    name the output files the process will write there."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = RunFiles(
        folder=folder,
        fixed=folder / "fixed.nrrd",
        moving=folder / "moving.nrrd",
        transform=folder / "transform.h5",
        inverse=folder / "inverse.h5" if request.inverse else None,
        warped=folder / "warped.nrrd" if request.warped else None,
        jacobian=folder / "jacobian.nrrd" if request.jacobian else None,
        summary=folder / "summary.json",
    )
    mrml.write_volume(request.fixed, files.fixed)
    mrml.write_volume(request.moving, files.moving)
    return files


def register_command(
    request: RegistrationRequest, files: RunFiles, python: str | None = None
) -> list[str]:
    """The ``python -m cocyclereg register ...`` command line (PythonSlicer inside Slicer)."""
    command = [python or sys.executable, "-m", "cocyclereg", "register"]
    command += ["--fixed", str(files.fixed), "--moving", str(files.moving)]
    command += ["--model", str(request.model_path), "--transform", str(files.transform)]
    if request.moving_modality:
        command += ["--moving-modality", request.moving_modality]
    if request.fixed_modality:
        command += ["--fixed-modality", request.fixed_modality]
    for option, path in (
        ("--inverse-transform", files.inverse),
        ("--warped", files.warped),
        ("--jacobian", files.jacobian),
        ("--summary", files.summary),
    ):
        if path is not None:
            command += [option, str(path)]
    command.append("--affine" if request.affine else "--no-affine")
    if not request.refine:
        command += ["--refine-steps", "0", "--fine-steps", "0"]
    if request.network is not None:
        command.append("--network" if request.network else "--no-network")
    command += ["--device", "cpu" if request.cpu_only else "auto"]
    return command


def process_environment(request: RegistrationRequest, base: dict | None = None) -> dict:
    """The environment of the process: CPU-only hides every GPU from torch; its output is
    UTF-8 whatever the system's code page (the module decodes it as UTF-8: a Windows console
    encoding would garble non-ASCII paths and names in the log)."""
    environment = dict(os.environ if base is None else base)
    if request.cpu_only:
        environment["CUDA_VISIBLE_DEVICES"] = "-1"
    environment.setdefault("PYTHONUNBUFFERED", "1")
    environment["PYTHONIOENCODING"] = "utf-8"
    return environment


def scene_node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def remove_new_nodes(scene, before: set[str]) -> None:
    """Remove every node that is not in ``before``: the scene as it was."""
    new = [
        scene.GetNthNode(i)
        for i in range(scene.GetNumberOfNodes())
        if scene.GetNthNode(i).GetID() not in before
    ]
    for node in reversed(new):
        if node.GetScene() is not None and not node.IsA("vtkMRMLSubjectHierarchyNode"):
            scene.RemoveNode(node)


def import_results(scene, request: RegistrationRequest, files: RunFiles) -> RegistrationResults:
    """Read the process's files into new nodes in the moving volume's subject-hierarchy folder;
    warp copies of the chosen labelmaps and segmentations. On any error every node added here
    is removed again and the error re-raised: the scene is as it was."""
    before = scene_node_ids(scene)
    fixed, moving = request.fixed, request.moving
    base = f"{moving.GetName()} to {fixed.GetName()}"
    try:
        # Every file is read as temporary: the run's folder is deleted after the import.
        transform = mrml.load_transform(
            scene, files.transform, f"{base} (CoCycleReg)", temporary=True
        )
        mrml.tag_registration_roles(transform, moving, fixed)
        results = RegistrationResults(transform=transform)
        if files.inverse is not None:
            results.inverse = mrml.load_transform(
                scene,
                files.inverse,
                f"{fixed.GetName()} to {moving.GetName()} (CoCycleReg)",
                temporary=True,
            )
            # The inverse resamples the fixed image onto the moving one: roles swap.
            mrml.tag_registration_roles(results.inverse, fixed, moving)
        if files.warped is not None:
            results.warped = mrml.load_volume(
                scene, files.warped, f"{moving.GetName()} warped", temporary=True
            )
            if moving.GetDisplayNode() is not None and results.warped.GetDisplayNode():
                results.warped.GetDisplayNode().SetAndObserveColorNodeID(
                    moving.GetDisplayNode().GetColorNodeID()
                )
        if files.jacobian is not None:
            results.jacobian = mrml.load_jacobian(scene, files.jacobian, fixed, temporary=True)
        for labelmap in request.labelmaps:
            results.labelmaps.append(mrml.warp_labelmap(scene, labelmap, transform, fixed))
        for segmentation in request.segmentations:
            results.segmentations.append(mrml.harden_on_copy(scene, segmentation, transform))
        if files.summary.is_file():
            results.summary = json.loads(files.summary.read_text())
            folding = results.summary.get("folding", {})
            results.folding_voxels = folding.get("folding_voxels")
            results.folding_percent = folding.get("folding_percent")
            results.total_voxels = folding.get("total_voxels")
        mrml.place_in_folder(scene, results.nodes(), mrml.folder_item_of(scene, moving))
    except BaseException:
        remove_new_nodes(scene, before)
        raise
    return results
