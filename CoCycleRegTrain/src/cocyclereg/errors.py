"""Exceptions that the command line turns into a clear message and an exit code."""


class CoCycleRegError(Exception):
    """Base class of every error this package raises on purpose.

    ``exit_code`` is what the ``cocyclereg`` command exits with when it reports the error.
    """

    exit_code = 1


class InputError(CoCycleRegError):
    """An input file is missing, unreadable, or not the kind of volume that was asked for."""

    exit_code = 2


class GeometryError(CoCycleRegError):
    """Two volumes or a volume and a transform do not share the grid they are required to share."""

    exit_code = 3
