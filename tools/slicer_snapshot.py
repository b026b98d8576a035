"""The README picture of the Slicer module: the demo pair through the module's own logic path.

Usage (from the repository root, with the test extras installed for slicer-core):
    python tools/slicer_snapshot.py OUTPUT.png [--model MODEL]

Loads the bundled demo pair into an MRML scene with Slicer's storage nodes, exports it, runs
``cocyclereg register`` in a separate process exactly as the module does (bundled brain model,
rigid pre-alignment), imports the transform, warped volume and Jacobian back as nodes, and
renders fixed | warped moving | Jacobian over the fixed image with the module's colour map
(``CoCycleRegLib.snapshot``: the nodes' voxels composed with numpy, since slice-view layer
blending does not run headless).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CoCycleReg"))

import slicer  # noqa: E402
from CoCycleRegLib import nodes as mrml  # noqa: E402
from CoCycleRegLib.pipeline import (  # noqa: E402
    RegistrationRequest,
    export_inputs,
    import_results,
    register_command,
)
from CoCycleRegLib.process import RegistrationProcess  # noqa: E402
from CoCycleRegLib.snapshot import render_result_png  # noqa: E402

from cocyclereg.resources import bundled_model, demo_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--model", type=Path, default=None, help="default: bundled brain-t1t2")
    args = parser.parse_args()
    demo = demo_dir()
    scene = slicer.vtkMRMLScene()
    fixed = mrml.load_volume(scene, demo / "fixed_t2.nii.gz", "fixed T2")
    moving = mrml.load_volume(scene, demo / "moving_t1.nii.gz", "moving T1")
    request = RegistrationRequest(
        fixed=fixed,
        moving=moving,
        model_path=str(args.model or bundled_model()),
        moving_modality="t1",
        fixed_modality="t2",
        affine=True,
        cpu_only=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        files = export_inputs(request, Path(scratch) / "work")
        process = RegistrationProcess(register_command(request, files), workdir=files.folder)
        if process.start().wait(timeout=600) != 0:
            raise SystemExit("\n".join(process.poll()))
        results = import_results(scene, request, files)
        render_result_png(fixed, results.warped, results.jacobian, args.output, zoom=3)
    print(f"wrote {args.output} ({results.folding_text()})")


if __name__ == "__main__":
    main()
