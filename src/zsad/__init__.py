"""zsad: zero- and few-shot visual anomaly detection and segmentation on frozen foundation models."""

__version__ = "0.1.0"
