"""Inspecting new images, without torch: the :class:`~zsad.inference.inspection.Inspection` and
:class:`~zsad.inference.inspection.Thresholds` types, the one loop from images to inspections with any
scorer (a method on the PyTorch path or an exported model), tiling, calibration, regions, overlays and
folder prediction."""
