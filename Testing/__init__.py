"""Tests of the CoCycleReg Slicer module.

A package, so its conftest does not shadow the one of CoCycleRegTrain/tests.
"""
