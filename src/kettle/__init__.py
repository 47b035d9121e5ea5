"""Kettle: compute on the combined private data of parties who do not trust each other."""

__version__ = "0.1.0"
