"""CoCycleReg: learned multi-modal deformable image registration.

Geometry conventions used throughout the package:

* SimpleITK images carry the physical geometry (origin, spacing, direction) in LPS millimetres.
* A numpy array of a volume has axis order (D, H, W) = (k, j, i) = (z, y, x), as
  ``SimpleITK.GetArrayFromImage`` returns it; torch tensors are (N, C, D, H, W).
* A voxel displacement field is (3, D, H, W) with channel order (D, H, W): displacement along
  k, then j, then i, in voxels.
* Every field is a *resampling* field: it maps a point of the fixed (output) grid to the point
  of the moving image to sample, the direction ITK's ``Resample`` and torch's ``grid_sample``
  use.
"""

import os

# Idle OpenMP threads sleep instead of spinning. PyTorch and numba share one GNU OpenMP runtime,
# which reads this when it loads (importing cocyclereg before torch is enough; a value the user
# set is kept). With the cores busy elsewhere (Slicer rendering, a batch beside), spinning
# threads take the time the working ones need: under such load a registration's refinement
# ran 1.3-1.5x faster with it (issue 16, benchmarks/registration.py --background-load).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cocyclereg.errors import CoCycleRegError, GeometryError, InputError

__version__ = "0.5.1"

__all__ = ["CoCycleRegError", "GeometryError", "InputError", "__version__", "register_many"]


def __getattr__(name: str):
    """``cocyclereg.register_many`` (:func:`cocyclereg.inference.batch.register_many`), imported on
    first use so that ``import cocyclereg`` stays light."""
    if name == "register_many":
        from cocyclereg.inference.batch import register_many

        return register_many
    raise AttributeError(f"module 'cocyclereg' has no attribute {name!r}")
