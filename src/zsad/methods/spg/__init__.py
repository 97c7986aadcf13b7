"""SPG: a TopK sparse autoencoder's dictionary and four sparse guide codes over frozen backbone tokens."""

from zsad.methods.spg.guides import GUIDE_NAMES, GuideCodes
from zsad.methods.spg.method import SPG, SPGConfig
from zsad.methods.spg.sae import TopKSAE

__all__ = ["GUIDE_NAMES", "SPG", "GuideCodes", "SPGConfig", "TopKSAE"]
