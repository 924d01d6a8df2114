"""featx: frozen-backbone feature extraction and classical classifiers for medical images."""

__version__ = "0.1.0"
