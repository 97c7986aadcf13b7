"""DictAS (few-shot, self-supervised dictionary lookup); see :mod:`zsad.methods.dictas.method`."""

from zsad.methods.dictas.method import DictAS, DictASConfig

__all__ = ["DictAS", "DictASConfig"]
