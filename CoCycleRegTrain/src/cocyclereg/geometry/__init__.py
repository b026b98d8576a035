"""Where points go: grids, displacement fields, resampling, warping, inversion and the Jacobian,
with the compiled kernels they share."""
