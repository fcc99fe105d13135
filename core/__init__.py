"""Compression Studio's engine: loading, calibration, pruning, evaluation, export.

Nothing in this package imports Qt; `tests/core/test_no_qt.py` enforces it.
"""

__version__ = "0.1.0"
