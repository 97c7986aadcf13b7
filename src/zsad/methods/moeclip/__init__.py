"""MoECLIP (zero-shot, mixture of LoRA experts in CLIP's vision tower); see :mod:`zsad.methods.moeclip.method`."""

from zsad.methods.moeclip.method import MoECLIP, MoECLIPConfig

__all__ = ["MoECLIP", "MoECLIPConfig"]
