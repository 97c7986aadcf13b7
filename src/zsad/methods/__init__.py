"""Anomaly detection methods; importing this package registers all of them."""

from zsad.methods import anomalyclip, aprilgan  # noqa: F401
from zsad.methods import dictas  # noqa: F401
from zsad.methods import dual_anchor  # noqa: F401
from zsad.methods import knn
from zsad.methods import moeclip  # noqa: F401
from zsad.methods import spg  # noqa: F401
from zsad.methods import winclip  # noqa: F401
from zsad.methods.base import (
    LoadReport, Method, MethodConfig, Prediction, available_methods, method_class, register,
)

__all__ = ["LoadReport", "Method", "MethodConfig", "Prediction", "available_methods", "method_class", "register",
           "knn"]
