"""Blind detection: the scan and its detectors. They see the model and the defender's clean data
only; nothing here imports ``attacks`` or ``evaluation`` (tests/test_layering.py)."""
