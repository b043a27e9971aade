"""Crucible: run untrusted, model-written code safely, observably and at scale."""

__version__ = "0.1.0"
