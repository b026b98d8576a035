"""Registering a pair (and many): pre-alignment, the network pass, instance optimisation, input
checks, intensity normalisation and the written outputs."""
