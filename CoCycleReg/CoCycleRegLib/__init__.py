"""The MRML, process and dependency work of the CoCycleReg Slicer module, free of Qt so it
runs (and is tested) on Slicer's own libraries without the application."""
